"""$validate in worker processes, a bounded number at a time, so a validation cannot slow the decisions.

Validating a large Consent is seconds of pure-Python CPU.  In a thread of the serving process it holds the
GIL, and every decision, which hands the GIL back and forth around its database reads, waits about 5 ms at
each hand-over: two validations made the median decision a hundred times slower.  In a worker process it
competes only for a CPU core.  At most ``size`` validations run at once; one more is refused at once rather
than queued, because a queued request would hold one of the server's few worker threads while it waited.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .outcome import Issue
from .request_turns import stepped_aside
from .validation import Version, validate_consent

_POOL_LOCK = threading.Lock()
_POOLS: dict[int, ProcessPoolExecutor] = {}


#: How often a worker checks that the serving process is still there.
PARENT_CHECK_SECONDS = 1.0


def _leave_with_parent(parent: int) -> None:
    """In each worker: exit when the serving process has gone, however it went (even SIGKILL, which runs no cleanup)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _pool(size: int) -> ProcessPoolExecutor:
    """One pool per size per process, started on first use ("spawn": never a fork of a threaded server)."""
    with _POOL_LOCK:
        if size not in _POOLS:
            _POOLS[size] = ProcessPoolExecutor(
                max_workers=size, mp_context=multiprocessing.get_context("spawn"), initializer=_leave_with_parent, initargs=(os.getpid(),)
            )
        return _POOLS[size]


def _discard_pool(size: int) -> None:
    with _POOL_LOCK:
        broken = _POOLS.pop(size, None)
    if broken is not None:
        broken.shutdown(wait=False, cancel_futures=True)


class ValidationWorkers:
    """At most ``size`` validations at once, each in a worker process."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._slots = threading.BoundedSemaphore(size)

    def validate(self, document: Any, version: Version, profile: str | None) -> list[Issue] | None:
        """The issues, or None when ``size`` validations are already running."""
        if not self._slots.acquire(blocking=False):
            return None
        try:
            with stepped_aside():  # seconds of waiting: the serving process's other requests run meanwhile
                try:
                    return _pool(self.size).submit(validate_consent, document, version, profile).result()
                except BrokenProcessPool:  # a worker died (out of memory, killed): start a fresh pool and try once more
                    _discard_pool(self.size)
                    return _pool(self.size).submit(validate_consent, document, version, profile).result()
        finally:
            self._slots.release()
