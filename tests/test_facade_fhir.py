"""FHIR REST for Consent over HTTP: R4 at /fhir (and /fhir/R4), R5 at /fhir/R5."""

from __future__ import annotations

import json

import pytest
from fhir.resources.R4B.bundle import Bundle as BundleR4
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from fhir_adapter.form import parse_form
from fhir_adapter.mappings import codes
from fhir_adapter.mappings.r4 import form_to_r4
from fhir_adapter.mappings.r5 import form_to_r5, r5_to_form
from tests.support.facade import EXAMPLES, bearer, example_form

FORM_ID = "0b6c3f4e-2d1a-4c8b-9e7f-1a2b3c4d5e6f"
NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
FHIR_JSON = "application/fhir+json"


@pytest.fixture
def loaded(client):
    for name in ("competent-under-16", "aged-16-17-professional", "parental-responsibility", "withdrawn"):
        assert client.post("/api/forms", json=example_form(name), headers=bearer("clinician")).status_code == 201
    return client


def test_metadata_is_an_r4_capability_statement(client):
    response = client.get("/fhir/metadata", headers=bearer("ehr"))
    assert response.status_code == 200
    assert response.mimetype == FHIR_JSON
    CapabilityStatement.model_validate(response.json)
    assert response.json["fhirVersion"] == "4.0.1"


def test_the_r5_prefix_answers_fhir_r5(client):
    assert client.get("/fhir/R5/metadata", headers=bearer("ehr")).json["fhirVersion"] == "5.0.0"


def test_each_capability_statement_names_the_casus_profile_of_its_version(client):
    profiles = {
        prefix: client.get(f"{prefix}/metadata", headers=bearer("ehr")).json["rest"][0]["resource"][0]["profile"] for prefix in ("/fhir", "/fhir/R5")
    }
    assert profiles == {"/fhir": codes.PROFILE_CONSENT, "/fhir/R5": f"{codes.CASUS_BASE}/StructureDefinition/casus-consent-r5"}


def test_read_returns_the_consent_with_version_etag_and_last_modified(loaded):
    response = loaded.get(f"/fhir/Consent/{FORM_ID}", headers=bearer("ehr"))
    assert response.status_code == 200
    assert response.headers["ETag"] == 'W/"1"' and response.headers["Last-Modified"]
    body = response.json
    assert body["id"] == FORM_ID and body["meta"]["versionId"] == "1"
    expected = form_to_r4(parse_form(example_form()))
    assert {k: v for k, v in body.items() if k not in ("id", "meta")} == {k: v for k, v in expected.items() if k != "meta"}


def test_read_as_r5_maps_back_to_the_same_form(loaded):
    body = loaded.get(f"/fhir/R5/Consent/{FORM_ID}", headers=bearer("ehr")).json
    assert body["decision"] == "deny"
    assert r5_to_form({k: v for k, v in body.items() if k != "id"}) == parse_form(example_form())


def test_vread_returns_an_older_version(loaded):
    changed = example_form()
    changed["people"][0]["informationTypes"] = ["attendance"]
    loaded.put(f"/api/forms/{FORM_ID}", json=changed, headers={**bearer("clinician"), "If-Match": 'W/"1"'})
    old = loaded.get(f"/fhir/Consent/{FORM_ID}/_history/1", headers=bearer("ehr"))
    assert old.status_code == 200 and old.json["meta"]["versionId"] == "1"
    assert loaded.get(f"/fhir/Consent/{FORM_ID}/_history/3", headers=bearer("ehr")).status_code == 404


def test_history_is_a_history_bundle_newest_first(loaded):
    loaded.post(f"/api/forms/{FORM_ID}/withdraw", headers={**bearer("clinician"), "If-Match": 'W/"1"'})
    bundle = loaded.get(f"/fhir/Consent/{FORM_ID}/_history", headers=bearer("ehr")).json
    BundleR4.model_validate(bundle)
    assert bundle["type"] == "history"
    assert [e["resource"]["meta"]["versionId"] for e in bundle["entry"]] == ["2", "1"]


