"""The decision endpoint, the per-patient summary, exception disclosures and CDS Hooks over HTTP — all audited."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from urllib.parse import urlencode

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.parameters import Parameters

from tests.support.facade import bearer, example_form

FORM_ID = "0b6c3f4e-2d1a-4c8b-9e7f-1a2b3c4d5e6f"
NHS = "9434765919"
UNKNOWN_NHS = "4010232137"


@pytest.fixture
def loaded(client):
    assert client.post("/api/forms", json=example_form(), headers=bearer("clinician")).status_code == 201
    return client


#: The moment questions are about unless they say: inside every period of the sample form, so answers do not
#: change with the day the tests run.
INSIDE_THE_CHOICES = "2026-12-01T12:00:00+00:00"


def ask(client, **params):
    query = {"patient": NHS, "purpose": "TREAT", "at": INSIDE_THE_CHOICES, **params}
    return client.get(f"/api/decision?{urlencode(query, doseq=True)}", headers=bearer("ehr"))


def test_a_share_choice_permits_with_its_reason_and_provision(loaded):
    verdict = ask(loaded, **{"recipient-role": "mother", "information-type": "attendance"}).json
    assert verdict["decision"] == "permit" and verdict["basis"] == "choice"
    assert verdict["provision"] == "Consent.provision.provision[0].code[0]"
    assert verdict["consent"]["reference"] == f"Consent/{FORM_ID}/_history/1"
    assert "permit" in verdict["reason"]


def test_a_do_not_share_choice_denies(loaded):
    verdict = ask(loaded, **{"recipient-role": "father", "information-type": "attendance"}).json
    assert verdict["decision"] == "deny" and verdict["basis"] == "choice"


def test_a_recipient_by_gmc_number_is_matched(loaded):
    verdict = ask(loaded, **{"recipient-identifier": "https://fhir.hl7.org.uk/Id/gmc-number|1234567", "information-type": "medication"}).json
    assert verdict["decision"] == "permit"


def test_several_types_permit_only_if_each_does(loaded):
    verdict = ask(loaded, **{"recipient-role": "mother", "information-type": ["attendance", "medication"]}).json
    assert verdict["decision"] == "deny"
    assert {t["informationType"]: t["decision"] for t in verdict["perType"]} == {"attendance": "permit", "medication": "deny"}


def test_changing_the_form_changes_the_answer_and_as_of_uses_the_choice_then(loaded):
    before = ask(loaded, **{"recipient-role": "mother", "information-type": "attendance"}).json
    changed = example_form()
    changed["recorded"]["date"] = "2026-11-25T09:00:00+00:00"  # the young person changed their mind five days later
    changed["people"][0] = {"id": "mum", "name": "Pat Example", "role": "mother", "sharing": "do-not-share"}
    assert loaded.put(f"/api/forms/{FORM_ID}", json=changed, headers={**bearer("clinician"), "If-Match": 'W/"1"'}).status_code == 200
    after = ask(loaded, **{"recipient-role": "mother", "information-type": "attendance"}).json
    assert (before["decision"], after["decision"]) == ("permit", "deny")
    then = ask(loaded, **{"recipient-role": "mother", "information-type": "attendance", "at": "2026-11-22T12:00:00+00:00"}).json
    assert then["decision"] == "permit" and then["consent"]["version"] == 1


def test_a_withdrawn_consent_permits_nothing(loaded):
    loaded.post(f"/api/forms/{FORM_ID}/withdraw", headers={**bearer("clinician"), "If-Match": 'W/"1"'})
    verdict = ask(loaded, **{"recipient-role": "mother", "information-type": "attendance", "at": datetime.now(UTC).isoformat()}).json
    assert verdict["decision"] == "deny" and verdict["consent"]["reference"] == f"Consent/{FORM_ID}/_history/2"


def test_a_court_not_on_the_form_may_be_asked_about_under_a_court_order(loaded):
    verdict = ask(loaded, **{"recipient-role": "court", "information-type": "substance-use", "purpose": "HLEGAL"})
    assert (verdict.status_code, verdict.json["decision"], verdict.json["basis"]) == (200, "permit", "policy-exception")


def test_a_court_receives_nothing_for_treatment(loaded):
    verdict = ask(loaded, **{"recipient-role": "court", "information-type": "attendance"})
    assert (verdict.status_code, verdict.json["decision"]) == (200, "deny")


def test_asking_about_a_parent_matches_the_mother_and_the_father(loaded):
    verdict = ask(loaded, **{"recipient-role": "parent", "information-type": "attendance"}).json
    assert (verdict["decision"], verdict["matchedPeople"]) == ("deny", ["mum", "dad"])


def test_a_team_draft_leaves_the_active_consent_deciding(loaded):
    draft = example_form()
    draft["status"] = "draft"
    draft["people"][0] = {"id": "mum", "name": "Pat Example", "role": "mother", "sharing": "do-not-share"}
    assert loaded.put(f"/api/forms/{FORM_ID}", json=draft, headers={**bearer("clinician"), "If-Match": 'W/"1"'}).status_code == 200
    verdict = ask(loaded, **{"recipient-role": "mother", "information-type": "attendance"}).json
    assert (verdict["decision"], verdict["consent"]["version"]) == ("permit", 1)


def test_risk_of_significant_harm_permits_with_obligations_despite_do_not_share(loaded):
    verdict = ask(loaded, purpose="THREAT", **{"recipient-role": "father", "information-type": "risk-safety"}).json
    assert verdict["decision"] == "permit" and verdict["basis"] == "policy-exception"
    assert {o["code"] for o in verdict["obligations"]} == {"record-disclosure", "inform-young-person"}


def test_an_unknown_patient_reads_the_same_as_one_with_no_consent_in_force(loaded):
    question = {"recipient-role": "mother", "information-type": "attendance", "at": "2020-01-01T00:00:00Z"}
    known_but_not_yet = ask(loaded, **question).json
    unknown = ask(loaded, patient=UNKNOWN_NHS, **question).json
    assert known_but_not_yet == unknown
    assert unknown["decision"] == "deny" and unknown["consent"] is None


def test_the_answer_as_fhir_parameters(loaded):
    response = loaded.get(
        f"/api/decision?{urlencode({'patient': NHS, 'purpose': 'TREAT', 'recipient-role': 'mother', 'information-type': 'attendance'})}",
        headers={**bearer("ehr"), "Accept": "application/fhir+json"},
    )
    assert response.mimetype == "application/fhir+json"
    Parameters.model_validate(response.json)
    assert {p["name"]: p.get("valueCode") for p in response.json["parameter"]}["decision"] == "permit"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"recipient-role": "mother", "information-type": "attendance", "patient": ""}, "patient"),
        ({"recipient-role": "mother", "information-type": "attendance", "patient": "9434765918"}, "patient"),
        ({"information-type": "attendance"}, "recipient-identifier"),
        ({"recipient-role": "mother"}, "information-type"),
        ({"recipient-role": "mother", "information-type": "attendance", "purpose": ""}, "purpose"),
        ({"recipient-role": "mother", "information-type": "attendance", "at": "yesterday"}, "at"),
        ({"recipient-identifier": "no-bar", "information-type": "attendance"}, "recipient-identifier"),
    ],
)
def test_bad_decision_questions_get_400_naming_the_parameter(loaded, params, field):
    response = ask(loaded, **params)
    assert response.status_code == 400
    assert response.json["issue"][0].get("expression") == [field]


def test_an_unknown_information_type_gets_400(loaded):
    response = ask(loaded, **{"recipient-role": "mother", "information-type": "everything"})
    assert response.status_code == 400
    assert response.json["resourceType"] == "OperationOutcome"


def test_every_decision_is_audited_with_who_what_and_the_verdict(loaded, store):
    ask(loaded, **{"recipient-role": "mother", "information-type": "attendance"})
    (record,) = [r for r in store.audit_log() if r.action == "decision"]
    assert (record.actor, record.outcome, record.subject) == ("ehr", "permit", NHS)
    assert record.detail["purpose"] == "TREAT" and record.detail["informationTypes"] == ["attendance"]


def test_every_read_of_consent_content_is_audited(loaded, store):
    loaded.get(f"/fhir/Consent/{FORM_ID}", headers=bearer("ehr"))
    loaded.get(f"/api/forms/{FORM_ID}", headers=bearer("ehr"))
    loaded.get(f"/fhir/Consent?patient:identifier=https://fhir.nhs.uk/Id/nhs-number|{NHS}", headers=bearer("ehr"))
    actions = [(r.action, r.actor, r.subject) for r in store.audit_log(actor="ehr")]
    assert actions == [("form.search", "ehr", NHS), ("form.read", "ehr", NHS), ("form.read", "ehr", NHS)]


def test_the_summary_lists_who_may_receive_what(loaded):
    summary = loaded.get(f"/api/patients/{NHS}/summary", headers=bearer("ehr")).json["recipients"]
    by_role = {entry["role"]: entry for entry in summary}
    assert set(by_role["mother"]["mayReceive"]) == {"attendance", "treatment-plan"}
    assert by_role["father"]["mayReceive"] == []


DISCLOSURE = {
    "formId": FORM_ID,
    "exception": "court-order",
    "informationTypes": ["attendance", "substance-use"],
    "recipient": {"name": "Family Court", "role": "court", "organisation": "HMCTS"},
    "reason": "Order FC-2026-123",
    "disclosedAt": "2026-11-24T10:00:00+00:00",
    "youngPersonTold": True,
    "toldAt": "2026-11-24T12:00:00+00:00",
}


def test_a_disclosure_is_recorded_and_listed_and_maps_to_an_audit_event(loaded):
    response = loaded.post(f"/api/patients/{NHS}/disclosures", json=DISCLOSURE, headers=bearer("clinician"))
    assert response.status_code == 201 and response.json["id"]
    listed = loaded.get(f"/api/patients/{NHS}/disclosures", headers=bearer("ehr")).json["disclosures"]
    assert [d["reason"] for d in listed] == ["Order FC-2026-123"]
    bundle = loaded.get(f"/api/patients/{NHS}/disclosures?_format=fhir", headers=bearer("ehr")).json
    event = bundle["entry"][0]["resource"]
    AuditEvent.model_validate(event)
    assert event["purposeOfEvent"][0]["coding"][0]["code"] == "HLEGAL"


def test_a_disclosure_not_told_without_a_reason_is_rejected_and_not_stored(loaded):
    bad = {**DISCLOSURE, "youngPersonTold": False}
    bad.pop("toldAt")
    response = loaded.post(f"/api/patients/{NHS}/disclosures", json=bad, headers=bearer("clinician"))
    assert response.status_code == 400
    assert loaded.get(f"/api/patients/{NHS}/disclosures", headers=bearer("ehr")).json["disclosures"] == []


def test_cds_hooks_discovery_lists_the_consent_service(client):
    services = client.get("/cds-services", headers=bearer("ehr")).json["services"]
    assert [(s["id"], s["hook"]) for s in services] == [("casus-consent", "casus-consent-consult")]


def test_cds_hooks_consult_answers_a_card_with_the_verdict(loaded):
    body = {
        "hook": "casus-consent-consult",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"patient": NHS, "recipientRole": "father", "informationTypes": ["attendance"], "purpose": "TREAT"},
    }
    card = loaded.post("/cds-services/casus-consent", json=body, headers=bearer("ehr")).json["cards"][0]
    assert card["indicator"] == "critical"
    assert card["extension"]["casus-verdict"]["decision"] == "deny"


def test_cds_hooks_consult_for_another_hook_gets_400(loaded):
    response = loaded.post("/cds-services/casus-consent", json={"hook": "patient-view", "context": {}}, headers=bearer("ehr"))
    assert response.status_code == 400


def test_the_audit_log_is_for_admins(loaded):
    assert loaded.get("/api/audit", headers=bearer("ehr")).status_code == 403
    records = loaded.get("/api/audit", headers=bearer("admin")).json["audit"]
    assert records[0]["action"] == "store.form-version"


def test_the_audit_log_answers_who_looked_at_a_young_persons_choices(loaded):
    ask(loaded, **{"recipient-role": "mother", "information-type": "attendance"})
    records = loaded.get(f"/api/audit?subject={NHS}", headers=bearer("admin")).json["audit"]
    assert {(r["actor"], r["action"]) for r in records} >= {("ehr", "decision"), ("clinician", "store.form-version")}
    assert loaded.get("/api/audit?subject=123", headers=bearer("admin")).status_code == 400


def test_a_negative_audit_limit_gets_400(loaded):
    assert loaded.get("/api/audit?limit=-1", headers=bearer("admin")).status_code == 400


def test_cds_hooks_context_values_of_the_wrong_type_get_400_naming_them(loaded):
    body = {
        "hook": "casus-consent-consult",
        "context": {"patient": 9434765919, "recipientRole": "gp", "informationTypes": ["medication"], "purpose": "TREAT"},
    }
    response = loaded.post("/cds-services/casus-consent", json=body, headers=bearer("ehr"))
    assert response.status_code == 400
    assert response.json["issue"][0]["expression"] == ["context.patient"]


def test_listing_forms_with_an_unknown_status_gets_400(loaded):
    assert loaded.get(f"/api/patients/{NHS}/forms?status=bogus", headers=bearer("ehr")).status_code == 400


@pytest.mark.parametrize("moment", ["2026-13-45T00:00:00Z", "0000-00-00T00:00:00Z"])
def test_a_disclosure_time_that_is_no_calendar_date_is_rejected_naming_the_field(loaded, moment):
    response = loaded.post(f"/api/patients/{NHS}/disclosures", json={**DISCLOSURE, "disclosedAt": moment}, headers=bearer("clinician"))
    assert response.status_code == 400
    assert "disclosedAt" in json.dumps(response.json)
    assert loaded.get(f"/api/patients/{NHS}/disclosures", headers=bearer("ehr")).json["disclosures"] == []
