"""The audit log keeps one index besides its key (subject): every decision writes a row, each index costs its commit."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, inspect

from fhir_adapter.store import Store, schema
from fhir_adapter.store.engine import Database, make_engine


def audit_indexes(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return {ix["column_names"][0] for ix in inspect(engine).get_indexes("audit_log")}
    finally:
        engine.dispose()


def test_a_new_store_indexes_the_audit_log_by_subject_only(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    Store.open(url).close()
    assert audit_indexes(url) == {"subject"}


def test_a_store_from_before_the_change_loses_the_at_and_actor_indexes_and_keeps_its_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    db = Database(make_engine(url))
    with db.write() as conn:
        schema.migrate(conn, schema.MIGRATIONS[:4])
    db.close()
    assert audit_indexes(url) == {"at", "actor", "subject"}
    with Store.open(url) as store:
        store.audit(actor="ehr", action="decision", resource=None, outcome="permit")
        assert [r.actor for r in store.audit_log(actor="ehr")] == ["ehr"]
    assert audit_indexes(url) == {"subject"}
