"""The audit journal of the embedded store: every acknowledged audit row reaches audit_log exactly once."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fhir_adapter import audit_journal
from fhir_adapter.audit_journal import AuditJournal, JournalWriteFailed, encode
from fhir_adapter.audit_writer import AuditWriteFailed
from fhir_adapter.store import Store

NHS = "9434765919"


def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/casus.db"


def journal_dir(tmp_path: Path) -> Path:
    return tmp_path / "casus.db-audit-journal"


def segments(tmp_path: Path) -> list[Path]:
    return sorted(journal_dir(tmp_path).glob("*.jsonl"))


def audit_n(store: Store, n: int, action: str = "decision") -> None:
    for i in range(n):
        store.audit(actor="ehr", action=action, resource=f"Consent/f/_history/{i + 1}", outcome="permit", subject=NHS,
                    detail={"purpose": "TREAT", "n": i})


def rows_in_table(tmp_path: Path, action: str = "decision") -> list[int]:
    """The ``n`` of every row the database holds, read by a store of its own (as an admin process would)."""
    with Store.open(url(tmp_path)) as reader:
        return sorted(r.detail["n"] for r in reader.audit_log(limit=1000) if r.action == action)


def test_an_audit_record_is_visible_to_its_own_process_at_once(tmp_path: Path) -> None:
    with Store.open(url(tmp_path)) as store:
        audit_n(store, 3)
        assert [r.detail["n"] for r in store.audit_log()] == [2, 1, 0]


def test_closing_the_store_drains_the_journal_and_leaves_no_segment(tmp_path: Path) -> None:
    with Store.open(url(tmp_path)) as store:
        audit_n(store, 5)
    assert segments(tmp_path) == []
    assert rows_in_table(tmp_path) == [0, 1, 2, 3, 4]


def test_the_background_drain_makes_records_visible_to_other_processes(tmp_path: Path) -> None:
    with Store.open(url(tmp_path)) as store:
        audit_n(store, 2)
        deadline = time.monotonic() + 10  # the drain runs every 0.25 s
        while rows_in_table(tmp_path) != [0, 1] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rows_in_table(tmp_path) == [0, 1]


AUDIT_THEN_WAIT = """
import sys, time
from fhir_adapter.store import Store
store = Store.open(sys.argv[1])
store._audit_journal()._start = lambda: None  # nothing drains: every row stays in the journal
for i in range(int(sys.argv[2])):
    store.audit(actor="ehr", action="decision", resource=None, outcome="permit", subject="9434765919", detail={"n": i})
