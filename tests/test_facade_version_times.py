"""Two times per version on the wire: when the choice was made (it governs from then) and when it was stored.

A choice dated in the future is refused, naming the field; one entered long after it was made is accepted and
flagged in the audit; a withdrawal takes effect from its own moment.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import pytest
from flask.testing import FlaskClient

from fhir_adapter.config import ConfigurationError, Settings
from fhir_adapter.form import PROFILES_DIR, parse_form
from fhir_adapter.mappings import codes
from fhir_adapter.mappings.r5 import form_to_r5
from fhir_adapter.server import create_app
from fhir_adapter.store import Store
from tests.support.facade import bearer, example_form, grants

FORM_ID = "0b6c3f4e-2d1a-4c8b-9e7f-1a2b3c4d5e6f"
NHS = "9434765919"
RECORDED = "2026-11-20T10:15:00+00:00"
R4_EXAMPLE = PROFILES_DIR / "examples" / "Consent-casus-example-competent-under-16.json"


def dated(moment: datetime, form: dict | None = None) -> dict:
    """The sample form with its choice (and the competence assessment and explanation with it) made at ``moment``."""
    form = form or example_form()
    form["youngPerson"]["birthDate"] = f"{moment.year - 15}-01-01"  # 15 at the moment, whenever the tests run
    form["recorded"]["date"] = moment.isoformat()
    form["decisionMaker"]["competence"]["assessedOn"] = form["exceptions"]["explainedOn"] = moment.date().isoformat()
    for person in form["people"]:
        person.pop("period", None)
    return form


def version_audits(store: Store) -> list:
    return [r for r in store.audit_log() if r.action == "store.form-version"]


@pytest.fixture
def loaded(client: FlaskClient) -> FlaskClient:
    assert client.post("/api/forms", json=example_form(), headers=bearer("clinician")).status_code == 201
    return client


# --------------------------------------------------------------------------- both times carried


def test_a_stored_form_carries_when_its_choice_was_made_and_when_it_was_stored(loaded: FlaskClient, store: Store) -> None:
    body = loaded.get(f"/api/forms/{FORM_ID}", headers=bearer("ehr")).json
    assert (body["governsFrom"], body["storedAt"]) == (RECORDED, store.get(FORM_ID).stored_at.isoformat())


def test_the_form_history_carries_both_times_of_every_version(loaded: FlaskClient, store: Store) -> None:
    loaded.post(f"/api/forms/{FORM_ID}/withdraw", headers={**bearer("clinician"), "If-Match": 'W/"1"'})
    versions = loaded.get(f"/api/forms/{FORM_ID}/history", headers=bearer("ehr")).json["versions"]
    stored = store.history(FORM_ID)
    assert [(v["governsFrom"], v["storedAt"]) for v in versions] == [(s.form.recorded.date.isoformat(), s.stored_at.isoformat()) for s in stored]


@pytest.mark.parametrize(("base", "made_at"), [("/fhir", "dateTime"), ("/fhir/R4", "dateTime")])
def test_a_fhir_version_carries_the_stored_time_in_meta_and_the_choice_time_in_the_consent(
    loaded: FlaskClient, store: Store, base: str, made_at: str
) -> None:
    consent = loaded.get(f"{base}/Consent/{FORM_ID}/_history/1", headers=bearer("ehr")).json
    assert (consent["meta"]["lastUpdated"], consent[made_at]) == (store.get(FORM_ID).stored_at.isoformat(), RECORDED)


def test_an_r5_version_carries_the_choice_time_in_its_recorded_at_extension(loaded: FlaskClient) -> None:
    consent = loaded.get(f"/fhir/R5/Consent/{FORM_ID}", headers=bearer("ehr")).json
    recorded = [e["valueDateTime"] for e in consent["extension"] if e["url"] == codes.EXT_RECORDED_AT]
    assert recorded == [RECORDED]


def test_fhir_history_entries_carry_the_stored_time_beside_the_choice_time(loaded: FlaskClient, store: Store) -> None:
    entry = loaded.get(f"/fhir/Consent/{FORM_ID}/_history", headers=bearer("ehr")).json["entry"][0]
    assert (entry["response"]["lastModified"], entry["resource"]["dateTime"]) == (store.get(FORM_ID).stored_at.isoformat(), RECORDED)


def test_the_stored_version_audit_keeps_both_times(loaded: FlaskClient, store: Store) -> None:
    (record,) = version_audits(store)
    assert (record.detail["governsFrom"], record.detail["storedAt"]) == (RECORDED, store.get(FORM_ID).stored_at.isoformat())


# --------------------------------------------------------------------------- a choice dated in the future


def test_a_form_recorded_in_the_future_is_refused_naming_the_field_and_not_stored(client: FlaskClient, store: Store) -> None:
    response = client.post("/api/forms", json=dated(datetime.now(UTC) + timedelta(days=2)), headers=bearer("clinician"))
    assert (response.status_code, response.json["issue"][0]["expression"]) == (422, ["$.recorded.date"])
    assert store.versions_for_patient(NHS) == ()


def test_a_new_version_recorded_in_the_future_is_refused_and_the_form_is_unchanged(loaded: FlaskClient, store: Store) -> None:
    response = loaded.put(
        f"/api/forms/{FORM_ID}", json=dated(datetime.now(UTC) + timedelta(hours=1)), headers={**bearer("clinician"), "If-Match": 'W/"1"'}
    )
    assert (response.status_code, response.json["issue"][0]["expression"]) == (422, ["$.recorded.date"])
    assert store.get(FORM_ID).version == 1


def test_a_recording_time_a_minute_ahead_of_the_server_clock_is_accepted(client: FlaskClient) -> None:
    response = client.post("/api/forms", json=dated(datetime.now(UTC) + timedelta(minutes=1)), headers=bearer("clinician"))
    assert response.status_code == 201


def test_an_r4_consent_dated_in_the_future_is_refused_naming_its_date_time(client: FlaskClient) -> None:
    consent = json.loads(R4_EXAMPLE.read_text(encoding="utf-8"))
    consent["dateTime"] = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    response = client.post("/fhir/Consent", json=consent, headers={**bearer("clinician"), "Content-Type": "application/fhir+json"})
    assert (response.status_code, response.json["issue"][0]["expression"]) == (422, ["Consent.dateTime"])


def test_an_r5_consent_dated_in_the_future_is_refused_naming_its_recorded_at_extension(client: FlaskClient) -> None:
    future = parse_form(dated(datetime.now(UTC) + timedelta(days=2)))
    response = client.put(f"/fhir/R5/Consent/{FORM_ID}", json={**form_to_r5(future), "id": FORM_ID}, headers=bearer("clinician"))
    assert response.status_code == 422
    assert response.json["issue"][0]["expression"] == [f"Consent.extension.where(url='{codes.EXT_RECORDED_AT}').valueDateTime"]


# --------------------------------------------------------------------------- a choice entered long after it was made


def test_a_form_entered_long_after_it_was_made_is_accepted_and_flagged_in_the_audit(client: FlaskClient, store: Store) -> None:
    response = client.post("/api/forms", json=dated(datetime.now(UTC) - timedelta(days=91)), headers=bearer("clinician"))
    assert response.status_code == 201
    assert [r.detail.get("flags") for r in version_audits(store)] == [["backdated"]]


def test_a_form_entered_soon_after_it_was_made_is_not_flagged(client: FlaskClient, store: Store) -> None:
    client.post("/api/forms", json=dated(datetime.now(UTC) - timedelta(days=89)), headers=bearer("clinician"))
    assert [r.detail.get("flags") for r in version_audits(store)] == [None]


def test_a_decision_by_a_backdated_version_is_flagged_in_its_audit(client: FlaskClient, store: Store) -> None:
    client.post("/api/forms", json=dated(datetime.now(UTC) - timedelta(days=200)), headers=bearer("clinician"))
    client.get(
        f"/api/decision?{urlencode({'patient': NHS, 'recipient-role': 'mother', 'information-type': 'attendance', 'purpose': 'TREAT'})}",
        headers=bearer("ehr"),
    )
    (record,) = [r for r in store.audit_log() if r.action == "decision"]
    assert record.detail["flags"] == ["backdated"]


def test_how_late_counts_as_backdated_is_a_setting(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path}/late.db") as store:
        client = create_app(Settings(grants=grants(), backdated_days=365), store=store).test_client()
        client.post("/api/forms", json=dated(datetime.now(UTC) - timedelta(days=200)), headers=bearer("clinician"))
        assert [r.detail.get("flags") for r in version_audits(store)] == [None]


def test_the_backdated_setting_is_read_from_the_environment() -> None:
    assert Settings.from_env({"CASUS_BACKDATED_DAYS": "30"}).backdated_days == 30
    assert Settings.from_env({}).backdated_days == 90


@pytest.mark.parametrize("value", ["0", "ninety", "-5"])
def test_a_backdated_setting_that_is_no_positive_whole_number_is_a_configuration_error(value: str) -> None:
    with pytest.raises(ConfigurationError, match="CASUS_BACKDATED_DAYS"):
        Settings.from_env({"CASUS_BACKDATED_DAYS": value})


# --------------------------------------------------------------------------- withdrawal


def test_a_withdrawal_takes_effect_from_its_own_moment_not_back_to_the_consent(loaded: FlaskClient) -> None:
    withdrawn = loaded.post(f"/api/forms/{FORM_ID}/withdraw", headers={**bearer("clinician"), "If-Match": 'W/"1"'}).json
    question = {"patient": NHS, "recipient-role": "mother", "information-type": "attendance", "purpose": "TREAT"}
    before = loaded.get(f"/api/decision?{urlencode({**question, 'at': '2026-11-25T09:00:00Z'})}", headers=bearer("ehr")).json
    after = loaded.get(f"/api/decision?{urlencode(question)}", headers=bearer("ehr")).json
    assert (before["decision"], before["consent"]["version"], after["decision"]) == ("permit", 1, "deny")
    made, stored = datetime.fromisoformat(withdrawn["governsFrom"]), datetime.fromisoformat(withdrawn["storedAt"])
    assert abs(stored - made) < timedelta(seconds=5)


@pytest.mark.parametrize("years_since", [16, 18], ids=["turned 16", "turned 18"])
def test_a_young_person_who_has_since_come_of_age_can_still_withdraw(client: FlaskClient, years_since: int) -> None:
    form = dated(datetime.now(UTC) - timedelta(days=60))
    form["youngPerson"]["birthDate"] = (date.today() - timedelta(days=365 * years_since + 30)).isoformat()
    form["decisionMaker"]["competence"]["assessedOn"] = form["exceptions"]["explainedOn"]
    if years_since == 18:  # 17 when the choice was made, deciding for themselves
        form["decisionMaker"] = {"basis": "aged-16-17"}
    assert client.post("/api/forms", json=form, headers=bearer("clinician")).status_code == 201, form
    response = client.post(f"/api/forms/{FORM_ID}/withdraw", headers={**bearer("clinician"), "If-Match": 'W/"1"'})
    assert (response.status_code, response.json["form"]["status"]) == (200, "withdrawn")
