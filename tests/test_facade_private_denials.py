"""Denials reveal nothing to a caller who may only ask for decisions; a caller who may read consents gets the full reason.

With only ``decision.read``, every deny -- unknown patient, no consent, recipient not on the form, refused -- has
one identical body apart from the echo of the question (the information types asked), in plain JSON, as FHIR
Parameters and as a CDS Hooks card.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest
from flask.testing import FlaskClient

from tests.support.facade import bearer, example_form

FORM_ID = "0b6c3f4e-2d1a-4c8b-9e7f-1a2b3c4d5e6f"
NHS = "9434765919"
UNKNOWN_NHS = "4010232137"
ABOUT_ATTENDANCE = {"purpose": "TREAT", "information-type": "attendance", "recipient-role": "mother"}

# cause of the deny: (how the form is held, the question's parameters beyond ABOUT_ATTENDANCE)
DENIALS: dict[str, tuple[str, dict[str, str]]] = {
    "no consent at the time asked": ("active", {"at": "2026-11-01T09:00:00Z"}),
    "nothing stored by the known-at time": ("active", {"known-at": "2026-11-21T09:00:00Z"}),
    "recipient not on the form": ("active", {"recipient-role": "school"}),
    "recipient by an identifier not on the form": ("active", {"recipient-identifier": "ods|X26AB"}),
    "refused by the young person": ("active", {"recipient-role": "father"}),
    "a type the young person did not agree to": ("active", {"information-type": "medication"}),
    "outside the choice's period": ("active", {"at": "2027-06-01T09:00:00Z"}),
    "a court asked about for care": ("active", {"recipient-role": "court"}),
    "a purpose no choice covers": ("active", {"purpose": "HMARKT"}),
    "a withdrawn consent": ("withdrawn", {}),
    "only a draft on file": ("draft", {}),
}


def held(client: FlaskClient, status: str) -> FlaskClient:
    form = example_form()
    if status == "draft":
        form["status"] = "draft"
    assert client.post("/api/forms", json=form, headers=bearer("clinician")).status_code == 201
    if status == "withdrawn":
        assert client.post(f"/api/forms/{FORM_ID}/withdraw", headers={**bearer("clinician"), "If-Match": 'W/"1"'}).status_code == 200
    return client


def ask(client: FlaskClient, token: str, patient: str = NHS, **params: str) -> Any:
    query = {"patient": patient, **ABOUT_ATTENDANCE, **params}
    return client.get(f"/api/decision?{urlencode(query)}", headers=bearer(token))


def consult(client: FlaskClient, token: str, patient: str = NHS, **params: str) -> Any:
    question = {"patient": patient, **ABOUT_ATTENDANCE, **params}
    fields = {
        "patient": "patient",
        "recipient-role": "recipientRole",
        "recipient-identifier": "recipientIdentifier",
        "purpose": "purpose",
        "at": "at",
        "known-at": "knownAt",
    }
    context = {fields[k]: v for k, v in question.items() if k in fields}
    context["informationTypes"] = [question["information-type"]]
    body = {"hook": "casus-consent-consult", "hookInstance": "0f0e0d0c-0000-4000-8000-000000000001", "context": context}
    return client.post("/cds-services/casus-consent", json=body, headers=bearer(token)).json["cards"][0]


def echo_free(answer: dict[str, Any]) -> dict[str, Any]:
    """The answer without its echo of the question: the information types asked."""
    return {k: v for k, v in answer.items() if k != "perType"}


@pytest.mark.parametrize(("status", "params"), DENIALS.values(), ids=DENIALS.keys())
def test_a_decision_only_caller_gets_the_unknown_patients_deny_body(client: FlaskClient, status: str, params: dict[str, str]) -> None:
    held(client, status)
    answer = ask(client, "decider", **params)
    unknown = ask(client, "decider", UNKNOWN_NHS, **params)
    assert (answer.status_code, answer.get_data()) == (200, unknown.get_data())
    assert answer.json["decision"] == "deny"


@pytest.mark.parametrize(("status", "params"), DENIALS.values(), ids=DENIALS.keys())
def test_every_deny_reads_the_same_to_a_decision_only_caller_apart_from_the_types_asked(
    client: FlaskClient, status: str, params: dict[str, str]
) -> None:
    held(client, status)
    reference = ask(client, "decider", UNKNOWN_NHS, **{"information-type": "attendance"}).json
    answer = ask(client, "decider", **params).json
    assert echo_free(answer) == echo_free(reference)


def test_a_decision_only_callers_deny_cites_no_consent_provision_or_person(client: FlaskClient) -> None:
    held(client, "active")
    answer = ask(client, "decider", **{"recipient-role": "parent"}).json
    assert (answer["consent"], answer["provision"], answer["matchedPeople"], answer["basis"]) == (None, None, [], "default")
    assert "Consent/" not in answer["reason"] and "provision" not in answer["reason"]


@pytest.mark.parametrize(("status", "params"), DENIALS.values(), ids=DENIALS.keys())
def test_a_decision_only_caller_gets_the_unknown_patients_fhir_parameters(client: FlaskClient, status: str, params: dict[str, str]) -> None:
    held(client, status)
    answer = ask(client, "decider", _format="fhir", **params)
    assert answer.get_data() == ask(client, "decider", UNKNOWN_NHS, _format="fhir", **params).get_data()


@pytest.mark.parametrize(("status", "params"), DENIALS.values(), ids=DENIALS.keys())
def test_a_decision_only_caller_gets_the_unknown_patients_cds_card(client: FlaskClient, status: str, params: dict[str, str]) -> None:
    held(client, status)
    assert consult(client, "decider", **params) == consult(client, "decider", UNKNOWN_NHS, **params)


def test_a_decision_only_callers_permit_cites_no_consent_provision_or_person(client: FlaskClient) -> None:
    held(client, "active")
    answer = ask(client, "decider", at="2026-11-21T09:00:00Z").json
    assert (answer["decision"], answer["consent"], answer["provision"], answer["matchedPeople"]) == ("permit", None, None, [])


def test_a_decision_only_callers_exception_permit_reads_the_same_for_a_known_and_an_unknown_patient(client: FlaskClient) -> None:
    held(client, "active")
    question = {"purpose": "HLEGAL", "recipient-role": "court"}
    assert ask(client, "decider", **question).get_data() == ask(client, "decider", UNKNOWN_NHS, **question).get_data()


# the full reason, for a caller who may read consents: cause -> (basis, the consent version cited or None)
FULL_REASONS: dict[str, tuple[str, dict[str, str], str, int | None]] = {
    "recipient not on the form": ("active", {"recipient-role": "school"}, "default", 1),
    "refused by the young person": ("active", {"recipient-role": "father"}, "choice", 1),
    "a withdrawn consent": ("withdrawn", {}, "default", 2),
    "no consent at the time asked": ("active", {"at": "2026-11-01T09:00:00Z"}, "default", None),
}


@pytest.mark.parametrize(("status", "params", "basis", "version"), FULL_REASONS.values(), ids=FULL_REASONS.keys())
def test_a_consent_reading_caller_gets_the_full_reason(
    client: FlaskClient, status: str, params: dict[str, str], basis: str, version: int | None
) -> None:
    held(client, status)
    answer = ask(client, "ehr", **params).json
    cited = answer["consent"]["version"] if answer["consent"] else None
    assert (answer["decision"], answer["basis"], cited) == ("deny", basis, version)


def test_a_consent_reading_callers_denials_differ_by_cause(client: FlaskClient) -> None:
    held(client, "active")
    reasons = {ask(client, "ehr", **params).json["reason"] for status, params in DENIALS.values() if status == "active"}
    assert len(reasons) > 1


def test_the_audit_keeps_the_full_verdict_whatever_the_caller_saw(client: FlaskClient, store: Any) -> None:
    held(client, "active")
    ask(client, "decider", **{"recipient-role": "father"})
    (record,) = [r for r in store.audit_log() if r.action == "decision"]
    assert (record.actor, record.resource, record.detail["basis"]) == ("decider", f"Consent/{FORM_ID}/_history/1", "choice")
