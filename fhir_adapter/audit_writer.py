"""Group commit for the audit trail.

Every decision is audited before it is answered, so the audit write sits on
the EHR's hot path.  Committing one row per request costs a transaction each;
here concurrent requests share one: whoever finds the commit lock free
becomes the leader and commits every row queued so far, its own included,
while the others wait for the lock and usually find their row already
durable.  No extra thread, so no hand-off latency.  A request is still
answered only after its audit row is committed — if the write fails, every
request in that batch fails too (fail closed), never answered unaudited.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


class AuditWriteFailed(RuntimeError):
    """The audit row could not be made durable; the caller must not answer as if it were."""


@dataclass
class _Pending:
    row: dict[str, Any]
    committed: bool = False
    error: BaseException | None = None


class AuditWriter:
    """Leader/follower group commit of audit rows from many threads."""

    def __init__(self, write_batch: Callable[[Sequence[dict[str, Any]]], None], *, max_batch: int = 500) -> None:
        self._write_batch = write_batch
        self._max_batch = max_batch
        self._queue_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._queued: list[_Pending] = []

    def write(self, row: dict[str, Any]) -> None:
        """Commit a row (possibly together with other threads' rows); raise AuditWriteFailed if it was not."""
        mine = _Pending(row)
        with self._queue_lock:
            self._queued.append(mine)
        while True:
            with self._commit_lock:
                if not (mine.committed or mine.error):
                    self._commit_queued()
            if mine.error is not None:
                raise AuditWriteFailed("the audit trail could not be written") from mine.error
            if mine.committed:
                return

    def _commit_queued(self) -> None:
        with self._queue_lock:
            batch, self._queued = self._queued[: self._max_batch], self._queued[self._max_batch:]
        if not batch:
            return
        try:
            self._write_batch([p.row for p in batch])
        except Exception as exc:
            log.error("audit batch of %d rows failed: %s", len(batch), type(exc).__name__)
            for p in batch:
                p.error = exc
            return
        for p in batch:
            p.committed = True

    def close(self) -> None:
        """Nothing is buffered beyond a running write(), so there is nothing to flush."""
