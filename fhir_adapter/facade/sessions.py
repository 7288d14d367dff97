"""Signed-in sessions for the consent pages: who is at the browser, for how long, and the CSRF token of their forms.

The API authenticates every request by bearer token; a browser cannot carry
one, so the team signs in once (a configured user's password, or an API token
exchanged for a session) and the browser holds only a random session id in a
``Secure``, ``HttpOnly``, ``SameSite=Strict`` cookie.  Sessions live in this
process's memory, so signing out, an idle timeout and a maximum age all end a
session for good (a signed cookie could not be revoked), and nothing about
sessions is ever stored in the database.  Every form a session is shown
carries its CSRF token, checked on every POST.

Single sign-on plugs in at ``SessionBook.start``: an OIDC callback view that
has verified the trust's ID token starts a session the same way the password
and token sign-ins do (docs/consent-pages.md says how).
"""

from __future__ import annotations

import hmac
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import quote

from flask import abort, current_app, redirect, request
from werkzeug.wrappers import Response

from .protocol import SESSION_ACTOR_KEY

COOKIE = "casus_session"
#: The sign-in form has no session yet; its CSRF token is paired with this cookie instead (double submit).
SIGN_IN_COOKIE = "casus_sign_in"
CSRF_FIELD = "csrf_token"
BOOK_EXTENSION = "casus.sessions"
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class PageSession:
    session_id: str
    actor: str  # the name audit records carry: the username, or the API token's name
    display_name: str
    scopes: frozenset[str]
    csrf_token: str
    started: datetime
    last_seen: datetime

    def may(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


class SessionBook:
    """The open sessions of this process, bounded: the oldest is dropped when ``limit`` are open."""

    def __init__(self, idle: timedelta, max_age: timedelta, limit: int = 5000) -> None:
        self.idle = idle
        self.max_age = max_age
        self._limit = limit
        self._open: OrderedDict[str, PageSession] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, *, actor: str, display_name: str, scopes: frozenset[str], now: datetime) -> PageSession:
        """A new session with a new id (never a reused one, so a planted id cannot be signed in)."""
        started = PageSession(secrets.token_urlsafe(32), actor, display_name, scopes, secrets.token_urlsafe(32), now, now)
        with self._lock:
            self._open[started.session_id] = started
            while len(self._open) > self._limit:
                self._open.popitem(last=False)
        return started

    def find(self, session_id: str | None, now: datetime) -> PageSession | None:
        """The session, its idle clock restarted; None when unknown, idle too long or too old (and then it is ended)."""
        if not session_id:
            return None
        with self._lock:
            found = self._open.get(session_id)
            if found is None:
                return None
            if now - found.last_seen > self.idle or now - found.started > self.max_age:
                del self._open[session_id]
                return None
            found.last_seen = now
            self._open.move_to_end(session_id)
            return found

    def end(self, session_id: str | None) -> PageSession | None:
        with self._lock:
            return self._open.pop(session_id or "", None)


def book() -> SessionBook:
    return current_app.extensions[BOOK_EXTENSION]


def current(now: datetime) -> PageSession | None:
    return book().find(request.cookies.get(COOKIE), now)


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


def signed_in(scope: str | None, clock: Callable[[], datetime]) -> Callable[[F], F]:
    """The view needs a session with ``scope`` (None: any session); a POST also needs the session's CSRF token.

    No session: to the sign-in page, coming back here afterwards (a GET) or to the start (a POST, whose
    form is gone).  The view is called with the session as its first argument.
    """

    def decorate(view: F) -> F:
        @wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            session = current(clock())
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
