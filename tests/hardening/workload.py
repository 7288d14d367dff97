"""A representative HTTP workload over the facade, and the identifying values it carries.

Used by the log-privacy test: every name, NHS number, date of birth and free-text value sent is
collected from the documents themselves (never typed twice), so the scan looks for exactly what went in.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

from flask.testing import FlaskClient

from fhir_adapter.form import parse_form
from fhir_adapter.mappings.r4 import form_to_r4
from fhir_adapter.mappings.r5 import form_to_r5
from tests.support.facade import bearer, example_form

EXAMPLES = ("competent-under-16", "aged-16-17-professional", "parental-responsibility", "withdrawn")
DISCLOSURE = {
    "exception": "court-order",
    "informationTypes": ["attendance", "substance-use"],
    "recipient": {"name": "Rowan Officer-Privatelyname", "role": "court liaison", "organisation": "Peterborough Crown Court"},
    "reason": "Order CO-7731 made by HHJ Quillfeather about the young person's care",
    "disclosedAt": "2026-11-21T09:30:00+00:00",
    "youngPersonTold": False,
    "notToldReason": "Telling them now would raise the risk from their step-father",
}
FREE_TEXT_KEYS = frozenset({"name", "reason", "notToldReason", "organisation", "birthDate", "nhsNumber", "localId"})


def identifying_values(document: Any) -> Iterator[str]:
    """Every name, NHS number, date of birth, local id and free-text value in a form or disclosure document."""
    if isinstance(document, dict):
        for key, value in document.items():
            if key in FREE_TEXT_KEYS and isinstance(value, str):
                yield value
                if key == "nhsNumber":
                    yield f"{value[:3]} {value[3:6]} {value[6:]}"  # the spaced form people write
            else:
                yield from identifying_values(value)
    elif isinstance(document, list):
        for item in document:
            yield from identifying_values(item)


def sensitive_values() -> set[str]:
    found = {v for name in EXAMPLES for v in identifying_values(example_form(name))} | set(identifying_values(DISCLOSURE))
    return {v for v in found if len(v) >= 4}  # a 3-letter fragment would match ordinary words


def run(client: FlaskClient) -> dict[str, int]:
    """Create, update, read, search, decide, disclose, validate, and the error paths (400, 401, 403, 404, 412, 415, 413).

    Returns status -> count, so the caller can see the workload did what it says.
    """
    statuses: dict[str, int] = {}

    def call(method: str, path: str, role: str | None = "clinician", **kwargs: Any) -> Any:
        headers = {**(bearer(role) if role else {}), **kwargs.pop("headers", {})}
        response = client.open(path, method=method, headers=headers, **kwargs)
        statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
        return response

    forms = [example_form(name) for name in EXAMPLES]
    for form in forms:
        call("POST", "/api/forms", json=form)
    first = forms[0]
    fid, nhs = first["formId"], first["youngPerson"]["nhsNumber"]
    changed = copy.deepcopy(first)
    changed["people"][0]["informationTypes"] = ["attendance"]
    call("PUT", f"/api/forms/{fid}", json=changed, headers={"If-Match": 'W/"1"'})
    call("PUT", f"/api/forms/{fid}", json=changed, headers={"If-Match": 'W/"1"'})  # stale: 412
    call("GET", f"/api/forms/{fid}")
    call("GET", f"/api/forms/{fid}/history")
    call("GET", f"/api/forms/{fid}/versions/1")
    call("GET", f"/api/patients/{nhs}/forms")
    call("GET", "/fhir/Consent", query_string={"patient:identifier": f"https://fhir.nhs.uk/Id/nhs-number|{nhs}"})
    call("GET", f"/fhir/R5/Consent/{fid}")
    query = {"patient": nhs, "recipient-role": "mother", "information-type": "attendance", "purpose": "TREAT"}
    call("GET", "/api/decision", role="ehr", query_string=query)
    call("GET", "/api/decision", role="ehr", query_string={**query, "_format": "fhir"})
    call("GET", "/api/decision", role="ehr", query_string={**query, "purpose": "THREAT"})
    call("GET", f"/api/patients/{nhs}/summary", role="ehr")
    call(
        "POST",
        "/cds-services/casus-consent",
        role="ehr",
        json={
            "hook": "casus-consent-consult",
            "hookInstance": "x",
            "context": {"patient": nhs, "recipientRole": "mother", "informationTypes": ["attendance"], "purpose": "TREAT"},
        },
    )
    call("POST", f"/api/patients/{nhs}/disclosures", json=DISCLOSURE)
    call("GET", f"/api/patients/{nhs}/disclosures")
    call("GET", f"/api/patients/{nhs}/disclosures", query_string={"_format": "fhir"})
    r4 = form_to_r4(parse_form(forms[1]))
    call("POST", "/fhir/Consent/$validate", role="engineer", json=r4)
    broken = {**r4, "status": "maybe", "patient": {"display": first["youngPerson"]["name"]}}
    call("POST", "/fhir/Consent/$validate", role="engineer", json=broken)
    fresh = example_form()
    fresh["formId"] = "5d2b1a9e-7c3f-4e6a-9b1d-2f3e4a5b6c7d"
    call(
        "PUT",
        f"/fhir/R5/Consent/{fresh['formId']}",
        data=json.dumps(form_to_r5(parse_form(fresh))),
        headers={"Content-Type": "application/fhir+json"},
    )
    bad = copy.deepcopy(first)
    bad["youngPerson"]["nhsNumber"] = nhs[:-1] + str((int(nhs[-1]) + 1) % 10)  # wrong check digit: 400 naming the field
    bad["formId"] = "6e3c2b0f-8d4a-4f7b-8c2e-3a4b5c6d7e8f"
    call("POST", "/api/forms", json=bad)
    call("POST", "/api/forms", data=json.dumps(first).encode("latin-1", errors="replace"), headers={"Content-Type": "text/plain"})
    call("GET", "/api/forms/00000000-0000-4000-8000-000000000000")  # 404
    call("GET", f"/api/patients/{nhs}/forms", role=None)  # 401
    call("GET", f"/api/audit?subject={nhs}", role="ehr")  # 403
    call("GET", f"/api/audit?subject={nhs}", role="admin")
    return statuses
