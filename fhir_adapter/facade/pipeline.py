"""The one request pipeline: every route, in one place, gets the same request id, auth, headers, log line and errors.

A WSGI layer in front of Flask (``app.wsgi_app``, where Flask's docs put
middleware).  For every request it

1. takes the caller's ``X-Request-ID`` or makes one up;
2. finds the route in the app's URL map (an unknown path is a 404, a wrong method a 405);
3. checks the bearer token against the scope the view declares with ``protocol.require``
   (a view without the declaration is public) and leaves the caller where ``protocol.principal`` reads it;
4. answers: a *lean* route (``GET /api/decision``) by its handler, directly; every other
   route through Flask's dispatch, which then only runs the view;
5. renders any failure as an OperationOutcome (``render_error``, which is also Flask's one
   error handler), adds the security headers and the request id, and writes the one access-log line.

Why a layer of its own rather than Flask's before/after hooks: the EHR asks
"may I share this?" on every screen it draws, so the decision route carries
nearly all of the traffic, and Flask's request context, Response object and
hooks cost more than the decision itself (see docs/benchmarks.md).  Owning the
hooks here means a hook added later (a rate limit, tracing) covers every route,
the busiest included, by being added once.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_plus, urlsplit

import werkzeug.urls  # noqa: F401 - registers the "werkzeug.url_quote" codec error handler used by QueryArgs
from flask import Flask
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import RequestRedirect, RoutingException

from ..access import Principal, Refusal, authenticate, authorise
from ..consent_service import FormIdMismatch, NotADraft
from ..oauth_tokens import looks_like_jwt
from ..outcome import InvalidInput, error
from ..store.forms import AlreadyExists, NotFound, VersionConflict
from .protocol import PRINCIPAL_KEY, SESSION_ACTOR_KEY, Answer, HttpProblem, etag, outcome_answer

log = logging.getLogger("fhir_adapter.http")

SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
    ("Strict-Transport-Security", "max-age=31536000; includeSubDomains"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
#: A lean route's handler: the WSGI environ and the authenticated caller in, the answer out.
LeanHandler = Callable[[dict[str, Any], Principal], Answer]


class QueryArgs:
    """The query string as werkzeug's ``request.args`` reads it, with the two methods the views' parsers use.

    For lean routes, which have no Flask request.  (werkzeug's MultiDict raises and catches an exception
    for every absent key, and most optional parameters are absent; a dict of lists does not.)
    """

    __slots__ = ("_values", "longest")

    def __init__(self, environ: Mapping[str, Any]) -> None:
        values: dict[str, list[str]] = {}
        query = environ.get("QUERY_STRING", "").encode("latin1").decode()  # WSGI hands the bytes over as latin-1
        # What parse_qsl(keep_blank_values=True) does, without its checks for options not used here.
        for pair in query.split("&"):
            if pair:
                key, _, value = pair.partition("=")
                values.setdefault(_unquote(key), []).append(_unquote(value))
        self._values = values
        #: No value is longer than this (unquoting only shortens): a parser that caps values can skip the check.
        self.longest = len(query)

    def get(self, key: str, default: str | None = None) -> str | None:
        found = self._values.get(key)
        return found[0] if found else default

    def getlist(self, key: str) -> list[str]:
        return list(self._values.get(key, ()))


def _unquote(text: str) -> str:
    # werkzeug's error handler keeps an escape that is not UTF-8 as it was sent, as request.args does.
    return unquote_plus(text, errors="werkzeug.url_quote") if "%" in text or "+" in text else text


def render_error(exc: BaseException, rule: str = "-") -> Answer:
    """Every failure as an OperationOutcome: 4xx naming the field, or a 500 that carries an incident id and nothing else."""
    if isinstance(exc, HttpProblem):
        return outcome_answer(exc.status, exc.issues, exc.headers)
    if isinstance(exc, InvalidInput):
        return outcome_answer(422 if exc.issues and exc.issues[0].code == "processing" else 400, exc.issues)
    if isinstance(exc, NotFound):
        return outcome_answer(404, [error("not-found", "", "no such resource")])
    if isinstance(exc, AlreadyExists):
        return outcome_answer(409, [error("duplicate", "formId", "a form with this id already exists; update it instead")])
    if isinstance(exc, VersionConflict):
        current = exc.current_version
        return outcome_answer(
            412,
            [error("conflict", "If-Match", f"the form has changed: version {current} is current; read it and apply your change again")],
            {"ETag": etag(current)} if current else None,
        )
    if isinstance(exc, FormIdMismatch):
        return outcome_answer(400, [error("invariant", "formId", str(exc))])
    if isinstance(exc, NotADraft):
        return outcome_answer(409, [error("business-rule", "status", str(exc))])
    if isinstance(exc, HTTPException):
        status = exc.code or 500
        code = {404: "not-found", 405: "not-supported", 413: "too-long", 415: "not-supported"}.get(status, "processing")
        headers = {"Allow": ", ".join(exc.valid_methods or ())} if isinstance(exc, MethodNotAllowed) else None
        return outcome_answer(status, [error(code, "", exc.description or exc.name)], headers)
    incident = uuid.uuid4().hex
    # The exception's message may quote input; log only its type and where.
    log.error("unexpected %s in %s incident=%s", type(exc).__name__, rule, incident)
    return outcome_answer(500, [error("exception", "", f"internal error; incident {incident}")])


def _refused(refusal: Refusal) -> HttpProblem:
    headers = {"WWW-Authenticate": 'Bearer realm="casus"'} if refusal.status == 401 else {}
    if refusal.code == "expired":
        headers["WWW-Authenticate"] = 'Bearer realm="casus", error="invalid_token", error_description="token expired"'
    code = "login" if refusal.status == 401 else "forbidden"
    return HttpProblem(refusal.status, [error(code, "", refusal.reason)], headers)


#: The longest query string any route reads: more than every parameter of the longest question needs, and a
#: bound on what a caller can make the audit record.
MAX_QUERY_BYTES = 4096
#: The longest access token read (a JWT with many scopes is a few KB).
MAX_ACCESS_TOKEN_CHARS = 8192

_STATUS_LINES = {s.value: f"{s.value} {s.phrase.upper()}" for s in HTTPStatus}


def _status_line(status: int) -> str:
    return _STATUS_LINES.get(status) or f"{status} UNKNOWN"


class RequestIds:
    """Request ids unique across processes and restarts: a random tag per process, then a counter.

    Not from ``os.urandom`` per request: that is a system call which lets the other threads take the GIL, and
    on the busiest route every such hand-over costs more than the id is worth.  A forked worker process
    draws a tag of its own.  (An id only correlates log lines; it grants nothing, so it need not be secret.)
    """

    def __init__(self) -> None:
        self._renew()
        if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork to follow
            os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self._tag = os.urandom(8).hex()
        self._count = itertools.count()

    def next(self) -> str:
        return f"{self._tag}{next(self._count) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


_REQUEST_IDS = RequestIds()


class RequestPipeline:
    """WSGI: the hooks of every request, lean routes answered directly, the rest through Flask's dispatch."""

    def __init__(self, app: Flask, lean: Mapping[str, LeanHandler]) -> None:
        self._app = app
        self._flask: WSGIApp = app.wsgi_app
        self._urls = app.url_map.bind("casus.local")  # path and method only: the host is not part of any route
        # A lean route is found by its exact path before the URL map is consulted (the map costs more than a dict).
        self._lean = {rule.rule: (rule, lean[rule.endpoint]) for rule in app.url_map.iter_rules() if rule.endpoint in lean}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        request_id = (environ.get("HTTP_X_REQUEST_ID") or "")[:64] or _REQUEST_IDS.next()
        method = environ.get("REQUEST_METHOD", "GET")
        added = (*SECURITY_HEADERS, ("X-Request-ID", request_id))
        rule, who = "<unmatched>", "-"
        try:
            if len(environ.get("QUERY_STRING", "")) > MAX_QUERY_BYTES:
                raise HttpProblem(414, [error("too-long", "", f"the query string is longer than {MAX_QUERY_BYTES} bytes")])
            path = environ.get("PATH_INFO") or "/"
            matched, lean = self._lean.get(path, (None, None)) if method == "GET" else (None, None)
            if matched is None:
                matched, _ = self._urls.match(path, method, return_rule=True)
            rule = matched.rule
            caller = self._caller(matched.endpoint, environ.get("HTTP_AUTHORIZATION"))
            if caller is not None:
                who = caller.name
            if lean is None:
                environ[PRINCIPAL_KEY] = caller
                return self._through_flask(environ, start_response, added, (method, rule, who, request_id, started))
            answer = lean(environ, caller)  # type: ignore[arg-type]  # lean routes all declare a scope
        except RequestRedirect as exc:
            answer = self._odd_path(exc, environ.get("HTTP_AUTHORIZATION"))
        except Exception as exc:
            answer = render_error(exc, rule)
        start_response(
            _status_line(answer.status), [("Content-Type", answer.content_type), ("Content-Length", str(len(answer.body))), *answer.headers, *added]
        )
        _log_request(method, rule, answer.status, started, who, request_id)
        return [b""] if method == "HEAD" else [answer.body]

    def _odd_path(self, redirect: RequestRedirect, authorization: str | None) -> Answer:
        """A path the URL map would redirect (``//`` in it, a slash missing): a 404 naming the route's own path.

        Not a redirect: a 308 would answer before the token check and reveal which routes exist to anyone;
        here the caller is authenticated as the route itself requires first, and a FHIR client gets an
        OperationOutcome, never a redirect page.
        """
        canonical = urlsplit(redirect.new_url).path
        try:
            try:
                endpoint: str | None = self._urls.match(canonical, "GET", return_rule=True)[0].endpoint
            except (HTTPException, RoutingException):  # a route that answers another method only
                endpoint = None
            if endpoint is None:
                self._caller_with_any_token(authorization)
            else:
                self._caller(endpoint, authorization)
        except HttpProblem as refused:
            return render_error(refused)
        return outcome_answer(404, [error("not-found", "", f"no such path; this route is {canonical}")])

    def _caller_with_any_token(self, authorization: str | None) -> None:
        if isinstance(found := self._authenticate(authorization), Refusal):
            raise _refused(found)

    def _authenticate(self, authorization: str | None) -> Principal | Refusal:
        """A JWT goes to the authorisation server's verifier when one is configured; anything else to the static tokens."""
        verifier = self._app.config.get("CASUS_OAUTH_VERIFIER")
        if verifier is not None and authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer" and len(token.strip()) <= MAX_ACCESS_TOKEN_CHARS and looks_like_jwt(token.strip()):
                return verifier.authenticate(token.strip())
        return authenticate(authorization, self._app.config["CASUS_GRANTS"], datetime.now(UTC))

    def _caller(self, endpoint: str, authorization: str | None) -> Principal | None:
        """The authenticated caller, None for a public view; raises the 401/403 HttpProblem."""
        view = self._app.view_functions.get(endpoint)
        if not hasattr(view, "required_scope"):
            return None
        found = self._authenticate(authorization)
        if isinstance(found, Refusal):
            raise _refused(found)
        scope = view.required_scope  # type: ignore[union-attr]
        if scope is not None and (refusal := authorise(found, scope)):
            raise _refused(refusal)
        return found

    def _through_flask(
        self,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        added: tuple[tuple[str, str], ...],
        log_fields: tuple[str, str, str, str, float],
    ) -> Iterable[bytes]:
        method, rule, who, request_id, started = log_fields

        def finish(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            _log_request(method, rule, status.split(" ", 1)[0], started, environ.get(SESSION_ACTOR_KEY, who), request_id)
            own = {name.lower() for name, _ in headers}  # a view's own policy (the consent pages' CSP) stands
            return start_response(status, [*headers, *(h for h in added if h[0].lower() not in own)], exc_info)

        return self._flask(environ, finish)


def _log_request(method: str, rule: str, status: int | str, started: float, who: str, request_id: str) -> None:
    """The one access-log line: the route *template* only (paths and queries can hold NHS numbers), status,
    time, token name and request id."""
    if log.isEnabledFor(logging.INFO):
        log.info("%s %s -> %s %.1fms by=%s id=%s", method, rule, status, (time.perf_counter() - started) * 1000, who, request_id)
