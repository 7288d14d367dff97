"""Sync state belongs to one FHIR server: two real servers (sekmet-fhir on loopback) and one database.

A store synced with one server and then pointed at another must push everything to the second, exactly once,
and going back to the first must find it still in step; ``full`` forces the same walk with a known server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from fhir_adapter.fhir_client import FhirClient
from fhir_adapter.mappings.r4 import form_to_r4
from fhir_adapter.store import Store
from fhir_adapter.store.schema import LEGACY_SERVER
from fhir_adapter.store.sync_state import server_key
from fhir_adapter.sync import PULL_CURSOR, PUSH_CURSOR, SyncJob
from tests.support.fhir_server import SekmetServer, running_sekmet
from tests.test_sync import change_on_server, dad_now_shares, new_form, only_on_server, server_versions

pytestmark = pytest.mark.integration


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path / 'casus.sqlite3'}") as s:
        yield s


@pytest.fixture
def staging(fresh_fhir_server: SekmetServer) -> Iterator[FhirClient]:
    with FhirClient(fresh_fhir_server.base_url) as c:
        yield c


@pytest.fixture
def production(tmp_path: Path) -> Iterator[FhirClient]:
    with running_sekmet(tmp_path / "production") as server, FhirClient(server.base_url) as c:
        yield c


def synced_with_staging(store: Store, staging: FhirClient, count: int = 3) -> list[str]:
    form_ids = [store.create_form(new_form(), actor="clinician").form_id for _ in range(count)]
    assert SyncJob(store, staging).run().pushed == count
    return form_ids


def test_switching_to_another_server_pushes_every_form_there(store: Store, staging: FhirClient, production: FhirClient) -> None:
    form_ids = synced_with_staging(store, staging)

    summary = SyncJob(store, production).run()

    assert (summary.pushed, summary.full, summary.exit_code()) == (3, True, 0)
    assert all(only_on_server(production, f) for f in form_ids)


def test_a_form_pulled_from_one_server_is_pushed_to_the_next(store: Store, staging: FhirClient, production: FhirClient) -> None:
    made_on_staging = new_form()
    staging.create(form_to_r4(made_on_staging))
    assert SyncJob(store, staging).run().pulled == 1

    summary = SyncJob(store, production).run()

    assert summary.pushed == 1
    assert only_on_server(production, made_on_staging.form_id)


def test_going_back_to_the_first_server_writes_nothing_there(store: Store, staging: FhirClient, production: FhirClient) -> None:
    synced_with_staging(store, staging)
    SyncJob(store, production).run()
    before = server_versions(staging)

    summary = SyncJob(store, staging).run()

    assert (summary.pushed, summary.pulled, summary.exit_code()) == (0, 0, 0)
    assert server_versions(staging) == before


def test_a_change_made_while_on_another_server_reaches_the_first_on_return(store: Store, staging: FhirClient, production: FhirClient) -> None:
    form_id = synced_with_staging(store, staging, 1)[0]
    SyncJob(store, production).run()
    store.update_form(dad_now_shares(store.get(form_id).form), expected_version=1, actor="clinician")
    assert SyncJob(store, production).run().pushed == 1

    summary = SyncJob(store, staging).run()

    assert summary.pushed == 1
    assert only_on_server(staging, form_id)["meta"]["versionId"] == "2"


def test_each_server_keeps_its_own_push_cursor(store: Store, staging: FhirClient, production: FhirClient) -> None:
    synced_with_staging(store, staging)

    assert store.get_cursor(server_key(staging.base_url), PUSH_CURSOR) is not None
    assert store.get_cursor(server_key(production.base_url), PUSH_CURSOR) is None


def test_a_full_sync_with_a_server_in_step_writes_nothing_and_counts_every_form_in_step(store: Store, staging: FhirClient) -> None:
    synced_with_staging(store, staging)
    before = server_versions(staging)

    summary = SyncJob(store, staging).run(full=True)

    assert (summary.full, summary.pushed, summary.pulled, summary.in_step, summary.exit_code()) == (True, 0, 0, 3, 0)
    assert server_versions(staging) == before


def test_a_full_sync_pulls_a_server_change_the_pull_cursor_had_passed(store: Store, staging: FhirClient) -> None:
    form_id = synced_with_staging(store, staging, 1)[0]
    change_on_server(staging, dad_now_shares(store.get(form_id).form))
    store.set_cursor(server_key(staging.base_url), PULL_CURSOR, '{"lastUpdated":"2999-01-01T00:00:00Z","seen":[]}')
    assert SyncJob(store, staging).run().pulled == 0

    summary = SyncJob(store, staging).run(full=True)

    assert (summary.pulled, store.get(form_id).version, summary.exit_code()) == (1, 2, 0)


def test_after_the_upgrade_a_server_change_made_since_the_last_sync_is_pulled_not_reported_as_a_conflict(store: Store, staging: FhirClient) -> None:
    form_id = synced_with_staging(store, staging, 1)[0]
    as_before_the_upgrade(store)
    change_on_server(staging, dad_now_shares(store.get(form_id).form))

    summary = SyncJob(store, staging).run()

    assert (summary.conflicts, summary.pulled, summary.pushed, store.get(form_id).version) == ([], 1, 0, 2)


def test_after_the_upgrade_a_server_that_never_held_the_forms_still_receives_them(store: Store, staging: FhirClient, production: FhirClient) -> None:
    form_ids = synced_with_staging(store, staging)
    as_before_the_upgrade(store)

    summary = SyncJob(store, production).run()

    assert summary.pushed == 3
    assert all(only_on_server(production, f) for f in form_ids)


def as_before_the_upgrade(store: Store) -> None:
    """Sync state as an adapter that kept it for one unnamed server left it (what migration 5 carries over)."""
    with store.db.write() as conn:
        conn.execute(text("UPDATE sync_records SET server = :legacy"), {"legacy": LEGACY_SERVER})
        conn.execute(text("UPDATE sync_cursors SET server = :legacy"), {"legacy": LEGACY_SERVER})