print("ready", flush=True)
time.sleep(60)  # killed here, without closing anything
"""


def test_rows_of_a_killed_process_are_replayed_exactly_once_by_the_next_store(tmp_path: Path) -> None:
    Store.open(url(tmp_path)).close()
    child = subprocess.Popen([sys.executable, "-c", AUDIT_THEN_WAIT, url(tmp_path), "7"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        assert rows_in_table(tmp_path) == []  # the live child's segment is locked: nobody else touches it
    finally:
        child.kill()
        child.wait(10)
    assert rows_in_table(tmp_path) == [0, 1, 2, 3, 4, 5, 6]
    assert segments(tmp_path) == []
    assert rows_in_table(tmp_path) == [0, 1, 2, 3, 4, 5, 6]


def test_a_segment_drained_but_not_deleted_before_a_crash_is_not_replayed(tmp_path: Path) -> None:
    with Store.open(url(tmp_path)) as store:
        audit_n(store, 3)
        segment = store._audit_journal()._current
        store._drain_journal(segment.name, segment.rows, ())  # the drain's commit landed ...
        leftover, name = segment.path.read_bytes(), segment.name
        segment.rows.clear()  # ... and the process died before deleting the file (below: put back)
    (journal_dir(tmp_path) / name).write_bytes(leftover)
    assert rows_in_table(tmp_path) == [0, 1, 2]
    assert segments(tmp_path) == []


def test_a_torn_last_line_is_left_out_and_every_whole_line_is_kept(tmp_path: Path) -> None:
    Store.open(url(tmp_path)).close()
    whole = [{"at": datetime(2026, 1, 1, tzinfo=UTC), "actor": "ehr", "action": "decision", "resource": None,
              "outcome": "permit", "detail": f'{{"n":{n}}}', "subject": NHS} for n in range(2)]
    torn = encode({**whole[0], "detail": '{"n":99}'})[:25]
    orphan = journal_dir(tmp_path) / "999-torn.jsonl"
    orphan.write_bytes(b"".join(encode(r) for r in whole) + torn + bytes(4096))
    assert rows_in_table(tmp_path) == [0, 1]


def test_damage_before_the_last_line_is_reported_not_skipped() -> None:
    line = encode({"at": datetime(2026, 1, 1, tzinfo=UTC), "actor": "ehr"})
    with pytest.raises(ValueError):
        audit_journal.decode(b"garbage\n" + line + line)


def test_a_damaged_segment_is_set_aside_and_the_store_still_opens(tmp_path: Path) -> None:
    Store.open(url(tmp_path)).close()
    line = encode({"at": datetime(2026, 1, 1, tzinfo=UTC), "actor": "ehr"})
    (journal_dir(tmp_path) / "77-damaged.jsonl").write_bytes(b"garbage\n" + line + line)
    assert rows_in_table(tmp_path) == []
    assert (journal_dir(tmp_path) / "77-damaged.jsonl.damaged").exists()


def test_a_full_segment_continues_in_a_new_one_and_loses_nothing(tmp_path: Path) -> None:
    drained: list[dict[str, Any]] = []
    journal = AuditJournal(tmp_path / "j", lambda name, rows, forget: drained.extend(rows), lambda name: False,
                           segment_size=4096)
    for n in range(100):
        journal.append({"at": datetime(2026, 1, 1, tzinfo=UTC), "actor": "ehr", "detail": f'{{"n":{n}}}'})
    journal.close()
    assert [r["detail"] for r in drained] == [f'{{"n":{n}}}' for n in range(100)]
    assert list((tmp_path / "j").iterdir()) == []


def test_a_row_larger_than_a_segment_gets_a_segment_of_its_own(tmp_path: Path) -> None:
    drained: list[dict[str, Any]] = []
    journal = AuditJournal(tmp_path / "j", lambda name, rows, forget: drained.extend(rows), lambda name: False,
                           segment_size=4096)
    journal.append({"at": datetime(2026, 1, 1, tzinfo=UTC), "actor": "ehr", "detail": "x" * 10_000})
    journal.close()
    assert len(drained[0]["detail"]) == 10_000


def test_a_failed_drain_keeps_the_rows_for_the_next_one(tmp_path: Path) -> None:
    drained: list[dict[str, Any]] = []
    failing = [True]

    def drain(name: str, rows: Any, forget: Any) -> None:
        if failing[0]:
            raise OSError("database is locked")
        drained.extend(rows)

    journal = AuditJournal(tmp_path / "j", drain, lambda name: False)
    journal.append({"at": datetime(2026, 1, 1, tzinfo=UTC), "actor": "ehr"})
    with pytest.raises(OSError):
        journal.flush()
    failing[0] = False
    journal.close()
    assert len(drained) == 1


def test_journal_files_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    with Store.open(url(tmp_path)) as store:
        audit_n(store, 1)
        (segment,) = segments(tmp_path)
        assert stat.S_IMODE(segment.stat().st_mode) == 0o600
        assert stat.S_IMODE(journal_dir(tmp_path).stat().st_mode) == 0o700


def test_an_append_that_cannot_be_made_durable_fails_the_audit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Store.open(url(tmp_path)) as store:
        audit_n(store, 1)

        def disk_full(self: Any, directory: Path, size: int) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(audit_journal._Segment, "__init__", disk_full)
        monkeypatch.setattr(audit_journal._Segment, "fits", lambda self, length: False)
        with pytest.raises(AuditWriteFailed):
            audit_n(store, 1)


def test_a_closed_journal_refuses_appends(tmp_path: Path) -> None:
    journal = AuditJournal(tmp_path / "j", lambda name, rows, forget: None, lambda name: False)
    journal.close()
    with pytest.raises(JournalWriteFailed):
        journal.append({"at": datetime(2026, 1, 1, tzinfo=UTC), "actor": "ehr"})


def test_a_segment_deleted_by_its_owner_while_another_store_opens_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(AuditJournal, "_orphans", lambda self: iter([tmp_path / "j" / "gone.jsonl"]))
    journal = AuditJournal(tmp_path / "j", lambda name, rows, forget: None, lambda name: False)
    assert journal.recovered == 0
    journal.close()
