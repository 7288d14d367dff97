"""Audit rows from many threads are committed on both engines, alone or in batches, without changing the pool's connections."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from fhir_adapter.store import Store, schema


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
