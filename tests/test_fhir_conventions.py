"""FHIR HTTP conventions: content negotiation, conditional create and read, Prefer, _summary/_total/_elements, _history paging,
and a PUT without If-Match that never answers 412."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from flask.testing import FlaskClient

from fhir_adapter.facade.fhir_rest import PUT_ATTEMPTS
from fhir_adapter.mappings import codes
from tests.support.facade import bearer, example_form

FORM_ID = example_form()["formId"]
FHIR_JSON = "application/fhir+json"


@pytest.fixture
def stored(client: FlaskClient) -> FlaskClient:
    assert client.post("/api/forms", json=example_form(), headers=bearer("admin")).status_code == 201
    return client


def _consent(client: FlaskClient) -> dict[str, Any]:
    return client.get(f"/fhir/Consent/{FORM_ID}", headers=bearer("admin")).json


@pytest.mark.parametrize("accept", ["application/fhir+xml", "application/xml", "text/html"])
def test_an_accept_header_naming_no_json_is_a_406_outcome(stored: FlaskClient, accept: str) -> None:
    response = stored.get(f"/fhir/Consent/{FORM_ID}", headers={**bearer("admin"), "Accept": accept})
    assert response.status_code == 406 and response.json["issue"][0]["expression"] == ["Accept"]


@pytest.mark.parametrize("value", ["xml", "application/fhir+xml", "text/xml", "turtle"])
def test_a_format_parameter_naming_no_json_is_a_406_outcome(stored: FlaskClient, value: str) -> None:
    response = stored.get("/fhir/metadata", query_string={"_format": value})
    assert response.status_code == 406 and response.json["issue"][0]["expression"] == ["_format"]


@pytest.mark.parametrize("accept", ["*/*", FHIR_JSON, "application/json", "application/fhir+xml;q=1, application/fhir+json;q=0.5"])
def test_an_accept_header_that_takes_json_gets_json(stored: FlaskClient, accept: str) -> None:
    response = stored.get(f"/fhir/Consent/{FORM_ID}", headers={**bearer("admin"), "Accept": accept})
    assert response.status_code == 200 and response.mimetype == FHIR_JSON


def _new_consent(client: FlaskClient) -> dict[str, Any]:
    consent = _consent(client)
    consent.pop("id")
    consent.pop("meta")
    return consent


def test_a_conditional_create_that_matches_returns_the_match_and_creates_nothing(stored: FlaskClient) -> None:
    condition = f"identifier={codes.ID_CONSENT_FORM}|{FORM_ID}"
    response = stored.post("/fhir/Consent", json=_new_consent(stored), headers={**bearer("admin"), "If-None-Exist": condition})
    assert response.status_code == 200 and response.json["id"] == FORM_ID and response.headers["ETag"] == 'W/"1"'
    assert len(stored.get(f"/fhir/Consent/{FORM_ID}/_history", headers=bearer("admin")).json["entry"]) == 1


def test_a_conditional_create_that_matches_nothing_creates_and_a_repeat_creates_nothing(stored: FlaskClient) -> None:
    new_id = "f0000000-0000-4000-8000-000000000001"
    consent = _new_consent(stored)
    for identifier in consent["identifier"]:
        if identifier["system"] == codes.ID_CONSENT_FORM:
            identifier["value"] = new_id
    headers = {**bearer("admin"), "If-None-Exist": f"identifier={codes.ID_CONSENT_FORM}|{new_id}"}
    first, repeat = (stored.post("/fhir/Consent", json=consent, headers=headers) for _ in range(2))
    assert (first.status_code, repeat.status_code) == (201, 200) and repeat.json["id"] == new_id


def test_a_conditional_create_with_an_unknown_search_parameter_is_a_400_naming_the_header(stored: FlaskClient) -> None:
    response = stored.post("/fhir/Consent", json=_new_consent(stored), headers={**bearer("admin"), "If-None-Exist": "name=Alex"})
    assert response.status_code == 400 and response.json["issue"][0]["expression"] == ["If-None-Exist"]


@pytest.mark.parametrize("path", [f"/fhir/Consent/{FORM_ID}", f"/fhir/Consent/{FORM_ID}/_history/1"])
def test_if_none_match_naming_the_current_version_is_a_304_without_a_body(stored: FlaskClient, path: str) -> None:
    response = stored.get(path, headers={**bearer("admin"), "If-None-Match": 'W/"1"'})
    assert response.status_code == 304 and response.data == b"" and response.headers["ETag"] == 'W/"1"'


def test_if_none_match_naming_an_older_version_gets_the_consent(stored: FlaskClient) -> None:
    response = stored.get(f"/fhir/Consent/{FORM_ID}", headers={**bearer("admin"), "If-None-Match": 'W/"7"'})
    assert response.status_code == 200 and response.json["id"] == FORM_ID


def test_prefer_return_minimal_answers_an_update_without_a_body(stored: FlaskClient) -> None:
    response = stored.put(f"/fhir/Consent/{FORM_ID}", json=_consent(stored), headers={**bearer("admin"), "Prefer": "return=minimal"})
    assert response.status_code == 200 and response.data == b"" and response.headers["ETag"] == 'W/"2"'


def test_prefer_return_operation_outcome_answers_an_update_with_an_outcome(stored: FlaskClient) -> None:
    response = stored.put(f"/fhir/Consent/{FORM_ID}", json=_consent(stored), headers={**bearer("admin"), "Prefer": "return=OperationOutcome"})
    assert response.status_code == 200 and response.json["resourceType"] == "OperationOutcome"
    assert response.json["issue"][0]["severity"] == "information"


def test_summary_count_gives_the_total_without_entries(stored: FlaskClient) -> None:
    bundle = stored.get("/fhir/Consent?_summary=count", headers=bearer("admin")).json
    assert bundle["total"] == 1 and not bundle.get("entry")


def test_total_none_leaves_the_total_out(stored: FlaskClient) -> None:
    bundle = stored.get("/fhir/Consent?_total=none", headers=bearer("admin")).json
    assert "total" not in bundle and len(bundle["entry"]) == 1


@pytest.mark.parametrize(("base", "mandatory"), [("/fhir", {"status", "scope", "category"}), ("/fhir/R5", {"status"})])
def test_elements_returns_the_elements_asked_for_and_the_mandatory_ones_tagged_subsetted(stored: FlaskClient, base: str, mandatory: set[str]) -> None:
    resource = stored.get(f"{base}/Consent?_elements=provision", headers=bearer("admin")).json["entry"][0]["resource"]
    assert set(resource) == {"resourceType", "id", "meta", "provision", *mandatory}
    assert {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED", "display": "subsetted"} in resource["meta"][
        "tag"
    ]


def test_a_search_without_elements_returns_whole_consents(stored: FlaskClient) -> None:
    resource = stored.get("/fhir/Consent", headers=bearer("admin")).json["entry"][0]["resource"]
    assert "SUBSETTED" not in [t["code"] for t in resource["meta"].get("tag", [])] and "policyRule" in resource


@pytest.mark.parametrize("value", ["", "provision.code", "status;drop", "st atus"])
def test_elements_that_are_no_element_names_are_a_400_naming_the_parameter(stored: FlaskClient, value: str) -> None:
    response = stored.get("/fhir/Consent", query_string={"_elements": value}, headers=bearer("admin"))
    assert response.status_code == 400 and response.json["issue"][0]["expression"] == ["_elements"]


@pytest.mark.parametrize(("query", "expression"), [("_summary=text", "_summary"), ("_total=exact", "_total")])
def test_an_unsupported_summary_or_total_is_a_400_naming_it(stored: FlaskClient, query: str, expression: str) -> None:
    response = stored.get(f"/fhir/Consent?{query}", headers=bearer("admin"))
    assert response.status_code == 400 and response.json["issue"][0]["expression"] == [expression]


def test_history_count_returns_that_many_versions_newest_first(stored: FlaskClient) -> None:
    assert stored.put(f"/fhir/Consent/{FORM_ID}", json=_consent(stored), headers=bearer("admin")).status_code == 200
    bundle = stored.get(f"/fhir/Consent/{FORM_ID}/_history?_count=1", headers=bearer("admin")).json
    assert bundle["total"] == 2 and [e["resource"]["meta"]["versionId"] for e in bundle["entry"]] == ["2"]


def test_concurrent_puts_without_if_match_are_never_refused_with_412(stored: FlaskClient) -> None:
    consent = _consent(stored)
    statuses: list[int] = []
    lock = threading.Lock()

    def put_three_times() -> None:
        for _ in range(3):
            status = stored.put(f"/fhir/Consent/{FORM_ID}", json=consent, headers=bearer("admin")).status_code
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=put_three_times) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(statuses) == 18 and set(statuses) <= {200, 409} and statuses.count(200) >= 18 // PUT_ATTEMPTS
    assert 412 not in statuses


def test_a_put_with_a_stale_if_match_is_still_a_412(stored: FlaskClient) -> None:
    assert stored.put(f"/fhir/Consent/{FORM_ID}", json=_consent(stored), headers=bearer("admin")).status_code == 200
    response = stored.put(f"/fhir/Consent/{FORM_ID}", json=_consent(stored), headers={**bearer("admin"), "If-Match": 'W/"1"'})
    assert response.status_code == 412
