"""HTTP conventions shared by every blueprint: scopes, the service, JSON bodies, OperationOutcome errors, ETags.

Every failure leaves as a FHIR OperationOutcome with a 4xx status naming the
field; nothing here ever returns a traceback.  Authentication itself happens
once per request, in the request pipeline (``pipeline.py``), against the scope
a view declares with ``require``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, TypeVar

from flask import Flask, Response, current_app, request

from ..access import Principal
from ..consent_service import ConsentService
from ..fhir_structure import load_json
from ..nhs_number import is_valid as nhs_number_is_valid
from ..outcome import Issue, error, operation_outcome

FHIR_JSON = "application/fhir+json"
#: Where the app keeps its ConsentService (Flask's extension registry) ...
SERVICE_EXTENSION = "casus"
#: ... and where the request pipeline leaves the authenticated caller for the view.
PRINCIPAL_KEY = "casus.principal"
#: ... or, on the consent pages, the signed-in name, for the access log.
SESSION_ACTOR_KEY = "casus.session_actor"
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


@dataclass(frozen=True)
class Answer:
    """A response before it is sent: what the pipeline writes for a lean route or an error, and Flask otherwise."""

    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()


def json_answer(document: Any, status: int = 200, *, fhir: bool = False, headers: dict[str, str] | None = None) -> Answer:
    return Answer(
        status, serialise(document).encode(), (FHIR_JSON if fhir else "application/json") + "; charset=utf-8", tuple((headers or {}).items())
    )


def outcome_answer(status: int, issues: list[Issue], headers: dict[str, str] | None = None) -> Answer:
    return json_answer(operation_outcome(issues), status, fhir=True, headers=headers)


def flask_response(answer: Answer) -> Response:
    response = Response(answer.body, status=answer.status)
    response.headers["Content-Type"] = answer.content_type
    for key, value in answer.headers:
        response.headers[key] = value
    return response


def service(app: Flask | None = None) -> ConsentService:
    """The app's consent service (the current app's unless one is given)."""
    return (app or current_app).extensions[SERVICE_EXTENSION]


def checked_nhs_number(value: str, where: str) -> str:
    if not nhs_number_is_valid(value):
        raise problem(400, "value", where, "not a valid NHS number (10 digits with a Modulus 11 check digit)")
    return value


#: Built once (json.dumps with options builds an encoder per call, and every response is serialised here).
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def serialise(document: Any) -> str:
    """Compact JSON, non-ASCII kept as is: the one serialisation every response body uses."""
    return _COMPACT.encode(document)


def json_response(document: Any, status: int = 200, *, fhir: bool = False, headers: dict[str, str] | None = None) -> Response:
    return flask_response(json_answer(document, status, fhir=fhir, headers=headers))


def principal() -> Principal:
    """The caller the request pipeline authenticated for this request."""
    return request.environ[PRINCIPAL_KEY]


def require(scope: str | None) -> Callable[[F], F]:
    """Declare that a view needs a valid bearer token with ``scope`` (None: any valid token).

    The request pipeline checks it before the view runs; a view without this declaration is public.
    """

    def decorate(view: F) -> F:
        view.required_scope = scope  # type: ignore[attr-defined]
        return view

    return decorate


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
            raise problem(428, "required", "If-Match", 'this update must name the version it changes (If-Match: W/"n")')
        return None
    value = header.strip()
    if value.startswith("W/"):
        value = value[2:]
    value = value.strip('"')
    if not is_whole_number(value):
        raise problem(400, "value", "If-Match", 'If-Match must be a version ETag such as W/"3" (digits 0-9)')
    return int(value)


#: Longest whole number a header or parameter may hold (Python refuses to convert more than 4,300 digits).
MAX_WHOLE_NUMBER_DIGITS = 64


def is_whole_number(text: str) -> bool:
    """Digits 0-9 only, at most 64 of them (a longer one is no version, count or limit; a shorter one beyond
    64 bits is answered as the store answers it: not found, or stale).

    ``str.isdigit`` alone is not enough: it is true of '²' and '٣', which ``int`` then refuses or reads as 3.
    """
    return 0 < len(text) <= MAX_WHOLE_NUMBER_DIGITS and text.isascii() and text.isdigit()


def whole_number(raw: str, name: str) -> int:
    """A parameter that must be a whole number, or a 400 naming it."""
    if not is_whole_number(raw):
        raise problem(400, "value", name, f"{name} must be a whole number written with the digits 0-9")
    return int(raw)


#: The instants a question or a search may name; outside them a UK-time conversion can overflow.
EARLIEST_INSTANT = datetime(1900, 1, 1, tzinfo=UTC)
LATEST_INSTANT = datetime(2999, 12, 31, tzinfo=UTC)


def instant(value: str, name: str) -> datetime:
    """An ISO 8601 date-time with a time zone between 1900 and 2999, or a 400 naming the parameter.

    ``0001-01-01T00:00:00+00:00`` and ``9999-12-31T23:59:59-14:00`` parse, but moving them to UTC or
    to UK time leaves the range a datetime can hold; such an instant is refused here, before any use.
    """
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise problem(400, "value", name, "must be an ISO 8601 date-time with a time zone, e.g. 2026-11-01T00:00:00Z") from None
    if moment.tzinfo is None:
        raise problem(400, "value", name, "must carry a time zone")
    try:
        in_utc = moment.astimezone(UTC)
    except OverflowError:
        in_utc = None
    if in_utc is None or not EARLIEST_INSTANT <= in_utc <= LATEST_INSTANT:
        raise problem(400, "value", name, "must lie between 1900-01-01 and 2999-12-31")
    return moment


def last_modified(moment: datetime) -> str:
    return format_datetime(moment.astimezone(UTC), usegmt=True)


def version_headers(version: int, stored_at: datetime) -> dict[str, str]:
    return {"ETag": etag(version), "Last-Modified": last_modified(stored_at)}
