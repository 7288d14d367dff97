"""The decision endpoint the EHR calls, the per-patient summary, and exception disclosures.

``GET /api/decision`` answers plain JSON by default and a FHIR Parameters
resource when the caller asks for ``application/fhir+json`` (Accept header or
``_format=fhir``).  Query parameters are documented in the OpenAPI document.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, Flask, request

from .. import decision
from ..access import Principal
from ..consent_service import ConsentService
from ..disclosure import disclosure_to_json, parse_disclosure
from ..mappings.disclosure import disclosure_to_audit_event
from .pipeline import LeanHandler, QueryArgs
from .protocol import (
    FHIR_JSON,
    Answer,
    checked_nhs_number,
    flask_response,
    instant,
    json_answer,
    json_body,
    json_response,
    principal,
    problem,
    require,
    service,
    whole_number,
)

bp = Blueprint("decisions", __name__, url_prefix="/api")


def wants_fhir(format_parameter: str | None, accept: str | None) -> bool:
    """FHIR when asked by ``_format`` or an Accept header naming application/fhir+json; plain JSON otherwise."""
    return format_parameter in ("fhir", "json+fhir", FHIR_JSON) or FHIR_JSON in (accept or "")


def request_wants_fhir() -> bool:
    return wants_fhir(request.args.get("_format"), request.headers.get("Accept"))


def parse_time(value: str | None, name: str) -> datetime | None:
    return None if value is None else instant(value, name)


#: The question's parameters, each capped before it can reach the engine or the audit record: codes,
#: identifiers and instants are short, and a 100,000-character purpose is not a question.
CAPPED_PARAMETERS = ("patient", "recipient-identifier", "recipient-role", "recipient-person", "information-type", "purpose", "at", "known-at")
MAX_PARAMETER_CHARS = 256
#: More information types than the CASUS code table holds several times over is not a question either.
MAX_INFORMATION_TYPES = 64


def decision_request(args: Any) -> decision.DecisionRequest:
    """The question from query-like ``args`` (``QueryArgs``, or the CDS Hooks context as the same parameters)."""
    # A whole query string no longer than the cap cannot hold a value over it (QueryArgs.longest).
    if getattr(args, "longest", MAX_PARAMETER_CHARS + 1) > MAX_PARAMETER_CHARS:
        for name in CAPPED_PARAMETERS:
            if any(len(value) > MAX_PARAMETER_CHARS for value in args.getlist(name)):
                raise problem(400, "too-long", name, f"{name} is longer than {MAX_PARAMETER_CHARS} characters")
    patient = args.get("patient")
    if not patient:
        raise problem(400, "required", "patient", "the patient's NHS number is required")
    if "|" in patient:
        system, _, patient = patient.partition("|")
        if system not in ("", "https://fhir.nhs.uk/Id/nhs-number"):
            raise problem(400, "value", "patient", "patients are identified by NHS number (https://fhir.nhs.uk/Id/nhs-number)")
    checked_nhs_number(patient, "patient")
    identifier = args.get("recipient-identifier")
    system = value = None
    if identifier:
        system, sep, value = identifier.partition("|")
        if not sep or not system or not value:
            raise problem(400, "value", "recipient-identifier", "give the recipient identifier as system|value")
    role, person = args.get("recipient-role"), args.get("recipient-person")
    if not (identifier or role or person):
        raise problem(400, "required", "recipient-identifier", "name the recipient by recipient-identifier, recipient-role or recipient-person")
    types = tuple(t for raw in args.getlist("information-type") for t in raw.split(",") if t)
    if not types:
        raise problem(400, "required", "information-type", "ask about at least one information type")
    if len(types) > MAX_INFORMATION_TYPES:
        raise problem(400, "too-long", "information-type", f"ask about at most {MAX_INFORMATION_TYPES} information types at once")
    purpose = args.get("purpose")
    if not purpose:
        raise problem(400, "required", "purpose", "the purpose of use (v3 ActReason code, e.g. TREAT) is required")
    return decision.DecisionRequest(
        nhs_number=patient,
        recipient=decision.Recipient(system, value, role, person),
        information_types=types,
        purpose=purpose,
        at=parse_time(args.get("at"), "at"),
        known_at=parse_time(args.get("known-at"), "known-at"),
    )


#: The part of the question the engine rejected -> the query parameter carrying it, so the 400 names the field.
QUESTION_PARAMETERS: dict[str, str] = {
    "nhs_number": "patient",
    "recipient.identifier": "recipient-identifier",
    "recipient.role": "recipient-role",
    "recipient": "recipient-identifier",
    "information_types": "information-type",
    "purpose": "purpose",
    "at": "at",
    "known_at": "known-at",
}


def verdict_for(req: decision.DecisionRequest, caller: Principal, consent: ConsentService, fields: dict[str, str] | None = None) -> decision.Verdict:
    """The verdict as this caller may see it, audited in full before it is returned (a failed audit raises: no answer).

    A caller who may not read consents gets ``decision.for_decision_only_caller``: every deny reads the same.
    """
    try:
        verdict = consent.decide(req, actor=caller.name)
    except decision.InvalidQuestion as exc:
        name = QUESTION_PARAMETERS.get(exc.part, "")
        raise problem(400, "value", (fields or {}).get(name, name), str(exc)) from None
    return verdict if caller.may("consent.read") else decision.for_decision_only_caller(verdict, req)


def decision_answer(args: Any, accept: str | None, caller: Principal, consent: ConsentService) -> Answer:
    """The verdict for the question in ``args``, rendered as plain JSON or FHIR Parameters."""
    verdict = verdict_for(decision_request(args), caller, consent)
    if wants_fhir(args.get("_format"), accept):
        return json_answer(decision.to_parameters(verdict), fhir=True)
    return json_answer(decision.to_json(verdict))


def lean_decision(app: Flask) -> LeanHandler:
    """``GET /api/decision`` as a lean route: the request pipeline calls it without Flask's dispatch."""
    consent = service(app)
    return lambda environ, caller: decision_answer(QueryArgs(environ), environ.get("HTTP_ACCEPT"), caller, consent)


