"""A disclosure made under a policy exception (risk of significant harm, court order).

The policy lets CASUS share without consent only in these two cases, and then
promises to tell the young person what, to whom and what might follow — unless
telling them would increase the risk.  This record is how the team shows it
kept that promise: what went, to whom, why, and whether and when the young
person was told, or why not.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import jsonschema

from . import nhs_number
from .form import EXCEPTION_PROVISIONS, PROFILES_DIR, information_type_codes, json_path
from .outcome import InvalidInput, Issue, error

SCHEMA_PATH = PROFILES_DIR / "casus-disclosure.schema.json"


@dataclass(frozen=True)
class Disclosure:
    """Information shared under a policy exception, whatever the young person chose.

    The policy requires a record of what went to whom and why, and whether the
    young person was told (or why not).  This is clinical content: it is kept
    as JSON in the store and never logged or audited beyond its id and codes.
    """

    id: str | None
    nhs_number: str
    form_id: str | None
    exception: str  # 'risk-of-significant-harm' | 'court-order'
    information_types: tuple[str, ...]
    recipient: Mapping[str, Any]  # name, role, organisation, odsCode, identifier {system, value}
    reason: str  # the order reference or a summary of the risk
    disclosed_at: datetime
    young_person_told: bool
    told_at: datetime | None = None
    not_told_reason: str | None = None
    recorded_at: datetime | None = None


def disclosure_issues(d: Disclosure) -> list[Issue]:
    """Everything wrong with a disclosure record, as JSON-path issues (empty when it can be stored)."""
    issues: list[Issue] = []
    if not nhs_number.is_valid(d.nhs_number):
        issues.append(error("value", "$.nhsNumber", "NHS number fails the Modulus 11 check digit"))
    if d.exception not in EXCEPTION_PROVISIONS:
        issues.append(error("code-invalid", "$.exception", f"the exception must be one of {', '.join(EXCEPTION_PROVISIONS)}"))
    if not d.information_types:
        issues.append(error("required", "$.informationTypes", "a disclosure must say which information types were shared"))
    known = information_type_codes()
    for n, code in enumerate(d.information_types):
        if code not in known:
            issues.append(error("code-invalid", f"$.informationTypes[{n}]", f"'{code}' is not a CASUS information type"))
    recipient_keys = {"name", "role", "organisation", "odsCode", "identifier"}
    if not isinstance(d.recipient, Mapping) or not any(d.recipient.get(k) for k in recipient_keys):
        issues.append(error("required", "$.recipient", "the recipient needs at least a name, role, organisation or identifier"))
    elif set(d.recipient) - recipient_keys:
        issues.append(error("structure", "$.recipient", f"the recipient has only {', '.join(sorted(recipient_keys))}"))
    if not isinstance(d.reason, str) or not d.reason.strip():
        issues.append(error("required", "$.reason", "the court order reference or the risk summary is required"))
    for where, value in (("$.disclosedAt", d.disclosed_at), ("$.toldAt", d.told_at)):
        if value is not None and value.tzinfo is None:
            issues.append(error("value", where, "the time must carry a time zone"))
    if d.young_person_told and d.told_at is None:
        issues.append(error("required", "$.toldAt", "say when the young person was told"))
    if d.young_person_told and d.not_told_reason:
        issues.append(error("invariant", "$.notToldReason", "a reason for not telling is given but the young person was told"))
    if not d.young_person_told and not (d.not_told_reason or "").strip():
        issues.append(error("required", "$.notToldReason", "say why the young person was not told (e.g. it would increase the risk)"))
    if not d.young_person_told and d.told_at is not None:
        issues.append(error("invariant", "$.toldAt", "a time of telling is given but the young person was not told"))
    return issues


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def parse_disclosure(document: Any, nhs: str) -> Disclosure:
    """Check a disclosure document (schema, then the record's own rules); raises InvalidInput naming each bad field."""
    issues = [
        error("required" if err.validator == "required" else "value", json_path(err.absolute_path), err.message[:300])
        for err in _validator().iter_errors(document)
    ]
    if issues:
        raise InvalidInput(issues)
    disclosed_at = _moment(document["disclosedAt"], "$.disclosedAt", issues)
    told_at = _moment(document["toldAt"], "$.toldAt", issues) if "toldAt" in document else None
    if issues:
        raise InvalidInput(issues)
    disclosure = Disclosure(
        id=None,
        nhs_number=nhs,
        form_id=document.get("formId"),
        exception=document["exception"],
        information_types=tuple(document["informationTypes"]),
        recipient=dict(document["recipient"]),
        reason=document["reason"],
        disclosed_at=disclosed_at,  # type: ignore[arg-type]
        young_person_told=document["youngPersonTold"],
        told_at=told_at,
        not_told_reason=document.get("notToldReason"),
    )
    issues = disclosure_issues(disclosure)
    if disclosure.told_at and disclosure.told_at < disclosure.disclosed_at:
        issues.append(error("invariant", "$.toldAt", "the young person cannot be told before the disclosure"))
    if issues:
        raise InvalidInput(issues)
    return disclosure


def _moment(value: str, where: str, issues: list[Issue]) -> datetime | None:
    """The schema checks the shape; a shape-valid but impossible moment (month 13) is reported, not raised."""
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        issues.append(error("value", where, f"'{value}' is not a valid date and time"))
        return None


def disclosure_to_json(d: Disclosure) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": d.id,
        "nhsNumber": d.nhs_number,
        "exception": d.exception,
        "informationTypes": list(d.information_types),
        "recipient": dict(d.recipient),
        "reason": d.reason,
        "disclosedAt": d.disclosed_at.isoformat(),
        "youngPersonTold": d.young_person_told,
    }
    if d.told_at:
        doc["toldAt"] = d.told_at.isoformat()
    if d.not_told_reason:
        doc["notToldReason"] = d.not_told_reason
    if d.form_id:
        doc["formId"] = d.form_id
    if d.recorded_at:
        doc["recordedAt"] = d.recorded_at.isoformat()
    return doc
