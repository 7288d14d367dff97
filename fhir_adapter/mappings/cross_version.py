"""R4 <-> R5 Consent conversion that keeps what HL7's published maps lose.

The conversion goes through the CASUS form, which is lossless in both
directions for everything a CASUS consent holds (property-tested); anything
the form cannot hold is rejected with an OperationOutcome rather than dropped.
The resource id travels unchanged so both versions name the same Consent.
"""

from __future__ import annotations

from typing import Any

from .r4 import form_to_r4, r4_to_form
from .r5 import form_to_r5, r5_to_form


def _keep_id(source: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    if isinstance(source.get("id"), str):
        return {"resourceType": target["resourceType"], "id": source["id"], **{k: v for k, v in target.items() if k != "resourceType"}}
    return target


def r4_to_r5(consent: Any) -> dict[str, Any]:
    return _keep_id(consent, form_to_r5(r4_to_form(consent)))


def r5_to_r4(consent: Any) -> dict[str, Any]:
    return _keep_id(consent, form_to_r4(r5_to_form(consent)))
