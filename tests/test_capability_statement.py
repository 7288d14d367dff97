"""The CapabilityStatement is public, valid FHIR, and true: every interaction and search parameter it declares works."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fhir.resources.capabilitystatement import CapabilityStatement as CapabilityStatementR5
from fhir.resources.R4B.capabilitystatement import CapabilityStatement as CapabilityStatementR4
from flask.testing import FlaskClient

from fhir_adapter.mappings import codes
from fhir_adapter.validation import CONSENT_PROFILES
from tests.support.facade import bearer, example_form

BASES = {"/fhir": "r4", "/fhir/R4": "r4", "/fhir/R5": "r5"}
FORM_ID = example_form()["formId"]
NHS_NUMBER = example_form()["youngPerson"]["nhsNumber"]
#: A value for every search parameter a statement may declare; a declared one missing here fails the test.
SEARCH_EXAMPLES = {
    "patient": f"Patient/{NHS_NUMBER}",
    "identifier": f"{codes.ID_CONSENT_FORM}|{FORM_ID}",
    "status": "active",
    "_lastUpdated": "gt2000-01-01T00:00:00Z",
    "_count": "1",
    "_offset": "0",
    "_summary": "count",
    "_total": "accurate",
    "_elements": "status,provision",
}


def _statement(client: FlaskClient, base: str) -> dict[str, Any]:
    response = client.get(f"{base}/metadata")
    assert response.status_code == 200
    return response.json


@pytest.mark.parametrize("base", BASES)
def test_the_statement_is_public_and_valid_fhir_of_its_version(client: FlaskClient, base: str) -> None:
    statement = _statement(client, base)
    (CapabilityStatementR4 if BASES[base] == "r4" else CapabilityStatementR5).model_validate(statement)
    assert statement["fhirVersion"] == ("4.0.1" if BASES[base] == "r4" else "5.0.0")


@pytest.mark.parametrize("base", BASES)
def test_the_statement_declares_the_casus_profile_json_and_its_search_parameters(client: FlaskClient, base: str) -> None:
    resource = _statement(client, base)["rest"][0]["resource"][0]
    assert resource["profile"] == CONSENT_PROFILES[BASES[base]] and resource["supportedProfile"] == [resource["profile"]]
    assert "application/fhir+json" in _statement(client, base)["format"]
    assert {p["name"] for p in resource["searchParam"]} >= {"patient", "identifier", "status", "_lastUpdated", "_count", "_offset"}


def _as_a_new_form(consent: dict[str, Any]) -> dict[str, Any]:
    consent.pop("id")
    consent.pop("meta", None)
    for identifier in consent["identifier"]:
        if identifier["system"] == codes.ID_CONSENT_FORM:
            identifier["value"] = str(uuid.uuid4())
    return consent


def _interaction_requests(client: FlaskClient, base: str) -> dict[str, tuple[str, str, Any]]:
    """One request per interaction code: (method, path, JSON body)."""
    current = client.get(f"{base}/Consent/{FORM_ID}", headers=bearer("admin")).json
    return {
        "read": ("GET", f"{base}/Consent/{FORM_ID}", None),
        "vread": ("GET", f"{base}/Consent/{FORM_ID}/_history/1", None),
        "history-instance": ("GET", f"{base}/Consent/{FORM_ID}/_history", None),
        "search-type": ("GET", f"{base}/Consent", None),
        "update": ("PUT", f"{base}/Consent/{FORM_ID}", current),
        "create": ("POST", f"{base}/Consent", None),
    }


@pytest.mark.parametrize("base", BASES)
def test_every_declared_interaction_operation_and_search_parameter_is_served(client: FlaskClient, base: str) -> None:
    assert client.post("/api/forms", json=example_form(), headers=bearer("admin")).status_code == 201
    resource = _statement(client, base)["rest"][0]["resource"][0]
    requests = _interaction_requests(client, base)
    refused = {}
    for interaction in resource["interaction"]:
        method, path, body = requests[interaction["code"]]
        if interaction["code"] == "create":
            body = _as_a_new_form(client.get(f"{base}/Consent/{FORM_ID}", headers=bearer("admin")).json)
        response = client.open(
            path, method=method, json=body, headers=bearer("admin"), **({"content_type": "application/fhir+json"} if body is not None else {})
        )
        if response.status_code >= 400:
            refused[interaction["code"]] = (response.status_code, response.json)
    for operation in resource["operation"]:
        assert operation["name"] == "validate"
        response = client.post(f"{base}/Consent/$validate", json=requests["update"][2], headers=bearer("admin"))
        if response.status_code >= 400:
            refused["$" + operation["name"]] = response.status_code
    for parameter in resource["searchParam"]:
        response = client.get(f"{base}/Consent", query_string={parameter["name"]: SEARCH_EXAMPLES[parameter["name"]]}, headers=bearer("admin"))
        if response.status_code >= 400 or response.json["resourceType"] != "Bundle":
            refused[parameter["name"]] = (response.status_code, response.json)
    assert refused == {}


def test_a_declared_patient_reference_finds_the_young_person_s_consents(client: FlaskClient) -> None:
    assert client.post("/api/forms", json=example_form(), headers=bearer("admin")).status_code == 201
    for value in (f"Patient/{NHS_NUMBER}", f"https://example.org/fhir/Patient/{NHS_NUMBER}", NHS_NUMBER):
        found = client.get("/fhir/Consent", query_string={"patient": value}, headers=bearer("admin")).json
        assert [e["resource"]["id"] for e in found["entry"]] == [FORM_ID], value


@pytest.mark.parametrize("value", ["Group/9434765919", "Patient/1234567890", "Patient/"])
def test_a_patient_reference_to_no_patient_or_no_nhs_number_is_a_400_naming_it(client: FlaskClient, value: str) -> None:
    response = client.get("/fhir/Consent", query_string={"patient": value}, headers=bearer("admin"))
    assert response.status_code == 400 and response.json["issue"][0]["expression"] == ["patient"]
