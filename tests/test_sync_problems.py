"""Problems repeat until they are solved, and Consents deleted on the server are noticed (real sekmet-fhir server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fhir_adapter.fhir_client import FhirClient
from fhir_adapter.store import Store
from fhir_adapter.store.sync_state import server_key
from fhir_adapter.sync import SyncJob
from tests.support.fhir_server import SekmetServer
from tests.test_sync import change_on_server, changed, dad_now_shares, new_form, on_server, only_on_server

pytestmark = pytest.mark.integration


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path / 'casus.sqlite3'}") as s:
        yield s


@pytest.fixture
def client(fresh_fhir_server: SekmetServer) -> Iterator[FhirClient]:
    with FhirClient(fresh_fhir_server.base_url) as c:
        yield c


def synced(store: Store, client: FhirClient, **changes: str) -> str:
    form_id = store.create_form(new_form(**changes), actor="clinician").form_id
    assert SyncJob(store, client).run().exit_code() == 0
    return form_id


def test_a_consent_deleted_on_the_server_is_reported_and_re_pushed_while_the_form_is_in_force(store: Store, client: FhirClient) -> None:
    form_id = synced(store, client)
    client.delete("Consent", only_on_server(client, form_id)["id"])

    summary = SyncJob(store, client).run()

    assert [(d["formId"], d["rePushed"]) for d in summary.deleted_on_server] == [(form_id, True)]
    assert (summary.pushed, summary.exit_code()) == (1, 1)
    assert only_on_server(client, form_id)


def test_a_consent_deleted_on_the_server_for_a_withdrawn_form_is_reported_once_and_not_re_pushed(store: Store, client: FhirClient) -> None:
    form_id = synced(store, client)
    store.update_form(changed(store.get(form_id).form, status="withdrawn"), expected_version=1, actor="clinician")
    SyncJob(store, client).run()
    client.delete("Consent", only_on_server(client, form_id)["id"])

    first, second = SyncJob(store, client).run(), SyncJob(store, client).run()

    assert [(d["formId"], d["rePushed"]) for d in first.deleted_on_server] == [(form_id, False)]
    assert (second.deleted_on_server, second.exit_code(), on_server(client, form_id)) == ([], 0, [])


def test_an_outstanding_conflict_is_kept_in_the_store_until_both_sides_agree(store: Store, client: FhirClient) -> None:
    form_id = synced(store, client)
    local = store.update_form(dad_now_shares(store.get(form_id).form), expected_version=1, actor="clinician")
    change_on_server(client, changed(local.form, status="withdrawn"))
    SyncJob(store, client).run()
    server = server_key(client.base_url)
    assert [p.key for p in store.sync_state.problems(server, kind="conflict")] == [form_id]

    change_on_server(client, local.form)
    summary = SyncJob(store, client).run()

    assert (summary.conflicts, store.sync_state.problems(server)) == ([], [])


def test_an_outstanding_problem_carries_when_it_was_first_seen(store: Store, client: FhirClient) -> None:
    form_id = synced(store, client)
    local = store.update_form(dad_now_shares(store.get(form_id).form), expected_version=1, actor="clinician")
    change_on_server(client, changed(local.form, status="withdrawn"))
    first = SyncJob(store, client).run()

    second = SyncJob(store, client).run()

    assert second.conflicts[0]["since"] == first.conflicts[0]["since"]
