"""The sync job against a real FHIR R4 server (sekmet-fhir) started by the suite on loopback.

Pull reads every CASUS Consent on the server, so each test has a server of its own (``fresh_fhir_server``,
under a second to start) and a fresh store; the push+pull tests also run on PostgreSQL.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fhir_adapter import sync
from fhir_adapter.fhir_client import FhirClient
from fhir_adapter.form import ConsentForm, form_to_json, parse_form
from fhir_adapter.mappings import MAPPING_VERSION, codes
from fhir_adapter.mappings.r4 import form_to_r4, r4_to_form, written_mapping_version
from fhir_adapter.store import Store
from fhir_adapter.store.sync_state import server_key
from fhir_adapter.sync import PULL_CURSOR, PUSH_CURSOR, SyncJob, SyncLocked
from tests.support.facade import example_form
from tests.support.fhir_server import SekmetServer
from tests.support.legacy_shape import legacy_r4

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
KILL_WAIT_S = 60.0

SAMPLE: dict[str, Any] = example_form()  # the shipped example form, profiles/examples/form-competent-under-16.json


# --------------------------------------------------------------------------- helpers


def new_form(**changes: Any) -> ConsentForm:
    """The sample form with a fresh formId and any top-level changes."""
    document = copy.deepcopy(SAMPLE)
    document.update(changes)
    document["formId"] = str(uuid.uuid4())
    return parse_form(document)


def changed(form: ConsentForm, **changes: Any) -> ConsentForm:
    """The same form (same formId) with top-level changes, e.g. status='withdrawn'."""
    document = form_to_json(form)
    document.update(changes)
    return parse_form(document)


def dad_now_shares(form: ConsentForm) -> ConsentForm:
    """A different, valid version of the form: the young person now lets their father see attendance."""
    document = form_to_json(form)
    for person in document["people"]:
        if person["id"] == "dad":
            person.update({"sharing": "share", "informationTypes": ["attendance"]})
    return parse_form(document)


def on_server(client: FhirClient, form_id: str) -> list[dict[str, Any]]:
    return list(client.search("Consent", {"identifier": f"{codes.ID_CONSENT_FORM}|{form_id}"}))


def only_on_server(client: FhirClient, form_id: str) -> dict[str, Any]:
    found = on_server(client, form_id)
    assert len(found) == 1, f"form {form_id} is on the server {len(found)} times"
    return found[0]


def server_versions(client: FhirClient) -> dict[str, str]:
    """Every CASUS Consent's server id -> versionId."""
    return {r["id"]: r["meta"]["versionId"] for r in client.search("Consent", {"identifier": f"{codes.ID_CONSENT_FORM}|", "_count": "100"})}


