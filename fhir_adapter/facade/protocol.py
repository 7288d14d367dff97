"""HTTP conventions shared by every blueprint: auth, JSON bodies, OperationOutcome errors, ETags.

Every failure leaves as a FHIR OperationOutcome with a 4xx status naming the
field; nothing here ever returns a traceback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from functools import wraps
from typing import Any, TypeVar

from flask import Response, current_app, g, request

from ..access import Principal, Refusal, authenticate, authorise
from ..fhir_structure import load_json
from ..outcome import Issue, error, operation_outcome

FHIR_JSON = "application/fhir+json"
access_log = logging.getLogger("fhir_adapter.http")
F = TypeVar("F", bound=Callable[..., Any])


class HttpProblem(Exception):
    """Raised anywhere in a request to answer with an OperationOutcome."""

    def __init__(self, status: int, issues: list[Issue], headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.issues = issues
        self.headers = headers or {}


def problem(status: int, code: str, expression: str, diagnostics: str) -> HttpProblem:
    return HttpProblem(status, [error(code, expression, diagnostics)])


def log_request(method: str, rule: str, status: int | str, elapsed_ms: float, who: str, request_id: str) -> None:
    """The one access-log line, whichever path answered: the route *template* only (paths and queries can
    hold NHS numbers), status, time, token name and request id."""
    if access_log.isEnabledFor(logging.INFO):
        access_log.info("%s %s -> %s %.1fms by=%s id=%s", method, rule, status, elapsed_ms, who, request_id)


def serialise(document: Any) -> str:
    """Compact JSON, non-ASCII kept as is: the one serialisation every response body uses."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def json_response(document: Any, status: int = 200, *, fhir: bool = False, headers: dict[str, str] | None = None) -> Response:
    body = serialise(document)
    response = Response(body, status=status, mimetype=FHIR_JSON if fhir else "application/json")
    response.headers["Content-Type"] = (FHIR_JSON if fhir else "application/json") + "; charset=utf-8"
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def outcome_response(status: int, issues: list[Issue], headers: dict[str, str] | None = None) -> Response:
    return json_response(operation_outcome(issues), status, fhir=True, headers=headers)


def principal() -> Principal:
    return g.principal


def require(scope: str | None) -> Callable[[F], F]:
    """Authenticate the bearer token and check one scope (None: any valid token)."""

    def decorate(view: F) -> F:
        @wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            result = authenticate(request.headers.get("Authorization"), current_app.config["CASUS_GRANTS"], datetime.now(UTC))
            if isinstance(result, Refusal):
                raise _refused(result)
            if scope is not None and (refusal := authorise(result, scope)):
                raise _refused(refusal)
            g.principal = result
            return view(*args, **kwargs)

        guarded.required_scope = scope  # type: ignore[attr-defined]
        return guarded  # type: ignore[return-value]

    return decorate


def _refused(refusal: Refusal) -> HttpProblem:
    headers = {"WWW-Authenticate": 'Bearer realm="casus"'} if refusal.status == 401 else {}
    if refusal.code == "expired":
        headers["WWW-Authenticate"] = 'Bearer realm="casus", error="invalid_token", error_description="token expired"'
    code = "login" if refusal.status == 401 else "forbidden"
    return HttpProblem(refusal.status, [error(code, "", refusal.reason)], headers)


def json_body() -> Any:
    """The request body as JSON, or a 4xx OperationOutcome (size, media type, UTF-8, syntax, depth)."""
    mimetype = request.mimetype or ""
    if mimetype not in ("application/json", FHIR_JSON):
        raise problem(415, "not-supported", "", "send application/json or application/fhir+json")
    data = request.get_data(cache=True)
    if not data:
        raise problem(400, "required", "", "the request body is empty")
    document, issues = load_json(data)
    if issues:
        status = 413 if issues[0].code == "too-long" else 400
        raise HttpProblem(status, issues)
    return document


def etag(version: int) -> str:
    return f'W/"{version}"'


def expected_version(required: bool = True) -> int | None:
    """The version an If-Match header names (W/"3" or "3"); 428 when required and absent."""
    header = request.headers.get("If-Match")
    if header is None:
        if required:
            raise problem(428, "required", "If-Match", "this update must name the version it changes (If-Match: W/\"n\")")
        return None
    value = header.strip()
    if value.startswith("W/"):
        value = value[2:]
    value = value.strip('"')
    if not value.isdigit():
        raise problem(400, "value", "If-Match", "If-Match must be a version ETag such as W/\"3\"")
    return int(value)


def last_modified(moment: datetime) -> str:
    return format_datetime(moment.astimezone(UTC), usegmt=True)


def version_headers(version: int, recorded_at: datetime) -> dict[str, str]:
    return {"ETag": etag(version), "Last-Modified": last_modified(recorded_at)}
