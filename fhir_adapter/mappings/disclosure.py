"""Disclosure under a policy exception -> FHIR R4 AuditEvent.

An AuditEvent is FHIR's record of something that happened to information —
here an export to a named recipient — and is what an accounting-of-disclosures
query (IHE BALP style) looks for.  A Communication would claim we hold the
message sent, which we do not; whether and when the young person was told is
therefore carried as entity details of the same AuditEvent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..disclosure import Disclosure
from . import codes

DCM = "http://dicom.nema.org/resources/ontology/DCM"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"


def _trust() -> dict[str, Any]:
    return {"identifier": {"system": codes.ODS_ORGANIZATION, "value": codes.TRUST_ODS_CODE}, "display": codes.TRUST_NAME}


def _detail(kind: str, value: str) -> dict[str, str]:
    return {"type": kind, "valueString": value}


def recipient_agent(recipient: Mapping[str, Any]) -> dict[str, Any]:
    """The recipient named as the decision endpoint names one: by role (coded from the exception-recipient roles) and by
    identifier (a professional identifier, else the organisation's ODS code), so a disclosure and the decision that
    allowed it can be matched."""
    who: dict[str, Any] = {"display": recipient.get("name") or recipient.get("organisation") or recipient.get("role")}
    identifier = recipient.get("identifier")
    if isinstance(identifier, Mapping):
        who["identifier"] = {"system": identifier["system"], "value": identifier["value"]}
    elif recipient.get("odsCode"):
        who["identifier"] = {"system": codes.ODS_ORGANIZATION, "value": recipient["odsCode"]}
    agent: dict[str, Any] = {
        "type": {"coding": [codes.RECIPIENT_ROLE_CODING]},
        "who": who,
        "name": recipient.get("role", "recipient"),
        "requestor": False,
    }
    role = recipient.get("role")
    if role in codes.EXCEPTION_RECIPIENT_ROLES.values():
        agent["role"] = [{"coding": [codes.EXCEPTION_RECIPIENT_ROLES.to_coding(role)]}]
    return agent


def disclosure_to_audit_event(d: Disclosure) -> dict[str, Any]:
    details = [_detail("information-type", t) for t in d.information_types]
    details += [_detail("reason", d.reason), _detail("young-person-told", "true" if d.young_person_told else "false")]
    if d.told_at:
        details.append(_detail("told-at", d.told_at.isoformat()))
    if d.not_told_reason:
        details.append(_detail("not-told-reason", d.not_told_reason))
    entities: list[dict[str, Any]] = [
        {
            "what": {"identifier": {"system": codes.NHS_NUMBER, "value": d.nhs_number}},
            "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
            "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
        }
    ]
    disclosed: dict[str, Any] = {
        "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
        "role": {"system": OBJECT_ROLE, "code": "3", "display": "Report"},
        "description": f"CASUS information disclosed under the {d.exception} exception",
        "securityLabel": [dict(c) for c in codes.SECURITY_LABELS],
        "detail": details,
    }
    if d.form_id:
        disclosed["what"] = {"reference": f"Consent/{d.form_id}"}
    entities.append(disclosed)
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": {"system": DCM, "code": "110106", "display": "Export"},
        "action": "E",
        "period": {"start": d.disclosed_at.isoformat(), "end": d.disclosed_at.isoformat()},
        "recorded": (d.recorded_at or d.disclosed_at).isoformat(),
        "outcome": "0",
        "purposeOfEvent": [{"coding": [codes.EXCEPTIONS.to_coding(d.exception)]}],
        "agent": [
            {"type": {"coding": [{"system": codes.V3_PARTICIPATION, "code": "CST", "display": "custodian"}]}, "who": _trust(), "requestor": True},
            recipient_agent(d.recipient),
        ],
        "source": {"site": "CASUS", "observer": _trust(), "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}]},
        "entity": entities,
    }
    if d.id:
        event = {"resourceType": "AuditEvent", "id": d.id, **{k: v for k, v in event.items() if k != "resourceType"}}
    return event