def change_on_server(client: FhirClient, form: ConsentForm) -> dict[str, Any]:
    """Write ``form`` over the server's Consent for its formId, as another system would (version-checked)."""
    current = only_on_server(client, form.form_id)
    resource = form_to_r4(form)
    resource["id"] = current["id"]
    result = client.update(resource, if_match=current["meta"]["versionId"])
    assert result.resource is not None
    return result.resource


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh store on each supported engine (PostgreSQL is skipped off CI when no server binaries exist)."""
    url = f"sqlite:///{tmp_path / 'casus.sqlite3'}" if request.param == "sqlite" else request.getfixturevalue("postgres_database_url")
    with Store.open(url) as store:
        yield store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path / 'casus.sqlite3'}") as s:
        yield s


@pytest.fixture
def client(fresh_fhir_server: SekmetServer) -> Iterator[FhirClient]:
    with FhirClient(fresh_fhir_server.base_url) as c:
        yield c


def job(store: Store, client: FhirClient, **options: Any) -> SyncJob:
    return SyncJob(store, client, **options)


# --------------------------------------------------------------------------- push and pull


def test_push_writes_the_latest_version_of_each_changed_form_once(any_store: Store, client: FhirClient) -> None:
    forms = [any_store.create_form(new_form(), actor="clinician").form for _ in range(3)]
    any_store.update_form(dad_now_shares(forms[0]), expected_version=1, actor="clinician")

    summary = job(any_store, client).run()

    assert (summary.pushed, summary.conflicts, summary.rejected) == (3, [], [])
    assert r4_to_form(only_on_server(client, forms[0].form_id)) == any_store.get(forms[0].form_id).form
    assert all(r4_to_form(only_on_server(client, f.form_id)) == f for f in forms[1:])


def test_push_saves_each_forms_sync_record_with_the_servers_id_and_version(any_store: Store, client: FhirClient) -> None:
    form = any_store.create_form(new_form(), actor="clinician").form

    job(any_store, client).run()

    remote = only_on_server(client, form.form_id)
    record = any_store.sync_record(server_key(client.base_url), form.form_id)
    assert record is not None
    assert (record.pushed_version, record.remote_id, record.remote_version_id) == (1, remote["id"], remote["meta"]["versionId"])


def test_pull_imports_a_consent_created_on_the_server_as_a_new_remote_sourced_form(any_store: Store, client: FhirClient) -> None:
    form = new_form()
    client.conditional_update(form_to_r4(form), f"identifier={codes.ID_CONSENT_FORM}|{form.form_id}")

    summary = job(any_store, client).run()

    stored = any_store.get(form.form_id)
    assert (summary.pulled, summary.pushed) == (1, 0)
    assert (stored.form, stored.source, stored.actor, stored.version) == (form, "remote", "sync", 1)


def test_a_pulled_form_is_not_pushed_back(store: Store, client: FhirClient) -> None:
    form = new_form()
    client.conditional_update(form_to_r4(form), f"identifier={codes.ID_CONSENT_FORM}|{form.form_id}")
    job(store, client).run()
    before = server_versions(client)

    summary = job(store, client).run()

    assert summary.pushed == 0
    assert server_versions(client) == before


def test_a_change_made_on_the_server_is_pulled_as_a_new_local_version(store: Store, client: FhirClient) -> None:
    form = store.create_form(new_form(), actor="clinician").form
    job(store, client).run()
    change_on_server(client, dad_now_shares(form))

    summary = job(store, client).run()

    latest = store.get(form.form_id)
    assert (summary.pulled, summary.conflicts) == (1, [])
    assert (latest.version, latest.source, latest.form) == (2, "remote", dad_now_shares(form))


def test_a_local_change_after_a_pull_is_pushed_over_the_pulled_version(store: Store, client: FhirClient) -> None:
    form = store.create_form(new_form(), actor="clinician").form
    job(store, client).run()
    change_on_server(client, dad_now_shares(form))
    job(store, client).run()
    withdrawn = changed(dad_now_shares(form), status="withdrawn")
    store.update_form(withdrawn, expected_version=2, actor="clinician")

    summary = job(store, client).run()

    assert (summary.pushed, summary.conflicts) == (1, [])
    assert r4_to_form(only_on_server(client, form.form_id)) == withdrawn


# --------------------------------------------------------------------------- conflicts and rejections


def test_a_change_on_both_sides_is_a_conflict_that_leaves_both_sides_untouched(store: Store, client: FhirClient) -> None:
    form = store.create_form(new_form(), actor="clinician").form
    job(store, client).run()
    remote = change_on_server(client, dad_now_shares(form))
    local = store.update_form(changed(form, status="withdrawn"), expected_version=1, actor="clinician")

    summary = job(store, client).run()

    assert [c["formId"] for c in summary.conflicts] == [form.form_id]
    assert summary.exit_code() == 1
    assert only_on_server(client, form.form_id)["meta"]["versionId"] == remote["meta"]["versionId"]
    assert store.get(form.form_id) == local


def test_a_conflict_is_reported_again_on_the_next_run_until_resolved(store: Store, client: FhirClient) -> None:
    form = store.create_form(new_form(), actor="clinician").form
    job(store, client).run()
    change_on_server(client, dad_now_shares(form))
    store.update_form(changed(form, status="withdrawn"), expected_version=1, actor="clinician")
    job(store, client).run()

    again = job(store, client).run()

    assert [c["formId"] for c in again.conflicts] == [form.form_id]


def test_a_conflict_is_resolved_once_both_sides_agree(store: Store, client: FhirClient) -> None:
    form = store.create_form(new_form(), actor="clinician").form
    job(store, client).run()
    change_on_server(client, dad_now_shares(form))
    store.update_form(changed(form, status="withdrawn"), expected_version=1, actor="clinician")
    job(store, client).run()
    store.update_form(dad_now_shares(form), expected_version=2, actor="clinician")  # a clinician accepts the server's version

    summary = job(store, client).run()

    assert (summary.conflicts, summary.pushed, summary.exit_code()) == ([], 0, 0)


def test_a_conflict_is_audited_by_form_id(store: Store, client: FhirClient) -> None:
    form = store.create_form(new_form(), actor="clinician").form
    job(store, client).run()
    change_on_server(client, dad_now_shares(form))
    store.update_form(changed(form, status="withdrawn"), expected_version=1, actor="clinician")

    job(store, client).run()

    conflicts = [a for a in store.audit_log(actor="sync") if a.action == "sync.conflict"]
    assert [a.resource for a in conflicts] == [f"form/{form.form_id}"]


def test_a_server_consent_that_breaks_the_casus_profile_is_rejected_with_an_outcome_and_not_imported(store: Store, client: FhirClient) -> None:
    form = new_form()
    broken = form_to_r4(form)
    del broken["policy"]
    created = client.create(broken)

    summary = job(store, client).run()

    assert summary.exit_code() == 1
    assert [(r["remoteId"], r["formId"]) for r in summary.rejected] == [(created.id, form.form_id)]
    outcome = summary.rejected[0]["outcome"]
    assert outcome["resourceType"] == "OperationOutcome"
    assert any(i["severity"] == "error" for i in outcome["issue"])
    assert store.search(limit=0)[1] == 0


def test_a_rejected_consent_is_reported_again_on_every_run_while_the_server_keeps_it(store: Store, client: FhirClient) -> None:
    form = new_form()
    broken = form_to_r4(form)
    del broken["policy"]
    created = client.create(broken)
    job(store, client).run()

    again = job(store, client).run()

    assert ([(r["remoteId"], r["formId"]) for r in again.rejected], again.exit_code()) == ([(created.id, form.form_id)], 1)


def test_a_rejection_ends_once_the_server_copy_is_corrected(store: Store, client: FhirClient) -> None:
    form = new_form()
    broken = form_to_r4(form)
    del broken["policy"]
    created = client.create(broken)
    job(store, client).run()
    fixed = form_to_r4(form)
    fixed["id"] = created.id
    client.update(fixed)

    summary = job(store, client).run()

    assert (summary.rejected, summary.pulled, summary.exit_code()) == ([], 1, 0)


# --------------------------------------------------------------------------- paging, idempotence, races


def test_push_sends_transactions_of_the_configured_batch_size(store: Store, client: FhirClient) -> None:
    for _ in range(7):
        store.create_form(new_form(), actor="clinician")
    sent: list[int] = []
    original = client.transaction

    def counting(bundle: dict[str, Any]) -> dict[str, Any]:
        sent.append(len(bundle["entry"]))
        return original(bundle)

    client.transaction = counting  # type: ignore[method-assign]
    summary = job(store, client, batch_size=3).run(pull=False)

    assert (summary.pushed, sent) == (7, [3, 3, 1])


def test_a_second_run_pushes_and_pulls_nothing_and_makes_no_new_server_versions(any_store: Store, client: FhirClient) -> None:
    for _ in range(3):
        any_store.create_form(new_form(), actor="clinician")
    remote_only = new_form()
    client.conditional_update(form_to_r4(remote_only), f"identifier={codes.ID_CONSENT_FORM}|{remote_only.form_id}")
    first = job(any_store, client).run()
    before = server_versions(client)

    second = job(any_store, client).run()

    assert (first.pushed, first.pulled) == (3, 1)
    assert (second.pushed, second.pulled, second.exit_code()) == (0, 0, 0)
    assert server_versions(client) == before


def test_a_remote_change_racing_a_push_is_refused_by_the_server_and_reported_as_a_conflict(store: Store, client: FhirClient) -> None:
    form = store.create_form(new_form(), actor="clinician").form
    job(store, client).run()
    store.update_form(changed(form, status="withdrawn"), expected_version=1, actor="clinician")
    original = client.transaction
    raced: list[dict[str, Any]] = []

    def another_system_writes_first(bundle: dict[str, Any]) -> dict[str, Any]:
        if not raced:  # after the batch was classified, before it is sent: the ifMatch version is now stale
            raced.append(change_on_server(client, dad_now_shares(form)))
        return original(bundle)

    client.transaction = another_system_writes_first  # type: ignore[method-assign]
    summary = job(store, client).run(pull=False)

    assert [c["formId"] for c in summary.conflicts] == [form.form_id]
    assert summary.pushed == 0
    remote = only_on_server(client, form.form_id)
    assert remote["meta"]["versionId"] == raced[0]["meta"]["versionId"]
    assert r4_to_form(remote) == dad_now_shares(form)


def test_a_conflicted_form_holds_the_push_cursor_so_the_next_run_looks_at_it_again(store: Store, client: FhirClient) -> None:
    form = store.create_form(new_form(), actor="clinician").form
    job(store, client).run()
    change_on_server(client, dad_now_shares(form))
    store.update_form(changed(form, status="withdrawn"), expected_version=1, actor="clinician")
    later = store.create_form(new_form(), actor="clinician")

    summary = job(store, client).run(pull=False)

    assert summary.pushed == 1
    assert only_on_server(client, later.form.form_id)
    assert int(store.get_cursor(server_key(client.base_url), PUSH_CURSOR) or 0) < max(seq for seq, _ in store.versions_changed_since(0, 100))


# --------------------------------------------------------------------------- dry run and the lease


def test_a_dry_run_reports_what_would_happen_and_writes_nothing_anywhere(store: Store, client: FhirClient) -> None:
    local = store.create_form(new_form(), actor="clinician").form
    remote = new_form()
    client.conditional_update(form_to_r4(remote), f"identifier={codes.ID_CONSENT_FORM}|{remote.form_id}")
    before = server_versions(client)

    summary = job(store, client).run(dry_run=True)

    assert (summary.pushed, summary.pulled, summary.dry_run) == (1, 1, True)
    assert server_versions(client) == before
    assert on_server(client, local.form_id) == []
    assert store.search(limit=0)[1] == 1
    server = server_key(client.base_url)
    assert (store.get_cursor(server, PUSH_CURSOR), store.get_cursor(server, PULL_CURSOR), store.sync_record(server, local.form_id)) == (
        None,
        None,
        None,
    )


def test_a_run_refuses_to_start_while_another_holds_the_lease(store: Store, client: FhirClient) -> None:
    store.create_form(new_form(), actor="clinician")
    assert store.acquire_lock("sync", "another-run", 60)

    with pytest.raises(SyncLocked):
        job(store, client).run()
    assert server_versions(client) == {}


def test_the_lease_is_released_when_a_run_ends(store: Store, client: FhirClient) -> None:
    job(store, client, owner="first").run()

    assert store.acquire_lock("sync", "second", 60)


# --------------------------------------------------------------------------- a run killed part-way


def _sync_process(env: dict[str, str], *extra: str, slow: bool = False) -> subprocess.Popen[bytes]:
    """``fhir-adapter sync`` in a child process; ``slow`` pauses after each transaction so the test can kill it mid-run."""
    if slow:
        code = (
            "import sys, time\n"
            "from fhir_adapter import fhir_client\n"
            "send = fhir_client.FhirClient.transaction\n"
            "def slow(self, bundle):\n"
            "    result = send(self, bundle)\n"
            "    time.sleep(0.5)\n"
            "    return result\n"
            "fhir_client.FhirClient.transaction = slow\n"
            "from fhir_adapter.cli import main\n"
            "sys.argv = ['fhir-adapter', *sys.argv[1:]]\n"
            "main()\n"
        )
        command = [sys.executable, "-c", code, "sync", *extra]
    else:
        command = [sys.executable, "-m", "fhir_adapter", "sync", *extra]
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_a_run_killed_after_its_first_batch_resumes_to_every_form_exactly_once(
    tmp_path: Path, fresh_fhir_server: SekmetServer, client: FhirClient
) -> None:
    database = f"sqlite:///{tmp_path / 'casus.sqlite3'}"
    with Store.open(database) as store:
        form_ids = [store.create_form(new_form(), actor="clinician").form.form_id for _ in range(60)]
    env = {**os.environ, "CASUS_FHIR_BASE_URL": fresh_fhir_server.base_url, "CASUS_DATABASE_URL": database, "CASUS_FHIR_AUTH": "none"}
    lock_ttl = "2"

    killed = _sync_process(env, "--batch-size", "5", "--lock-ttl", lock_ttl, slow=True)
    try:
        landed = _wait_for(lambda: len(server_versions(client)) >= 5, KILL_WAIT_S)
        os.kill(killed.pid, signal.SIGKILL)
    finally:
        killed.wait(timeout=30)
    assert landed, "the first batch never reached the server"
    assert killed.returncode == -signal.SIGKILL
    assert 5 <= len(server_versions(client)) < 60, "the run finished before it could be killed"

    time.sleep(float(lock_ttl) + 0.5)  # the killed run's lease expires; nothing else releases it
    resumed = _sync_process(env, "--batch-size", "5")
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err.decode()

    assert all(len(on_server(client, form_id)) == 1 for form_id in form_ids)
    before = server_versions(client)
    with Store.open(database) as store:
        assert store.search(limit=0)[1] == 60
        assert all(store.get(form_id).version == 1 for form_id in form_ids)
    third = _sync_process(env, "--batch-size", "5")
    out, err = third.communicate(timeout=120)
    assert third.returncode == 0, err.decode()
    assert b'"pushed": 0' in out and b'"pulled": 0' in out
    assert server_versions(client) == before


# --------------------------------------------------------------------------- Consents an older mapping wrote


def push_in_the_version_1_shape(store: Store, client: FhirClient, monkeypatch: pytest.MonkeyPatch, count: int = 2) -> list[ConsentForm]:
    """Forms pushed as the version 1 writer pushed them, their records saying mapping version 1."""
    monkeypatch.setattr(sync, "form_to_r4", legacy_r4)
    monkeypatch.setattr(sync, "MAPPING_VERSION", 1)
    forms = [store.create_form(new_form(), actor="clinician").form for _ in range(count)]
    assert job(store, client).run().pushed == count
    monkeypatch.undo()
    assert all(written_mapping_version(only_on_server(client, f.form_id)) == 1 for f in forms)
    return forms


@pytest.mark.parametrize("recorded", ["as version 1", "as NULL (rows from before versions were kept)"])
def test_consents_an_older_mapping_wrote_are_re_pushed_once_in_the_new_shape(
    any_store: Store, client: FhirClient, monkeypatch: pytest.MonkeyPatch, recorded: str
) -> None:
    forms = push_in_the_version_1_shape(any_store, client, monkeypatch)
    if recorded.startswith("as NULL"):
        for f in forms:
            record = any_store.sync_record(server_key(client.base_url), f.form_id)
            assert record is not None
            any_store.save_sync_record(replace(record, mapping_version=None))
    before = {f.form_id: only_on_server(client, f.form_id) for f in forms}

    second = job(any_store, client).run()

    assert (second.pushed, second.pulled, second.conflicts, second.rejected) == (len(forms), 0, [], [])
    for f in forms:
        now = only_on_server(client, f.form_id)
        assert now["id"] == before[f.form_id]["id"]
        assert int(now["meta"]["versionId"]) == int(before[f.form_id]["meta"]["versionId"]) + 1
        assert "type" not in now["provision"] and now["policyRule"]["coding"][0]["code"] == "OPTIN"
        assert r4_to_form(now) == f
        record = any_store.sync_record(server_key(client.base_url), f.form_id)
        assert record is not None and (record.mapping_version, record.remote_version_id) == (MAPPING_VERSION, now["meta"]["versionId"])
    versions = server_versions(client)

    third = job(any_store, client).run()

    assert (third.pushed, third.pulled, third.conflicts) == (0, 0, [])
    assert server_versions(client) == versions


def test_an_older_mapping_consent_changed_on_the_server_is_pulled_not_pushed_over(
    store: Store, client: FhirClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    [form] = push_in_the_version_1_shape(store, client, monkeypatch, count=1)
    change_on_server(client, dad_now_shares(form))

    summary = job(store, client).run()

    assert (summary.pushed, summary.pulled, summary.conflicts) == (0, 1, [])
    assert store.get(form.form_id).form == dad_now_shares(form)
    record = store.sync_record(server_key(client.base_url), form.form_id)
    assert record is not None and record.mapping_version == MAPPING_VERSION


def test_a_version_1_consent_written_on_the_server_is_pulled_then_rewritten_in_the_new_shape(store: Store, client: FhirClient) -> None:
    form = new_form()
    client.conditional_update(legacy_r4(form), f"identifier={codes.ID_CONSENT_FORM}|{form.form_id}")

    first = job(store, client).run()
    second = job(store, client).run()
    third = job(store, client).run()

    assert (first.pulled, first.rejected, store.get(form.form_id).form) == (1, [], form)
    assert (second.pushed, second.conflicts) == (1, [])
    assert written_mapping_version(only_on_server(client, form.form_id)) == MAPPING_VERSION
    assert (third.pushed, third.pulled) == (0, 0)