@bp.get("/decision")
@require("decision.read")
def decide() -> Any:
    """Reached through Flask only for HEAD: the request pipeline answers GET with ``lean_decision``."""
    return flask_response(decision_answer(QueryArgs(request.environ), request.headers.get("Accept"), principal(), service()))


@bp.get("/patients/<nhs_number>/summary")
@require("consent.read")
def patient_summary(nhs_number: str) -> Any:
    """Who may receive what under the version in force, and pending proposals.

    It lists the people on the form and shows whether CASUS knows the young person, so it is consent content:
    a caller who may only ask for decisions must not learn either (see ``verdict_for``).
    """
    checked_nhs_number(nhs_number, "nhs_number")
    at = parse_time(request.args.get("at"), "at")
    known_at = parse_time(request.args.get("known-at"), "known-at")
    found = service().summary(nhs_number, at=at, known_at=known_at, actor=principal().name)
    in_force = found.in_force
    document: dict[str, Any] = {
        "inForce": None
        if in_force is None
        else {
            "consent": f"Consent/{in_force.form_id}/_history/{in_force.version}",
            "governsFrom": in_force.form.recorded.date.isoformat(),
            "storedAt": in_force.stored_at.isoformat(),
        },
        "recipients": decision.summary_to_json(found.recipients),
        "proposals": decision.proposals_to_json(found.proposals),
    }
    return json_response(document)


@bp.post("/patients/<nhs_number>/disclosures")
@require("form.write")
def record_disclosure(nhs_number: str) -> Any:
    disclosure = parse_disclosure(json_body(), nhs_number)
    saved = service().record_disclosure(disclosure, actor=principal().name)
    return json_response(disclosure_to_json(saved), 201)


@bp.get("/patients/<nhs_number>/disclosures")
@require("consent.read")
def list_disclosures(nhs_number: str) -> Any:
    checked_nhs_number(nhs_number, "nhs_number")
    found = service().disclosures(nhs_number, actor=principal().name)
    if request_wants_fhir():
        entries = [{"resource": disclosure_to_audit_event(d)} for d in found]
        return json_response({"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}, fhir=True)
    return json_response({"disclosures": [disclosure_to_json(d) for d in found]})


@bp.get("/audit")
@require("admin")
def audit_log() -> Any:
    actor = request.args.get("actor")
    action = request.args.get("action")
    if action is not None and (not action or len(action) > 100):
        raise problem(400, "value", "action", "action must be an audit action name of 1 to 100 characters, e.g. sync.run")
    subject = request.args.get("subject")
    if subject is not None:
        checked_nhs_number(subject, "subject")
    limit = min(whole_number(request.args.get("limit", "100"), "limit"), 1000)
    records = service().store.audit_log(actor=actor, subject=subject, action=action, limit=limit)
    return json_response({"audit": [r.to_json() for r in records]})