def test_search_by_patient_nhs_number(loaded):
    bundle = loaded.get(f"/fhir/Consent?patient:identifier={NHS_SYSTEM}|9434765919", headers=bearer("ehr")).json
    BundleR4.model_validate(bundle)
    assert bundle["total"] == 1 and bundle["entry"][0]["resource"]["id"] == FORM_ID


def test_search_by_status(loaded):
    bundle = loaded.get("/fhir/Consent?status=inactive", headers=bearer("ehr")).json
    assert bundle["total"] == 1
    assert bundle["entry"][0]["resource"]["status"] == "inactive"


def test_search_by_business_identifier(loaded):
    bundle = loaded.get(f"/fhir/Consent?identifier=https://fhir.cpft.nhs.uk/casus/Id/consent-form|{FORM_ID}", headers=bearer("ehr")).json
    assert [e["resource"]["id"] for e in bundle["entry"]] == [FORM_ID]


def test_search_by_last_updated(loaded):
    assert loaded.get("/fhir/Consent?_lastUpdated=gt2000-01-01T00:00:00Z", headers=bearer("ehr")).json["total"] == 4
    assert loaded.get("/fhir/Consent?_lastUpdated=gt2999-01-01T00:00:00Z", headers=bearer("ehr")).json["total"] == 0


def test_search_pages_with_next_links_until_every_consent_is_seen(loaded):
    url, seen, pages = "/fhir/Consent?_count=3", [], 0
    while url and pages < 10:
        bundle = loaded.get(url, headers=bearer("ehr")).json
        seen += [e["resource"]["id"] for e in bundle.get("entry", [])]
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        url = nxt[0].removeprefix("http://localhost") if nxt else None
        pages += 1
    assert pages == 2 and len(seen) == len(set(seen)) == 4


def test_an_unsupported_search_parameter_gets_400_naming_it(loaded):
    response = loaded.get("/fhir/Consent?actor=Practitioner/1", headers=bearer("ehr"))
    assert response.status_code == 400
    assert response.json["issue"][0]["expression"] == ["actor"]


def test_an_invalid_last_updated_gets_400(loaded):
    assert loaded.get("/fhir/Consent?_lastUpdated=gtyesterday", headers=bearer("ehr")).status_code == 400


def test_post_of_a_casus_consent_creates_a_form_version(client):
    consent = json.loads((EXAMPLES / "Consent-casus-example-withdrawn.json").read_text())
    consent.pop("id")
    response = client.post("/fhir/Consent", json=consent, headers={**bearer("clinician"), "Content-Type": FHIR_JSON})
    assert response.status_code == 201
    assert response.headers["ETag"] == 'W/"1"' and "/_history/1" in response.headers["Location"]
    form_id = response.json["id"]
    assert client.get(f"/api/forms/{form_id}", headers=bearer("ehr")).json["form"] == example_form("withdrawn")


