"""The policy's decision rules asked over HTTP, one behaviour per row, as the policy reads.

The sample form (``form-competent-under-16``): mum may have attendance and the treatment plan (20 Nov 2026 to
20 May 2027), the GP (GMC 1234567 at ODS D81001) medication, dad nothing; both exceptions explained.  It was
recorded on 20 Nov 2026 and is stored when the test runs, so it is a paper form typed in late.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from flask.testing import FlaskClient

from fhir_adapter.store import Store
from tests.support.facade import bearer, example_form

FORM_ID = "0b6c3f4e-2d1a-4c8b-9e7f-1a2b3c4d5e6f"
NHS = "9434765919"
UNKNOWN_NHS = "4010232137"
RECORDED = "2026-11-20T10:15:00+00:00"
GMC = "https://fhir.hl7.org.uk/Id/gmc-number"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"


@pytest.fixture
def loaded(client: FlaskClient) -> FlaskClient:
    assert client.post("/api/forms", json=example_form(), headers=bearer("clinician")).status_code == 201
    return client


def ask(client: FlaskClient, token: str = "ehr", **params: Any) -> Any:
    query = {"patient": NHS, "purpose": "TREAT", "information-type": "attendance", **params}
    return client.get(f"/api/decision?{urlencode(query, doseq=True)}", headers=bearer(token))


MUM_REFUSES = {"id": "mum", "name": "Pat Example", "role": "mother", "sharing": "do-not-share"}


def change(client: FlaskClient, version: int, recorded: str) -> dict[str, Any]:
    """Store a new version of the form whose choice, made at ``recorded``, is that mum may hear nothing."""
    form = example_form()
    form["recorded"]["date"] = recorded
    form["decisionMaker"]["competence"]["assessedOn"] = recorded[:10]
    form["exceptions"]["explainedOn"] = recorded[:10]
    form["people"][0] = MUM_REFUSES
    response = client.put(f"/api/forms/{FORM_ID}", json=form, headers={**bearer("clinician"), "If-Match": f'W/"{version}"'})
    assert response.status_code == 200, response.json
    return response.json


# --------------------------------------------------------------------------- exception recipients

EXCEPTION_RECIPIENTS = {
    "court by role": {"recipient-role": "court"},
    "police by role": {"recipient-role": "police"},
    "childrens social care by role": {"recipient-role": "childrens-social-care"},
    "a form role nobody on the form has (school)": {"recipient-role": "school"},
    "an organisation by ODS code not on the form": {"recipient-identifier": f"{ODS}|X26AB"},
    "an organisation by the ods alias": {"recipient-identifier": "ods|x26ab"},
    "a doctor by GMC number not on the form": {"recipient-identifier": f"{GMC}|7777777"},
    "a nurse by NMC PIN": {"recipient-identifier": "https://fhir.hl7.org.uk/Id/nmc-number|99Z9999Z"},
    "a worker by SDS user id": {"recipient-identifier": "https://fhir.nhs.uk/Id/sds-user-id|555123456789"},
}


@pytest.mark.parametrize("purpose", ["HLEGAL", "THREAT"])
@pytest.mark.parametrize("recipient", EXCEPTION_RECIPIENTS.values(), ids=EXCEPTION_RECIPIENTS.keys())
def test_an_exception_reaches_a_recipient_not_on_the_form(loaded: FlaskClient, recipient: dict[str, str], purpose: str) -> None:
    response = ask(loaded, purpose=purpose, **{"information-type": "risk-safety", **recipient})
    assert (response.status_code, response.json["decision"], response.json["basis"]) == (200, "permit", "policy-exception")
    assert {o["code"] for o in response.json["obligations"]} == {"record-disclosure", "inform-young-person"}


@pytest.mark.parametrize("recipient", EXCEPTION_RECIPIENTS.values(), ids=EXCEPTION_RECIPIENTS.keys())
def test_a_recipient_only_an_exception_reaches_gets_nothing_for_care(loaded: FlaskClient, recipient: dict[str, str]) -> None:
    response = ask(loaded, **recipient)
    assert (response.status_code, response.json["decision"], response.json["matchedPeople"]) == (200, "deny", [])


def test_a_recipient_on_the_form_is_found_by_their_organisations_ods_code(loaded: FlaskClient) -> None:
    verdict = ask(loaded, **{"recipient-identifier": f"{ODS}|D81001", "information-type": "medication"}).json
    assert (verdict["decision"], verdict["matchedPeople"]) == ("permit", ["gp"])


def test_a_role_that_is_no_recipient_role_gets_400_naming_the_parameter(loaded: FlaskClient) -> None:
    response = ask(loaded, **{"recipient-role": "bishop"})
    assert response.status_code == 400
    assert response.json["issue"][0]["expression"] == ["recipient-role"]


def test_an_identifier_system_the_form_does_not_accept_gets_400_naming_the_parameter(loaded: FlaskClient) -> None:
    response = ask(loaded, **{"recipient-identifier": "https://example.org/staff|1"})
    assert response.status_code == 400
    assert response.json["issue"][0]["expression"] == ["recipient-identifier"]


def test_an_unknown_information_type_gets_400_naming_the_parameter(loaded: FlaskClient) -> None:
    response = ask(loaded, **{"recipient-role": "mother", "information-type": "everything"})
    assert (response.status_code, response.json["issue"][0]["expression"]) == (400, ["information-type"])


def test_cds_hooks_names_the_context_field_of_a_role_that_is_no_recipient_role(loaded: FlaskClient) -> None:
    body = {
        "hook": "casus-consent-consult",
        "context": {"patient": NHS, "recipientRole": "bishop", "informationTypes": ["attendance"], "purpose": "TREAT"},
    }
    response = loaded.post("/cds-services/casus-consent", json=body, headers=bearer("ehr"))
    assert (response.status_code, response.json["issue"][0]["expression"]) == (400, ["context.recipientRole"])


def test_an_exception_answer_as_fhir_parameters_names_the_exception_basis(loaded: FlaskClient) -> None:
    response = ask(loaded, purpose="HLEGAL", _format="fhir", **{"recipient-role": "court"})
    params = {p["name"]: p for p in response.json["parameter"]}
    assert (params["decision"]["valueCode"], params["basis"]["valueCode"]) == ("permit", "policy-exception")


def test_cds_hooks_asks_about_the_police_under_risk_of_harm(loaded: FlaskClient) -> None:
    body = {
        "hook": "casus-consent-consult",
        "hookInstance": "1d2c3b4a-0000-4000-8000-000000000001",
        "context": {"patient": NHS, "recipientRole": "police", "informationTypes": ["risk-safety"], "purpose": "THREAT"},
    }
    card = loaded.post("/cds-services/casus-consent", json=body, headers=bearer("ehr")).json["cards"][0]
    assert (card["indicator"], card["extension"]["casus-verdict"]["basis"]) == ("warning", "policy-exception")


# --------------------------------------------------------------------------- role families

ROLE_FAMILY_ROWS = {
    # asked role, dad's sharing, expected decision, expected people matched
    "a parent covers mother and father; dad's refusal beats mum's permit": ("parent", "do-not-share", "deny", ["mum", "dad"]),
    "a parent is permitted when both parents may hear it": ("parent", "share", "permit", ["mum", "dad"]),
    "other-family covers both parents too": ("other-family", "share", "permit", ["mum", "dad"]),
    "mother covers only the mother": ("mother", "do-not-share", "permit", ["mum"]),
    "step-parent covers nobody on this form": ("step-parent", "share", "deny", []),
}


@pytest.mark.parametrize(("role", "dad", "expected", "matched"), ROLE_FAMILY_ROWS.values(), ids=ROLE_FAMILY_ROWS.keys())
def test_a_general_role_matches_its_family(client: FlaskClient, role: str, dad: str, expected: str, matched: list[str]) -> None:
    form = example_form()
    form["people"][2] = {
        "id": "dad",
        "name": "Chris Example",
        "role": "father",
        "sharing": dad,
        **({"informationTypes": ["attendance"]} if dad == "share" else {}),
    }
    assert client.post("/api/forms", json=form, headers=bearer("clinician")).status_code == 201
    verdict = ask(client, **{"recipient-role": role, "at": "2026-11-21T12:00:00Z"}).json
    assert (verdict["decision"], verdict["matchedPeople"]) == (expected, matched)


def test_the_people_matched_are_listed_in_the_fhir_parameters_answer(loaded: FlaskClient) -> None:
    response = ask(loaded, _format="fhir", **{"recipient-role": "parent"})
    assert [p["valueString"] for p in response.json["parameter"] if p["name"] == "matchedPerson"] == ["mum", "dad"]


# --------------------------------------------------------------------------- choices dated by when they were made


def test_a_paper_form_typed_in_late_answers_about_the_days_after_it_was_signed(loaded: FlaskClient) -> None:
    verdict = ask(loaded, **{"recipient-role": "mother", "at": "2026-11-21T09:00:00Z"}).json
    assert (verdict["decision"], verdict["consent"]["version"]) == ("permit", 1)


def test_nothing_is_in_force_before_the_first_choice_was_made(loaded: FlaskClient) -> None:
    verdict = ask(loaded, **{"recipient-role": "mother", "at": "2026-11-19T09:00:00Z"}).json
    assert (verdict["decision"], verdict["consent"]) == ("deny", None)


def test_a_change_of_mind_entered_later_applies_from_when_it_was_made(loaded: FlaskClient) -> None:
    change(loaded, 1, "2026-11-25T09:00:00+00:00")
    before = ask(loaded, **{"recipient-role": "mother", "at": "2026-11-24T09:00:00Z"}).json
    after = ask(loaded, **{"recipient-role": "mother", "at": "2026-11-26T09:00:00Z"}).json
    assert (before["decision"], after["decision"]) == ("permit", "deny")


def test_an_older_paper_form_entered_after_a_newer_choice_does_not_override_it(loaded: FlaskClient) -> None:
    change(loaded, 1, "2026-11-10T09:00:00+00:00")
    verdict = ask(loaded, **{"recipient-role": "mother", "at": "2026-11-26T09:00:00Z"}).json
    assert (verdict["decision"], verdict["consent"]["version"]) == ("permit", 1)


def test_known_at_answers_with_what_was_stored_then(loaded: FlaskClient) -> None:
    first_stored = datetime.fromisoformat(loaded.get(f"/api/forms/{FORM_ID}", headers=bearer("ehr")).json["storedAt"])
    change(loaded, 1, "2026-11-25T09:00:00+00:00")
    question = {"recipient-role": "mother", "at": "2026-11-26T09:00:00Z"}
    then = ask(loaded, **question, **{"known-at": first_stored.isoformat()}).json
    now = ask(loaded, **question).json
    assert (then["decision"], then["consent"]["version"], now["decision"]) == ("permit", 1, "deny")


def test_known_at_before_anything_was_stored_reads_as_an_unknown_patient(loaded: FlaskClient) -> None:
    question = {"recipient-role": "mother", "known-at": "2026-11-21T00:00:00Z"}
    assert ask(loaded, **question).json == ask(loaded, patient=UNKNOWN_NHS, **question).json


def test_cds_hooks_takes_at_and_known_at_from_the_context(loaded: FlaskClient) -> None:
    body = {
        "hook": "casus-consent-consult",
        "hookInstance": "1d2c3b4a-0000-4000-8000-000000000002",
        "context": {
            "patient": NHS,
            "recipientRole": "mother",
            "informationTypes": ["attendance"],
            "purpose": "TREAT",
            "at": "2026-11-21T09:00:00Z",
            "knownAt": "2026-11-21T00:00:00Z",
        },
    }
    card = loaded.post("/cds-services/casus-consent", json=body, headers=bearer("ehr")).json["cards"][0]
    assert card["extension"]["casus-verdict"]["decision"] == "deny"  # nothing had been stored by then


@pytest.mark.parametrize("value", ["yesterday", "2026-11-21T09:00:00"])
def test_a_known_at_that_is_no_zoned_time_gets_400_naming_it(loaded: FlaskClient, value: str) -> None:
    response = ask(loaded, **{"recipient-role": "mother", "known-at": value})
    assert (response.status_code, response.json["issue"][0]["expression"]) == (400, ["known-at"])


# --------------------------------------------------------------------------- the decision's audit record


def test_the_decision_audit_names_an_exception_recipient_by_role_and_identifier(loaded: FlaskClient, store: Store) -> None:
    ask(loaded, purpose="HLEGAL", **{"recipient-role": "court", "recipient-identifier": f"{ODS}|X26AB"})
    (record,) = [r for r in store.audit_log() if r.action == "decision"]
    assert (record.detail["recipientRole"], record.detail["recipientIdentifier"]) == ("court", {"system": ODS, "value": "X26AB"})


def test_the_decision_audit_keeps_both_times_of_the_question_and_of_the_deciding_version(loaded: FlaskClient, store: Store) -> None:
    ask(loaded, **{"recipient-role": "mother", "at": "2026-11-21T09:00:00+00:00", "known-at": "2030-01-01T00:00:00+00:00"})
    (record,) = [r for r in store.audit_log() if r.action == "decision"]
    stored = store.get(FORM_ID).stored_at
    assert (record.detail["at"], record.detail["knownAt"]) == ("2026-11-21T09:00:00+00:00", "2030-01-01T00:00:00+00:00")
    assert (record.detail["consentGovernsFrom"], record.detail["consentStoredAt"]) == (RECORDED, stored.isoformat())


def test_the_decision_audit_records_now_when_no_times_are_asked(loaded: FlaskClient, store: Store) -> None:
    ask(loaded, **{"recipient-role": "mother"})
    (record,) = [r for r in store.audit_log() if r.action == "decision"]
    assert record.detail["at"] == record.detail["knownAt"]
    assert abs(datetime.fromisoformat(record.detail["at"]) - record.at) < timedelta(minutes=1)


def test_the_decision_audit_keeps_no_person_id(loaded: FlaskClient, store: Store) -> None:
    ask(loaded, **{"recipient-person": "mum"})
    (record,) = [r for r in store.audit_log() if r.action == "decision"]
    assert "mum" not in str(record.detail) and record.detail["recipientPersonGiven"] is True


# --------------------------------------------------------------------------- disclosures name the recipient the same way

DISCLOSURE = {
    "formId": FORM_ID,
    "exception": "risk-of-significant-harm",
    "informationTypes": ["risk-safety"],
    "reason": "Disclosed a plan to harm a sibling",
    "disclosedAt": "2026-11-24T10:00:00+00:00",
    "youngPersonTold": True,
    "toldAt": "2026-11-24T12:00:00+00:00",
}
DISCLOSED_TO = {
    # recipient as recorded, the AuditEvent agent's role code, its identifier
    "the police by role": ({"name": "Cambridgeshire Constabulary", "role": "police"}, "police", None),
    "children's social care by role and ODS code": (
        {"name": "Children's services", "role": "childrens-social-care", "odsCode": "X26AB"},
        "childrens-social-care",
        {"system": ODS, "value": "X26AB"},
    ),
    "a doctor by GMC number": ({"name": "Dr B Jones", "identifier": {"system": GMC, "value": "7777777"}}, None, {"system": GMC, "value": "7777777"}),
    "a form role": ({"name": "Head of year", "role": "school"}, "school", None),
}


@pytest.mark.parametrize(("recipient", "role", "identifier"), DISCLOSED_TO.values(), ids=DISCLOSED_TO.keys())
def test_a_disclosures_audit_event_names_the_recipient_by_role_or_identifier(
    loaded: FlaskClient, recipient: dict[str, Any], role: str | None, identifier: dict[str, str] | None
) -> None:
    assert (
        loaded.post(f"/api/patients/{NHS}/disclosures", json={**DISCLOSURE, "recipient": recipient}, headers=bearer("clinician")).status_code == 201
    )
    event = loaded.get(f"/api/patients/{NHS}/disclosures?_format=fhir", headers=bearer("ehr")).json["entry"][0]["resource"]
    AuditEvent.model_validate(event)
    agent = event["agent"][1]
    assert [c["code"] for r in agent.get("role", []) for c in r["coding"]] == ([role] if role else [])
    assert agent["who"].get("identifier") == identifier


@pytest.mark.parametrize(
    ("recipient", "field"),
    [
        ({"name": "Someone", "role": "bishop"}, "$.recipient.role"),
        ({"name": "Someone", "identifier": {"system": "https://example.org/staff", "value": "1"}}, "$.recipient.identifier.system"),
        ({"name": "Someone"}, "$.recipient"),
    ],
)
def test_a_disclosure_recipient_named_by_no_recipient_role_or_accepted_identifier_gets_400(
    loaded: FlaskClient, recipient: dict[str, Any], field: str
) -> None:
    response = loaded.post(f"/api/patients/{NHS}/disclosures", json={**DISCLOSURE, "recipient": recipient}, headers=bearer("clinician"))
    assert response.status_code == 400
    assert field in [e for issue in response.json["issue"] for e in issue["expression"]]
