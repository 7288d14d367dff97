"""Drafts are proposals: they never change what is in force, the summary shows what they would change, and
making one active is an explicit, version-checked, audited act."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from flask.testing import FlaskClient

from fhir_adapter.store import Store
from tests.support.facade import bearer, example_form

FORM_ID = "0b6c3f4e-2d1a-4c8b-9e7f-1a2b3c4d5e6f"
NHS = "9434765919"
DAD_MAY_HEAR_ATTENDANCE = {"id": "dad", "name": "Chris Example", "role": "father", "sharing": "share", "informationTypes": ["attendance"]}


def alex() -> dict[str, Any]:
    """The sample form, with Alex born so that they are under 16 whenever the tests run (activation is dated now)."""
    form = example_form()
    form["youngPerson"]["birthDate"] = f"{min(date.today().year - 14, 2011)}-01-01"
    return form


@pytest.fixture
def proposed(client: FlaskClient) -> FlaskClient:
    """Alex's active form (version 1) and a team draft (version 2) proposing that dad may hear about attendance."""
    assert client.post("/api/forms", json=alex(), headers=bearer("clinician")).status_code == 201
    draft = alex()
    draft["status"] = "draft"
    draft["recorded"]["date"] = "2026-11-27T09:00:00+00:00"
    draft["people"][2] = DAD_MAY_HEAR_ATTENDANCE
    assert client.put(f"/api/forms/{FORM_ID}", json=draft, headers={**bearer("clinician"), "If-Match": 'W/"1"'}).status_code == 200
    return client


def ask_about_dad(client: FlaskClient) -> dict[str, Any]:
    query = {"patient": NHS, "recipient-role": "father", "information-type": "attendance", "purpose": "TREAT"}
    return client.get(f"/api/decision?{urlencode(query)}", headers=bearer("ehr")).json


def activate(client: FlaskClient, version: str | None = 'W/"2"', token: str = "clinician", body: Any = None) -> Any:
    headers = {**bearer(token), **({"If-Match": version} if version else {})}
    return client.post(f"/api/forms/{FORM_ID}/activate", headers=headers, json=body)


def test_a_draft_does_not_change_what_is_in_force(proposed: FlaskClient) -> None:
    verdict = ask_about_dad(proposed)
    assert (verdict["decision"], verdict["consent"]["version"]) == ("deny", 1)


def test_the_summary_lists_the_people_of_the_version_in_force_not_the_proposal(proposed: FlaskClient) -> None:
    summary = proposed.get(f"/api/patients/{NHS}/summary", headers=bearer("ehr")).json
    assert summary["inForce"]["consent"] == f"Consent/{FORM_ID}/_history/1"
    assert {r["personId"]: r["mayReceive"] for r in summary["recipients"]}["dad"] == []


def test_the_summary_shows_what_a_pending_proposal_would_change(proposed: FlaskClient) -> None:
    (proposal,) = proposed.get(f"/api/patients/{NHS}/summary", headers=bearer("ehr")).json["proposals"]
    assert (proposal["status"], proposal["consent"], proposal["inForce"]) == (
        "proposed",
        f"Consent/{FORM_ID}/_history/2",
        f"Consent/{FORM_ID}/_history/1",
    )
    assert proposal["changes"] == [
        {
            "personId": "dad",
            "role": "father",
            "change": "changed",
            "sharing": {"before": "do-not-share", "after": "share"},
            "wouldReceive": ["attendance"],
            "wouldNoLongerReceive": [],
            "period": {"before": None, "after": None},
        }
    ]


def test_a_caller_who_may_only_ask_for_decisions_may_not_read_the_summary(proposed: FlaskClient) -> None:
    assert proposed.get(f"/api/patients/{NHS}/summary", headers=bearer("decider")).status_code == 403


def test_the_summary_carries_both_times_of_the_version_in_force(proposed: FlaskClient, store: Store) -> None:
    in_force = proposed.get(f"/api/patients/{NHS}/summary", headers=bearer("ehr")).json["inForce"]
    assert (in_force["governsFrom"], in_force["storedAt"]) == ("2026-11-20T10:15:00+00:00", store.get(FORM_ID, 1).stored_at.isoformat())