def test_put_with_the_current_version_updates_and_with_a_stale_one_gets_412(loaded):
    consent = loaded.get(f"/fhir/Consent/{FORM_ID}", headers=bearer("ehr")).json
    consent["status"] = "inactive"
    ok = loaded.put(f"/fhir/Consent/{FORM_ID}", json=consent, headers={**bearer("clinician"), "If-Match": 'W/"1"'})
    assert ok.status_code == 200 and ok.headers["ETag"] == 'W/"2"'
    stale = loaded.put(f"/fhir/Consent/{FORM_ID}", json=consent, headers={**bearer("clinician"), "If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert loaded.get(f"/api/forms/{FORM_ID}", headers=bearer("ehr")).json["version"] == 2


def test_put_of_an_r5_consent_on_the_r5_endpoint_updates_the_form(loaded):
    consent = loaded.get(f"/fhir/R5/Consent/{FORM_ID}", headers=bearer("ehr")).json
    consent["status"] = "inactive"
    response = loaded.put(f"/fhir/R5/Consent/{FORM_ID}", json=consent, headers={**bearer("clinician"), "If-Match": 'W/"1"'})
    assert response.status_code == 200
    assert loaded.get(f"/api/forms/{FORM_ID}", headers=bearer("ehr")).json["form"]["status"] == "withdrawn"


def test_put_with_an_id_that_differs_from_the_url_gets_400(loaded):
    consent = loaded.get(f"/fhir/Consent/{FORM_ID}", headers=bearer("ehr")).json
    consent["id"] = "something-else"
    assert loaded.put(f"/fhir/Consent/{FORM_ID}", json=consent, headers=bearer("clinician")).status_code == 400


def test_a_valid_fhir_consent_that_is_not_casus_gets_422_naming_the_elements(client, corpus_dir):
    consent = json.loads((corpus_dir / "r4" / "hl7-consent-example-notThem.json").read_text())
    response = client.post("/fhir/Consent", json=consent, headers=bearer("clinician"))
    assert response.status_code == 422
    issues = response.json["issue"]
    assert issues[0]["diagnostics"].startswith("not a CASUS consent")
    assert all(i.get("expression") for i in issues)


def test_a_structurally_invalid_consent_gets_400_and_nothing_is_stored(client, store):
    response = client.post("/fhir/Consent", json={"resourceType": "Consent", "status": 7}, headers=bearer("clinician"))
    assert response.status_code == 400
    assert store.search(limit=10, offset=0)[1] == 0


def test_validate_answers_an_operation_outcome_for_a_valid_example(client):
    consent = json.loads((EXAMPLES / "Consent-casus-example-competent-under-16.json").read_text())
    response = client.post("/fhir/Consent/$validate", json=consent, headers=bearer("engineer"))
    assert response.status_code == 200
    assert [i["severity"] for i in response.json["issue"]] == ["information"]


def test_validate_accepts_parameters_and_reports_errors(client):
    consent = json.loads((EXAMPLES / "Consent-casus-example-competent-under-16.json").read_text())
    consent["provision"]["type"] = "permit"
    params = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": consent}]}
    response = client.post("/fhir/Consent/$validate", json=params, headers=bearer("engineer"))
    assert response.status_code == 200
    assert any(i["severity"] == "error" and "Consent.provision.type" in i.get("expression", []) for i in response.json["issue"])


def test_validate_without_a_resource_parameter_gets_400(client):
    response = client.post("/fhir/Consent/$validate", json={"resourceType": "Parameters"}, headers=bearer("engineer"))
    assert response.status_code == 400


def test_an_unknown_route_gets_404_as_operation_outcome(client):
    response = client.get("/fhir/Patient/1", headers=bearer("ehr"))
    assert response.status_code == 404
    assert response.json["resourceType"] == "OperationOutcome"


def test_a_wrong_method_gets_405_as_operation_outcome(client):
    response = client.delete(f"/fhir/Consent/{FORM_ID}", headers=bearer("admin"))
    assert response.status_code == 405
    assert response.json["resourceType"] == "OperationOutcome"


def test_a_consent_version_beyond_64_bits_is_not_found(loaded):
    response = loaded.get(f"/fhir/Consent/{FORM_ID}/_history/9223372036854775808", headers=bearer("ehr"))
    assert response.status_code == 404
    assert response.json["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("path", ["/fhir/Consent", "/fhir/R5/Consent"])
def test_a_contained_resource_of_no_fhir_type_is_refused_with_an_operation_outcome(client, path):
    render = form_to_r5 if "R5" in path else form_to_r4
    consent = render(parse_form(example_form()))
    consent["contained"][0]["resourceType"] = "NotAResource"
    response = client.post(path, json=consent, headers=bearer("clinician"))
    assert response.status_code == 400
    assert response.json["resourceType"] == "OperationOutcome"
