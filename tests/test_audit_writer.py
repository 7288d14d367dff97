"""Group commit of the audit trail: every row from every thread is committed before its caller returns."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest

from fhir_adapter.store.audit import AuditWriteFailed, GroupCommit


def test_rows_from_many_threads_are_all_committed_before_write_returns():
    committed: list[dict[str, Any]] = []
    batches: list[int] = []
    lock = threading.Lock()

    def write_batch(rows: Sequence[dict[str, Any]]) -> None:
        with lock:
            committed.extend(rows)
            batches.append(len(rows))

    writer = GroupCommit(write_batch)
    seen_after_return: list[bool] = []

    def worker(n: int) -> None:
        for i in range(50):
            row = {"n": n, "i": i}
            writer.write(row)
            with lock:
                seen_after_return.append(row in committed)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(committed) == 400 and all(seen_after_return)
    assert sum(batches) == 400


def test_a_failed_commit_fails_every_caller_in_the_batch():
    def write_batch(rows: Sequence[dict[str, Any]]) -> None:
        raise OSError("disk full")

    with pytest.raises(AuditWriteFailed):
        GroupCommit(write_batch).write({"action": "decision"})


def test_the_writer_recovers_after_a_failed_batch():
    calls = {"n": 0}

    def write_batch(rows: Sequence[dict[str, Any]]) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("transient")

    writer = GroupCommit(write_batch)
    with pytest.raises(AuditWriteFailed):
        writer.write({"a": 1})
    writer.write({"a": 2})
    assert calls["n"] == 2
