"""Audit rows from many threads are committed on both engines, alone or in batches, without changing the pool's connections."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from fhir_adapter.form import ConsentForm, parse_form
from fhir_adapter.store import Store, audit, schema
from fhir_adapter.store.audit import AuditWriteFailed, _Row, audit_row
from tests.support.facade import example_form


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_database_url")
    with Store.open(url) as opened:
        yield opened


def test_audit_writes_from_many_threads_are_all_committed(store: Store) -> None:
    def write(n: int) -> None:
        for i in range(40):
            store.audit(actor=f"thread-{n}", action="decision", resource=None, outcome="permit", detail={"i": i})

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with store.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(schema.audit_log)).scalar_one() == 320


SERVER = "https://fhir.example.org/R4"


def test_a_failed_write_transaction_still_rolls_back_after_audit_writes(store: Store) -> None:
    for i in range(5):
        store.audit(actor="ehr", action="decision", resource=None, outcome="permit", detail={"i": i})
    with pytest.raises(RuntimeError), store.db.write() as conn:
        conn.execute(insert(schema.sync_cursors).values(server=SERVER, name="x", value="1", updated_at=store.db.now()))
        raise RuntimeError("fails after its insert")
    assert store.get_cursor(SERVER, "x") is None


def example_form_version() -> ConsentForm:
    return parse_form(example_form())


def decision_records(store: Store) -> list[str]:
    return [r.outcome for r in store.audit_log(action="decision")]


def current_marker(store: Store) -> int:
    return store.db.change_marker()


def test_a_record_on_condition_is_written_while_no_form_version_has_been_stored_since(store: Store) -> None:
    marker = current_marker(store)
    assert store.audit(actor="ehr", action="decision", resource=None, outcome="permit", unless_changed_since=marker) is True
    assert decision_records(store) == ["permit"]


def test_a_record_on_condition_is_not_written_once_a_form_version_has_been_stored_since(store: Store) -> None:
    marker = current_marker(store)
    store.create_form(example_form_version(), actor="clinician")
    assert store.audit(actor="ehr", action="decision", resource=None, outcome="permit", unless_changed_since=marker) is False
    assert decision_records(store) == []


def test_a_batch_writes_the_rows_whose_condition_holds_and_declines_the_others(store: Store) -> None:
    stale = current_marker(store)
    store.create_form(example_form_version(), actor="clinician")
    fresh = current_marker(store)
    trail = store.audit_trail
    rows = [
        _Row(audit_row(store.db.now(), actor="ehr", action="decision", resource=None, outcome=outcome, detail=None, subject=None), marker)
        for outcome, marker in (("stale", stale), ("fresh", fresh), ("always", None))
    ]
    assert trail._write_batch(rows) == [False, True, True]
    assert sorted(decision_records(store)) == ["always", "fresh"]


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    path = tmp_path / "shared.db"
    Store.open(f"sqlite:///{path}").close()
    return path


def holding_the_write_lock(path: Path) -> sqlite3.Connection:
    """Another process's write transaction on the same file."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    return other


def test_an_audit_row_waits_for_another_writer_to_release_the_sqlite_write_lock(sqlite_path: Path) -> None:
    with Store.open(f"sqlite:///{sqlite_path}") as store:
        other = holding_the_write_lock(sqlite_path)
        release = threading.Timer(0.3, other.execute, args=("COMMIT",))
        release.start()
        started = time.monotonic()
        assert store.audit(actor="ehr", action="decision", resource=None, outcome="permit") is True
        assert time.monotonic() - started >= 0.25
        release.join()
        other.close()
        assert decision_records(store) == ["permit"]


def test_an_audit_row_that_never_gets_the_sqlite_write_lock_fails_after_the_busy_timeout(sqlite_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit, "SQLITE_BUSY_TIMEOUT_SECONDS", 0.2)
    with Store.open(f"sqlite:///{sqlite_path}") as store:
        other = holding_the_write_lock(sqlite_path)
        try:
            with pytest.raises(AuditWriteFailed):
                store.audit(actor="ehr", action="decision", resource=None, outcome="permit")
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert store.audit(actor="ehr", action="decision", resource=None, outcome="deny") is True  # and works again once free
        assert decision_records(store) == ["deny"]
