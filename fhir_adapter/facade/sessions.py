"""Signed-in sessions for the consent pages: who is at the browser, for how long, and the CSRF token of their forms.

The API authenticates every request by bearer token; a browser cannot carry
one, so the team signs in once (a configured user's password, or an API token
exchanged for a session) and the browser holds only a random session id in a
``Secure``, ``HttpOnly``, ``SameSite=Strict`` cookie.  Sessions are kept in
the store (``store/sessions.py``, only a digest of each id), so every process
of ``serve --workers N`` honours them and a restart keeps them; signing out,
an idle timeout and a maximum age all end a session for good (a signed cookie
could not be revoked).  Every form a session is shown carries its CSRF token,
checked on every POST.  Repeated failed sign-ins are throttled
(``SignInThrottle``), counted in the store too.

Single sign-on plugs in at ``PageSessions.start``: an OIDC callback view that
has verified the trust's ID token starts a session the same way the password
and token sign-ins do (docs/consent-pages.md says how).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import quote

from flask import abort, current_app, redirect, request
from werkzeug.wrappers import Response

from ..store.sessions import PageSession, PageSessions
from ..store.sign_in_failures import SignInFailures
from .protocol import SESSION_ACTOR_KEY

COOKIE = "casus_session"
#: The sign-in form has no session yet; its CSRF token is paired with this cookie instead (double submit).
SIGN_IN_COOKIE = "casus_sign_in"
CSRF_FIELD = "csrf_token"
BOOK_EXTENSION = "casus.sessions"
THROTTLE_EXTENSION = "casus.sign-in-throttle"
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class SignInThrottle:
    """Sign-ins refused for a while after too many failures for one username, or from one client address.

    Failures are counted in the store, so every serving process refuses alike.  The username typed is counted
    whether or not such a user exists, and a refusal says the same either way, so it tells nobody which
    usernames are real.  A refused attempt is not checked and not counted, so the refusal lifts once the
    failures age out of the window, even while someone keeps trying.
    """

    failures: SignInFailures
    per_username: int
    per_address: int

    @staticmethod
    def username_key(username: str) -> str | None:
        return f"username:{username.casefold()}" if username else None

    @staticmethod
    def address_key(address: str | None) -> str:
        return f"address:{address or '-'}"

    def refuses(self, username: str, address: str | None) -> bool:
        user_key = self.username_key(username)
        if user_key is not None and self.failures.count(user_key) >= self.per_username:
            return True
        return self.failures.count(self.address_key(address)) >= self.per_address

    def failed(self, username: str, address: str | None) -> None:
        user_key = self.username_key(username)
        self.failures.record([k for k in (user_key, self.address_key(address)) if k is not None])

    def succeeded(self, username: str) -> None:
        user_key = self.username_key(username)
        if user_key is not None:
            self.failures.forget(user_key)


def book() -> PageSessions:
    return current_app.extensions[BOOK_EXTENSION]


def throttle() -> SignInThrottle:
    return current_app.extensions[THROTTLE_EXTENSION]


def current() -> PageSession | None:
    return book().find(request.cookies.get(COOKIE))


def set_session_cookie(response: Response, session: PageSession) -> None:
    response.set_cookie(
        COOKIE, session.session_id, max_age=int(book().max_age.total_seconds()), path="/consent", secure=True, httponly=True, samesite="Strict"
    )


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/consent", secure=True, httponly=True, samesite="Strict")


def sign_in_token() -> str:
    """The sign-in form's CSRF token: the one its cookie already holds, or a new one the response must set."""
    return request.cookies.get(SIGN_IN_COOKIE) or secrets.token_urlsafe(32)


def set_sign_in_cookie(response: Response, token: str) -> None:
    response.set_cookie(SIGN_IN_COOKIE, token, max_age=3600, path="/consent", secure=True, httponly=True, samesite="Strict")


def sign_in_token_matches() -> bool:
    cookie, field = request.cookies.get(SIGN_IN_COOKIE, ""), request.form.get(CSRF_FIELD, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), field.encode())


def csrf_matches(session: PageSession) -> bool:
    return hmac.compare_digest(session.csrf_token.encode(), request.form.get(CSRF_FIELD, "").encode())


def signed_in(scope: str | None) -> Callable[[F], F]:
    """The view needs a session with ``scope`` (None: any session); a POST also needs the session's CSRF token.

    No session: to the sign-in page, coming back here afterwards (a GET) or to the start (a POST, whose
    form is gone).  The view is called with the session as its first argument.
    """

    def decorate(view: F) -> F:
        @wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            session = current()
            if session is None:
                back = request.full_path.rstrip("?") if request.method == "GET" else "/consent/"
                return redirect(f"/consent/sign-in?next={quote(back, safe='/')}", 303)
            request.environ[SESSION_ACTOR_KEY] = session.actor
            if scope is not None and not session.may(scope):
                abort(403, f"signed in as {session.display_name}, who lacks the '{scope}' permission")
            if request.method == "POST" and not csrf_matches(session):
                abort(400, "this form has expired or did not come from this site; go back, reload the page and try again")
            return view(session, *args, **kwargs)

        guarded.session_scope = scope  # type: ignore[attr-defined]  # read by the tests' route tables
        return guarded  # type: ignore[return-value]

    return decorate


def safe_next(target: str | None) -> str:
    """Where to go after signing in: only a path of the consent pages, never another site."""
    if target and target.startswith("/consent/") and "//" not in target and "\\" not in target:
        return target
    return "/consent/"
