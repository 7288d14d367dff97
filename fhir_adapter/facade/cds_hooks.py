"""CDS Hooks: the same consent question for EHRs that speak CDS Hooks 2.0.

There is no standard hook for "may I share this?", so the service declares
a custom hook, ``casus-consent-consult``, whose context carries what the
decision endpoint's query parameters do.  The answer is one card whose
indicator is ``info`` (permit), ``warning`` (permit under a policy exception,
with obligations) or ``critical`` (deny), with the reason as detail.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from .. import decision
from .decisions_api import decision_request, verdict_for
from .protocol import json_body, json_response, principal, problem, require, service

bp = Blueprint("cds_hooks", __name__, url_prefix="/cds-services")
SERVICE_ID = "casus-consent"
HOOK = "casus-consent-consult"
#: decision query parameter -> CDS Hooks context field carrying it
CONTEXT_FIELDS = {
    "patient": "patient",
    "recipient-identifier": "recipientIdentifier",
    "recipient-role": "recipientRole",
    "recipient-person": "recipientPerson",
    "information-type": "informationTypes",
    "purpose": "purpose",
    "at": "at",
    "known-at": "knownAt",
}


class _Args(dict[str, Any]):
    """Context fields shaped like query arguments, so the decision request is parsed in one place."""

    def getlist(self, key: str) -> list[str]:
        value = self.get(key)
        if value is None:
            return []
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]


@bp.get("")
@require(None)
def discovery() -> Any:
    return json_response(
        {
            "services": [
                {
                    "hook": HOOK,
                    "id": SERVICE_ID,
                    "title": "CASUS consent consult",
                    "description": "May CASUS information of these types about this patient go to this recipient for this purpose?",
                    "usageRequirements": (
                        "context: patient (NHS number), recipientIdentifier (system|value), recipientRole or recipientPerson, "
                        "informationTypes, purpose; optional at and knownAt (ISO 8601 with a time zone)"
                    ),
                }
            ]
        }
    )


@bp.post(f"/{SERVICE_ID}")
@require("decision.read")
def consult() -> Any:
    body = json_body()
    if not isinstance(body, dict) or body.get("hook") != HOOK:
        raise problem(400, "value", "hook", f"this service answers the {HOOK} hook")
    context = body.get("context")
    if not isinstance(context, dict):
        raise problem(400, "required", "context", "context is required")
    args = _Args()
    for arg, field in CONTEXT_FIELDS.items():
        value = context.get(field)
        if value is None:
            continue
        if arg == "information-type":
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise problem(400, "value", f"context.{field}", "must be a list of strings")
        elif not isinstance(value, str):
            raise problem(400, "value", f"context.{field}", "must be a string")
        args[arg] = value
    verdict = verdict_for(decision_request(args), principal(), service(), {arg: f"context.{field}" for arg, field in CONTEXT_FIELDS.items()})
    return json_response({"cards": [card(verdict)]})


def card(verdict: decision.Verdict) -> dict[str, Any]:
    if verdict.decision == "deny":
        indicator, summary = "critical", "Do not share: no CASUS consent covers this"
    elif verdict.basis == "policy-exception":
        indicator, summary = "warning", "Share under a CASUS policy exception: obligations apply"
    else:
        indicator, summary = "info", "The consent on file permits sharing this"
    detail = verdict.reason
    if verdict.obligations:
        detail += "\n\nObligations:\n" + "\n".join(f"- {o.text}" for o in verdict.obligations)
    return {
        "summary": summary[:140],
        "indicator": indicator,
        "detail": detail,
        "source": {"label": "CASUS consent adapter"},
        "extension": {"casus-verdict": decision.to_json(verdict)},
    }
