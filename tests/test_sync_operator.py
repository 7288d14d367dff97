"""The operator's sync commands against a real FHIR server (sekmet-fhir): ``sync status`` and ``sync resolve``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from fhir_adapter.cli import main
from fhir_adapter.fhir_client import FhirClient
from fhir_adapter.form import form_to_json
from fhir_adapter.mappings.r4 import r4_to_form
from fhir_adapter.store import Store
from fhir_adapter.sync import LOCK_NAME, SyncJob
from tests.support.fhir_server import SekmetServer
from tests.test_sync import change_on_server, changed, dad_now_shares, new_form, only_on_server

pytestmark = pytest.mark.integration


@pytest.fixture
def database(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'casus.sqlite3'}"


@pytest.fixture
def store(database: str) -> Iterator[Store]:
    with Store.open(database) as s:
        yield s


@pytest.fixture
def client(fresh_fhir_server: SekmetServer) -> Iterator[FhirClient]:
    with FhirClient(fresh_fhir_server.base_url) as c:
        yield c


def command(database: str, base_url: str, *args: str) -> Result:
    return CliRunner().invoke(
        main,
        ["sync", *args],
        env={"CASUS_FHIR_BASE_URL": base_url, "CASUS_DATABASE_URL": database, "CASUS_FHIR_AUTH": "none", "CASUS_FHIR_TOKEN": None},
    )


def in_conflict(store: Store, client: FhirClient) -> str:
    """A form changed on both sides since it was synced: locally dad now shares, on the server it was withdrawn."""
    form_id = store.create_form(new_form(), actor="clinician").form_id
    SyncJob(store, client).run()
    local = store.update_form(dad_now_shares(store.get(form_id).form), expected_version=1, actor="clinician")
    change_on_server(client, changed(local.form, status="withdrawn"))
    assert SyncJob(store, client).run().exit_code() == 1
    return form_id


def test_status_shows_the_last_run_forms_waiting_the_lease_and_outstanding_conflicts(store: Store, database: str, client: FhirClient) -> None:
    form_id = in_conflict(store, client)
    store.create_form(new_form(), actor="clinician")
    assert store.acquire_lock(LOCK_NAME, "another-host.example:1:1:00000000", 600)

    status = json.loads(command(database, client.base_url, "status", "--format", "json").stdout)

    assert (status["lastRun"]["outcome"], status["formsWaiting"], status["lease"]["holder"]) == ("problems", 2, "another-host.example:1:1:00000000")
    assert [c["formId"] for c in status["conflicts"]] == [form_id]


def test_status_as_text_names_each_outstanding_conflict(store: Store, database: str, client: FhirClient) -> None:
    form_id = in_conflict(store, client)

    text = command(database, client.base_url, "status").stdout

    assert "conflicts:       1" in text and f"  {form_id}: changed on the server" in text


def test_resolve_keeping_local_writes_the_local_version_over_the_server_copy(store: Store, database: str, client: FhirClient) -> None:
    form_id = in_conflict(store, client)

    result = command(database, client.base_url, "resolve", form_id, "--keep", "local")

    assert result.exit_code == 0, result.stderr
    assert form_to_json(r4_to_form(only_on_server(client, form_id))) == form_to_json(store.get(form_id).form)
    assert SyncJob(store, client).run().exit_code() == 0


def test_resolve_keeping_the_server_copy_stores_it_as_a_new_local_version(store: Store, database: str, client: FhirClient) -> None:
    form_id = in_conflict(store, client)

    result = command(database, client.base_url, "resolve", form_id, "--keep", "server")

    assert result.exit_code == 0, result.stderr
    latest = store.get(form_id)
    assert (latest.version, latest.form.status, latest.source) == (3, "withdrawn", "remote")
    assert SyncJob(store, client).run().exit_code() == 0


def test_a_resolution_is_audited_with_the_side_kept(store: Store, database: str, client: FhirClient) -> None:
    form_id = in_conflict(store, client)

    command(database, client.base_url, "resolve", form_id, "--keep", "local")

    record = next(r for r in store.audit_log(actor="operator") if r.action == "sync.resolve")
    assert (record.resource, record.outcome) == (f"form/{form_id}", "kept-local")


def test_resolve_is_refused_when_the_server_copy_is_not_a_valid_casus_consent(store: Store, database: str, client: FhirClient) -> None:
    form_id = store.create_form(new_form(), actor="clinician").form_id
    SyncJob(store, client).run()
    broken = only_on_server(client, form_id)
    del broken["policy"]
    client.update(broken)

    result = command(database, client.base_url, "resolve", form_id, "--keep", "server")

    assert result.exit_code == 2 and "refused, nothing written" in result.stderr
    assert store.get(form_id).version == 1


def test_status_without_a_configured_server_lists_every_server_the_store_has_synced_with(store: Store, database: str, client: FhirClient) -> None:
    store.create_form(new_form(), actor="clinician")
    SyncJob(store, client).run()

    result = CliRunner().invoke(main, ["sync", "status", "--format", "json"], env={"CASUS_DATABASE_URL": database, "CASUS_FHIR_BASE_URL": None})

    assert [s["server"] for s in json.loads(result.stdout)] == [client.base_url]