def test_activating_the_draft_makes_its_choices_decide_from_then(proposed: FlaskClient) -> None:
    response = activate(proposed)
    assert (response.status_code, response.json["version"], response.json["form"]["status"]) == (200, 3, "active")
    assert abs(datetime.fromisoformat(response.json["governsFrom"]) - datetime.now(UTC)) < timedelta(minutes=1)
    verdict = ask_about_dad(proposed)
    assert (verdict["decision"], verdict["consent"]["version"]) == ("permit", 3)


def test_once_activated_a_proposal_is_no_longer_pending(proposed: FlaskClient) -> None:
    activate(proposed)
    assert proposed.get(f"/api/patients/{NHS}/summary", headers=bearer("ehr")).json["proposals"] == []


def test_activating_is_audited_naming_the_proposal_agreed_to(proposed: FlaskClient, store: Store) -> None:
    activate(proposed)
    (record,) = [r for r in store.audit_log() if r.action == "form.activate"]
    assert (record.actor, record.resource, record.subject) == ("clinician", f"Consent/{FORM_ID}/_history/3", NHS)
    assert record.detail["proposal"] == f"Consent/{FORM_ID}/_history/2"


def test_activating_needs_the_version_read(proposed: FlaskClient) -> None:
    assert activate(proposed, None).status_code == 428


def test_activating_a_stale_version_is_refused_and_changes_nothing(proposed: FlaskClient, store: Store) -> None:
    response = activate(proposed, 'W/"1"')
    assert (response.status_code, response.headers["ETag"], store.get(FORM_ID).version) == (412, 'W/"2"', 2)


def test_only_a_draft_can_be_activated(proposed: FlaskClient, store: Store) -> None:
    activate(proposed)
    response = activate(proposed, 'W/"3"')
    assert (response.status_code, response.json["issue"][0]["expression"], store.get(FORM_ID).version) == (409, ["status"], 3)


def test_activating_needs_the_form_write_scope(proposed: FlaskClient) -> None:
    assert activate(proposed, token="ehr").status_code == 403


def test_activating_an_unknown_form_is_404(client: FlaskClient) -> None:
    response = client.post("/api/forms/5b7e0a52-0000-4000-8000-000000000000/activate", headers={**bearer("clinician"), "If-Match": 'W/"1"'})
    assert response.status_code == 404


def test_an_agreement_made_on_paper_earlier_governs_from_when_it_was_made(proposed: FlaskClient) -> None:
    response = activate(proposed, body={"agreedAt": "2026-11-29T10:00:00+00:00"})
    assert (response.status_code, response.json["governsFrom"]) == (200, "2026-11-29T10:00:00+00:00")
    query = {"patient": NHS, "recipient-role": "father", "information-type": "attendance", "purpose": "TREAT"}
    before = proposed.get(f"/api/decision?{urlencode({**query, 'at': '2026-11-28T10:00:00Z'})}", headers=bearer("ehr")).json
    after = proposed.get(f"/api/decision?{urlencode({**query, 'at': '2026-11-30T10:00:00Z'})}", headers=bearer("ehr")).json
    assert (before["decision"], after["decision"], after["consent"]["version"]) == ("deny", "permit", 3)


@pytest.mark.parametrize(
    ("agreed_at", "status"),
    [
        ("2026-11-26T10:00:00+00:00", 422),  # before the proposal (27 Nov) was made
        ((datetime.now(UTC) + timedelta(days=1)).isoformat(), 422),  # in the future
        ("2026-11-29T10:00:00", 400),  # no time zone
        ("last tuesday", 400),
    ],
)
def test_an_agreement_time_that_cannot_be_is_refused_naming_it_and_nothing_is_stored(
    proposed: FlaskClient, store: Store, agreed_at: str, status: int
) -> None:
    response = activate(proposed, body={"agreedAt": agreed_at})
    assert (response.status_code, response.json["issue"][0]["expression"], store.get(FORM_ID).version) == (status, ["$.agreedAt"], 2)


def test_an_activation_body_with_other_fields_gets_400(proposed: FlaskClient) -> None:
    assert activate(proposed, body={"agreed": "yes"}).status_code == 400
