"""Regression tests for the 500s the first hardening run found (all fixed): each input now gets a 4xx OperationOutcome.

A bug found later gets a strict-xfail reproducer here and an entry in ``known_bugs.KNOWN_BUGS`` until it is fixed.
"""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from fhir_adapter.form import parse_form
from fhir_adapter.mappings.r4 import form_to_r4
from fhir_adapter.mappings.r5 import form_to_r5
from tests.hardening.probes import is_operation_outcome
from tests.support.facade import bearer, example_form

BEYOND_BIGINT = "9223372036854775808"
DISCLOSURE = {"exception": "court-order", "informationTypes": ["attendance"], "recipient": {"name": "Court officer", "role": "court"},
              "reason": "order ref", "youngPersonTold": False, "notToldReason": "not yet safe"}


@pytest.mark.parametrize("path", [f"/api/forms/{{id}}/versions/{BEYOND_BIGINT}", f"/fhir/Consent/{{id}}/_history/{BEYOND_BIGINT}"])
def test_a_version_beyond_64_bits_in_the_path_is_a_404(client: FlaskClient, path: str) -> None:
    form = example_form()
    client.post("/api/forms", json=form, headers=bearer("clinician"))
    response = client.get(path.format(id=form["formId"]), headers=bearer("clinician"))
    assert response.status_code == 404 and is_operation_outcome(response.data)


def test_an_if_match_beyond_64_bits_is_a_412(client: FlaskClient) -> None:
    form = example_form()
    client.post("/api/forms", json=form, headers=bearer("clinician"))
    response = client.put(f"/api/forms/{form['formId']}", json=form, headers={**bearer("clinician"), "If-Match": f'W/"{BEYOND_BIGINT}"'})
    assert response.status_code == 412 and is_operation_outcome(response.data)


@pytest.mark.parametrize("moment", ["2026-13-45T00:00:00Z", "0000-00-00T00:00:00Z"])
def test_a_disclosure_time_that_is_no_date_is_a_400(client: FlaskClient, moment: str) -> None:
    nhs = example_form()["youngPerson"]["nhsNumber"]
    response = client.post(f"/api/patients/{nhs}/disclosures", json={**DISCLOSURE, "disclosedAt": moment}, headers=bearer("clinician"))
    assert response.status_code == 400 and is_operation_outcome(response.data)


@pytest.mark.parametrize(("path", "render"), [("/fhir/Consent", form_to_r4), ("/fhir/R5/Consent", form_to_r5)], ids=["r4", "r5"])
def test_a_contained_resource_of_no_fhir_type_is_a_400(client: FlaskClient, path: str, render: object) -> None:
    consent = render(parse_form(example_form()))  # type: ignore[operator]
    consent["contained"][0]["resourceType"] = "NotAResource"
    response = client.post(path, json=consent, headers=bearer("clinician"))
    assert response.status_code == 400 and is_operation_outcome(response.data)
