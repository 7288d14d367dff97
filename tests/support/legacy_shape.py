"""Consents in the mapping version 1 shape, as the version 1 writer produced them (for reading-back tests).

Built by rewriting only the provisions of today's output, following the version 1 writer: R4 root ``type: deny``
with per-type permits nested under each share person and THREAT beside OVRTPS; R5 share provisions without
purpose and a do-not-share person as a provision whose one nested provision revokes disclose.
"""

from __future__ import annotations

import copy
from typing import Any

from fhir_adapter.form import ConsentForm
from fhir_adapter.mappings import codes
from fhir_adapter.mappings.r4 import form_to_r4
from fhir_adapter.mappings.r5 import form_to_r5

OVRTPS = {"system": codes.V3_ACT_REASON, "code": "OVRTPS", "display": "override treatment purpose"}
DISCLOSE = {"coding": [codes.ACTION_CODING]}


def _actor(person_id: str) -> dict[str, Any]:
    return {"role": {"coding": [codes.RECIPIENT_ROLE_CODING]}, "reference": {"reference": f"#{person_id}"}}


def _exception_purposes(kind: str) -> list[dict[str, str]]:
    coding = codes.EXCEPTIONS.to_coding(kind)
    return [coding, OVRTPS] if kind == "risk-of-significant-harm" else [coding]


def _period(person: Any) -> dict[str, Any]:
    if person.period is None:
        return {}
    return {"period": {k: d.isoformat() for k, d in (("start", person.period.start), ("end", person.period.end)) if d}}


def legacy_r4(form: ConsentForm) -> dict[str, Any]:
    consent = copy.deepcopy(form_to_r4(form))
    del consent["policyRule"]
    people = [
        {
            "type": codes.SHARING_R4.row(p.sharing).code,
            **_period(p),
            "actor": [_actor(p.id)],
            "action": [DISCLOSE],
            **(
                {"provision": [{"type": "permit", "code": [{"coding": [codes.INFORMATION_TYPES.to_coding(t)]}]} for t in p.information_types]}
                if p.information_types
                else {}
            ),
        }
        for p in form.people
    ]
    exceptions = [{"type": "permit", "action": [DISCLOSE], "purpose": _exception_purposes(k)} for k in form.exceptions.provisions]
    consent["provision"] = {"type": "deny", "provision": people + exceptions}
    return consent


def legacy_r5(form: ConsentForm) -> dict[str, Any]:
    consent = copy.deepcopy(form_to_r5(form))
    consent["meta"] = {"security": consent["meta"]["security"]}
    consent["extension"] = [e for e in consent["extension"] if e["url"] != codes.EXT_DO_NOT_SHARE]
    people = []
    for p in form.people:
        prov: dict[str, Any] = {**_period(p), "actor": [_actor(p.id)], "action": [DISCLOSE]}
        if p.sharing == "share":
            prov["code"] = [{"coding": [codes.INFORMATION_TYPES.to_coding(t)]} for t in p.information_types]
        else:
            prov["provision"] = [{"action": [DISCLOSE]}]
        people.append(prov)
    consent["provision"] = people + [{"action": [DISCLOSE], "purpose": _exception_purposes(k)} for k in form.exceptions.provisions]
    return consent
