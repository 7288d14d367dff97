"""The CASUS-shaped JSON API for the form: create, read, list per patient, update, withdraw, activate, history.

Every version carries two times: ``governsFrom`` (the form's ``recorded.date``, when the choice was made and
from when it decides) and ``storedAt`` (when this adapter stored it, which is also its Last-Modified).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, request, url_for

from ..form import form_to_json, parse_form
from ..store.forms import FormVersion
from .protocol import (
    checked_nhs_number,
    expected_version,
    json_body,
    json_response,
    principal,
    problem,
    require,
    service,
    version_headers,
)

bp = Blueprint("forms", __name__, url_prefix="/api")
FORM_STATUSES = ("draft", "active", "withdrawn", "entered-in-error")


def render(found: FormVersion) -> dict[str, Any]:
    return {
        "formId": found.form_id,
        "version": found.version,
        "governsFrom": found.form.recorded.date.isoformat(),
        "storedAt": found.stored_at.isoformat(),
        "source": found.source,
        "form": form_to_json(found.form),
    }


@bp.post("/forms")
@require("form.write")
def create_form() -> Any:
    form = parse_form(json_body())
    saved = service().create(form, actor=principal().name)
    headers = {**version_headers(saved.version, saved.stored_at), "Location": url_for(".read_form", form_id=saved.form_id)}
    return json_response(render(saved), 201, headers=headers)


@bp.get("/forms/<form_id>")
@require("consent.read")
def read_form(form_id: str) -> Any:
    found = service().read(form_id, actor=principal().name)
    return json_response(render(found), headers=version_headers(found.version, found.stored_at))


@bp.get("/forms/<form_id>/versions/<int:version>")
@require("consent.read")
def read_form_version(form_id: str, version: int) -> Any:
    found = service().read(form_id, version, actor=principal().name)
    return json_response(render(found), headers=version_headers(found.version, found.stored_at))


@bp.get("/forms/<form_id>/history")
@require("consent.read")
def form_history(form_id: str) -> Any:
    versions = service().history(form_id, actor=principal().name)
    return json_response({"formId": form_id, "versions": [render(v) for v in versions]})


@bp.put("/forms/<form_id>")
@require("form.write")
def update_form(form_id: str) -> Any:
    version = expected_version(required=True)
    form = parse_form(json_body())
    saved = service().update(form, form_id=form_id, expected_version=version, actor=principal().name)  # type: ignore[arg-type]
    return json_response(render(saved), headers=version_headers(saved.version, saved.stored_at))


@bp.post("/forms/<form_id>/withdraw")
@require("form.write")
def withdraw_form(form_id: str) -> Any:
    version = expected_version(required=True)
    saved = service().withdraw(form_id, expected_version=version, actor=principal().name)  # type: ignore[arg-type]
    return json_response(render(saved), headers=version_headers(saved.version, saved.stored_at))


@bp.post("/forms/<form_id>/activate")
@require("form.write")
def activate_form(form_id: str) -> Any:
    version = expected_version(required=True)
    agreed_at = agreement_time(json_body()) if request.content_length else None
    saved = service().activate(
        form_id,
        expected_version=version,  # type: ignore[arg-type]
        actor=principal().name,
        agreed_at=agreed_at,
    )
    return json_response(render(saved), headers=version_headers(saved.version, saved.stored_at))


def agreement_time(body: Any) -> datetime | None:
    """The optional ``{"agreedAt": "<date-time with zone>"}`` body of an activation."""
    if not isinstance(body, dict) or set(body) - {"agreedAt"}:
        raise problem(400, "structure", "$", 'the body is {"agreedAt": "<ISO 8601 date-time with a time zone>"} or empty')
    raw = body.get("agreedAt")
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw) if isinstance(raw, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise problem(400, "value", "$.agreedAt", "must be an ISO 8601 date-time with a time zone")
    return moment


@bp.get("/patients/<nhs_number>/forms")
@require("consent.read")
def patient_forms(nhs_number: str) -> Any:
    checked_nhs_number(nhs_number, "nhs_number")
    status = request.args.get("status")
    if status is not None and status not in FORM_STATUSES:
        raise problem(400, "code-invalid", "status", f"status must be one of {', '.join(FORM_STATUSES)}")
    found, total = service().search(actor=principal().name, nhs_number=nhs_number, status=status, limit=100, offset=0)
    return json_response({"total": total, "forms": [render(f) for f in found]})
