"""``GET /api/decision`` answered without Flask's per-request machinery.

Why this exists: the EHR asks "may I share this?" on every screen it draws, so
this one route carries nearly all of the facade's traffic, and Flask's request
context, routing, Response object and after-request hooks cost more than the
decision itself (about 0.3 ms of the 0.75 ms a decision took; see
docs/benchmarks.md).  This WSGI middleware sits in front of Flask
(``app.wsgi_app``, as Flask's docs recommend for middleware) and answers only
the requests whose answer is a verdict: the right method and path, a token
with the ``decision.read`` scope, and a well-formed question.  It reuses the
very functions the Flask view uses (authenticate, parse, decide, render), so
the bytes, headers and audit record are the same.

Everything else — refused tokens, bad parameters, a question the decision
engine rejects — is handed to Flask untouched, so error rendering has one
implementation.  Nothing has been written before a hand-off: the engine
rejects a question before the audit row is written, and auth and parsing have
no side effects.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

import werkzeug.urls  # noqa: F401 - registers the "werkzeug.url_quote" codec error handler used below

from .. import decision
from ..access import Principal, TokenGrant, authenticate, authorise
from ..consent_service import ConsentService
from ..outcome import error, operation_outcome
from .decisions_api import decision_request, wants_fhir
from .protocol import FHIR_JSON, log_request, serialise

log = logging.getLogger("fhir_adapter.http")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
PATH = "/api/decision"
SCOPE = "decision.read"
#: Query strings up to this long have their parse remembered (an EHR repeats the same few questions).
MEMO_QUERY_LENGTH = 1024


class DecisionFastPath:
    """WSGI middleware: verdicts for ``GET /api/decision`` directly, every other request to ``fallback``."""

    def __init__(self, fallback: WSGIApp, service: ConsentService, grants: Callable[[], tuple[TokenGrant, ...]],
                 security_headers: tuple[tuple[str, str], ...]) -> None:
        self.fallback = fallback
        self._service = service
        self._grants = grants  # read per request from where Flask's views read them, so both always agree
        self._security_headers = security_headers
        # Request ids need to be unique, not secret: a random prefix per process and a counter, 32 hex digits
        # like the uuid4 ids Flask's path gives.
        prefix, counter = os.urandom(8).hex(), itertools.count()
        self._next_request_id = lambda: f"{prefix}{next(counter):016x}"

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "GET":
            return self.fallback(environ, start_response)
        started = time.perf_counter()
        answer = self._answer(environ)
        if answer is None:
            return self.fallback(environ, start_response)
        who, status, body, content_type = answer
        request_id = (environ.get("HTTP_X_REQUEST_ID") or "")[:64] or self._next_request_id()
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                                *self._security_headers, ("X-Request-ID", request_id)])
        log_request("GET", PATH, status[:3], (time.perf_counter() - started) * 1000, who, request_id)
        return [body]

    def _answer(self, environ: dict[str, Any]) -> tuple[str, str, bytes, str] | None:
        """(who, status, body, content type), or None to let Flask answer (and render the error)."""
        who = self._principal(environ.get("HTTP_AUTHORIZATION"))
        if who is None:
            return None
        query = environ.get("QUERY_STRING", "")
        try:
            args, question = _question(query) if len(query) <= MEMO_QUERY_LENGTH else _parse(query)
        except Exception:  # a 400 (HttpProblem) or anything else: parsing has no side effects, Flask answers
            return None
        try:
            verdict = self._service.decide(question, actor=who.name)
        except ValueError:
            return None  # rejected before anything was audited; Flask renders the 400
        except Exception as exc:  # answered as Flask's handler would: type and incident id, never the message
            incident = uuid.uuid4().hex
            log.error("unexpected %s in %s incident=%s", type(exc).__name__, PATH, incident)
            document = operation_outcome([error("exception", "", f"internal error; incident {incident}")])
            return who.name, "500 INTERNAL SERVER ERROR", _dumps(document), FHIR_JSON + "; charset=utf-8"
        fhir = wants_fhir(args.get("_format"), environ.get("HTTP_ACCEPT"))
        return who.name, "200 OK", _rendered(verdict, fhir), FHIR_JSON + "; charset=utf-8" if fhir else "application/json; charset=utf-8"

    def _principal(self, authorization: str | None) -> Principal | None:
        found = authenticate(authorization, self._grants(), datetime.now(UTC))
        if isinstance(found, Principal) and authorise(found, SCOPE) is None:
            return found
        return None


class QueryArgs:
    """The query string as werkzeug's ``request.args`` reads it, with only the two methods the parser uses.

    werkzeug's MultiDict raises (and catches) an exception for every absent key, and most of the
    optional parameters are absent; a dict of lists does not.
    """

    __slots__ = ("_values",)

    def __init__(self, query_string: str) -> None:
        values: dict[str, list[str]] = {}
        for key, value in parse_qsl(query_string, keep_blank_values=True, errors="werkzeug.url_quote"):
            values.setdefault(key, []).append(value)
        self._values = values

    def get(self, key: str, default: str | None = None) -> str | None:
        found = self._values.get(key)
        return found[0] if found else default

    def getlist(self, key: str) -> list[str]:
        return list(self._values.get(key, ()))


def _parse(query: str) -> tuple[QueryArgs, decision.DecisionRequest]:
    args = QueryArgs(query.encode("latin1").decode())
    return args, decision_request(args)


# Both parts are immutable in use (QueryArgs has no setters; DecisionRequest is frozen), and only
# successful parses are kept (a raising call is not cached), so a hit is exactly what a fresh parse gives.
_question = lru_cache(maxsize=1024)(_parse)


def _dumps(document: Any) -> bytes:
    return serialise(document).encode()


@lru_cache(maxsize=1024)
def _rendered(verdict: decision.Verdict, fhir: bool) -> bytes:
    # Verdicts are immutable values and the service reuses them, so each is rendered once.
    return _dumps(decision.to_parameters(verdict) if fhir else decision.to_json(verdict))
