"""Audit rows made durable by copying them into a per-process journal file, moved into the database in batches.

Why: every decision is audited before it is answered, and on the embedded
SQLite store committing one row per decision (a transaction, three index
updates, four WAL pages) cost more than deciding.  Copying the row, as one
JSON line, into a memory-mapped journal file costs a memcpy.  Both leave the
row in the operating system's page cache: with SQLite's ``synchronous=NORMAL``
(the embedded default) a commit also survives a crash of the process but not
of the machine, so the journal keeps the promise the database made — never
answered unless the record of it survives the process.  PostgreSQL, the
option where every commit must survive power loss, does not use the journal.

How:
* each process (each Store) appends to its own segment file — preallocated,
  mapped shared, and held under an exclusive ``flock`` while it is written;
* a background thread seals the segment every ``interval`` seconds (sooner
  once ``max_pending`` rows wait or the segment is full), continues in a fresh
  one, and hands the sealed rows to ``drain(name, rows, forget)``, which
  inserts them *and the segment's name* in one database transaction; only
  then is the file deleted (and its name forgotten in the next transaction);
* on opening, segments whose owner has gone (the lock is free) are replayed —
  unless the database already names them as drained (the process died between
  that commit and the delete), so no row is ever inserted twice.  A torn last
  line (the process died inside the copy) is the one row never acknowledged.

Readers of the audit trail call ``flush()`` first, so a process always sees
its own records; another process's records appear within ``interval``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import mmap
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SUFFIX = ".jsonl"
DAMAGED = ".damaged"
#: Bytes reserved per segment (about 2,500 audit rows); a fuller segment is sealed early and a new one begun.
SEGMENT_SIZE = 1 << 20
Row = dict[str, Any]
#: drain(segment name, rows, names to forget): insert rows + record the name as drained, in one transaction.
Drain = Callable[[str, Sequence[Row], Sequence[str]], None]


class JournalWriteFailed(OSError):
    """The row could not be appended; the caller must not answer as if it were audited."""


def encode(row: Row) -> bytes:
    """One row as one line: a JSON object whose ``at`` (the one non-JSON value of an audit row) is ISO 8601.

    >>> from datetime import UTC
    >>> encode({"at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "actor": "ehr"})
    b'{"at":"2026-01-02T03:04:05+00:00","actor":"ehr"}\\n'
    """
    return (json.dumps({**row, "at": row["at"].isoformat()}, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def decode(content: bytes) -> list[Row]:
    """Every whole line of a segment.  The file is preallocated, so what follows the last line is zeros; a
    last line cut short (the process died while copying it in) was never acknowledged and is left out.

    >>> whole = encode({"at": datetime.fromisoformat("2026-01-02T03:04:05+00:00"), "actor": "ehr"})
    >>> decode(whole + b'{"at":"2026-01-0' + bytes(20))
    [{'at': datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc), 'actor': 'ehr'}]
    """
    lines = content.rstrip(b"\0").split(b"\n")
    rows = []
    for number, line in enumerate(lines):
        if not line:
            continue
        try:
            row = json.loads(line)
            row["at"] = datetime.fromisoformat(row["at"])
        except (ValueError, KeyError, TypeError):
            if number < len(lines) - 2:
                raise  # only the last line can be torn; anything else is damage to report, not to skip
            log.warning("audit journal: a torn last line (never acknowledged) was left out")
            continue
        rows.append(row)
    return rows


class _Segment:
    """One journal file, preallocated, mapped into memory and locked by this process.

    An append is a copy into the shared mapping -- into the page cache, exactly where write(2) would put
    it, so it survives the process as a written line would -- without a system call (or a GIL hand-off)
    on the EHR's request.  The blocks are reserved up front (posix_fallocate), so a full disk fails here,
    cleanly, and never as a SIGBUS in the middle of a copy.
    """

    def __init__(self, directory: Path, size: int) -> None:
        self.name = f"{os.getpid()}-{uuid.uuid4().hex}{SUFFIX}"
        self.path = directory / self.name
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.posix_fallocate(fd, 0, size)
            self.map = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        self.fd = fd
        self.size = size
        self.used = 0
        self.rows: list[Row] = []

    def fits(self, length: int) -> bool:
        return self.used + length <= self.size

    def append(self, line: bytes) -> None:
        end = self.used + len(line)
        self.map[self.used:end] = line
        self.used = end

    def remove(self) -> None:
        self.map.close()
        self.path.unlink(missing_ok=True)
        os.close(self.fd)


class AuditJournal:
    """Append-only audit journal of one process, drained into the database by a background thread."""

    def __init__(self, directory: Path, drain: Drain, is_drained: Callable[[str], bool], *,
                 interval: float = 0.25, max_pending: int = 1000, segment_size: int = SEGMENT_SIZE) -> None:
        self._directory = directory
        self._drain = drain
        self._interval = interval
        self._max_pending = max_pending
        self._segment_size = segment_size
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._write_lock = threading.Lock()  # appends and the segment swap
        self._drain_lock = threading.Lock()  # one drain at a time
        self._sealed: list[_Segment] = []  # sealed but not yet in the database (a drain failed)
        self._forget: list[str] = []  # segments deleted whose "drained" mark can go
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._current: _Segment | None = None  # opened by the first append after each seal
        self.recovered = self._recover(is_drained)

    # ----------------------------------------------------------------- writing

    def append(self, row: Row) -> None:
        """Durable (as a committed SQLite row is) when this returns; JournalWriteFailed otherwise."""
        line = encode(row)
        with self._write_lock:
            if self._stopping:
                raise JournalWriteFailed("the audit journal is closed")
            full = self._current is not None and not self._current.fits(len(line))
            if full:
                self._seal()
            if self._current is None:
                try:
                    self._current = _Segment(self._directory, max(self._segment_size, len(line)))
                except OSError as exc:
                    raise JournalWriteFailed(f"audit journal segment could not be created: {exc.strerror}") from None
            self._current.append(line)
            self._current.rows.append(row)
            pending = len(self._current.rows)
            if self._thread is None:
                self._start()
        if full or pending >= self._max_pending:
            self._wake.set()

    def _seal(self) -> None:
        """Hand the current segment to the drain (the next append begins a new one); under the write lock."""
        if self._current is not None and self._current.rows:
            self._sealed.append(self._current)
            self._current = None

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="casus-audit-journal", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self._interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception as exc:  # the thread must survive; the rows stay in the journal
                log.error("audit journal drain failed (%s); rows kept in the journal, will retry", type(exc).__name__)

    # ----------------------------------------------------------------- draining

    def flush(self) -> None:
        """Move every row appended so far into the database (raises if the database refuses; rows are kept)."""
        with self._drain_lock:
            with self._write_lock:
                self._seal()
                sealed = list(self._sealed)
            for segment in sealed:
                self._drain(segment.name, segment.rows, self._forget)
                self._forget = [segment.name]
                with self._write_lock:
                    self._sealed.remove(segment)
                segment.remove()

    def close(self) -> None:
        """Drain everything and stop; the empty current segment is deleted."""
        with self._write_lock:
            self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            self.flush()
        finally:
            with self._write_lock:
                if self._current is not None and not self._current.rows:
                    self._current.remove()
                    self._current = None

    # ----------------------------------------------------------------- recovery

    def _recover(self, is_drained: Callable[[str], bool]) -> int:
        """Replay the segments of processes that are gone; returns how many rows went into the database."""
        replayed = 0
        for path in self._orphans():
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # its owner drained and deleted it since the directory was listed
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its process is alive and still writing
                if not path.exists():
                    continue  # drained and deleted by its owner while we waited for the lock
                if not is_drained(path.name):
                    try:
                        rows = decode(path.read_bytes())
                    except ValueError:
                        # Set aside for a person to look at; nothing is deleted, and startup goes on.
                        path.rename(path.with_name(path.name + DAMAGED))
                        log.error("audit journal: segment %s is damaged; kept as %s%s", path.name, path.name, DAMAGED)
                        continue
                    self._drain(path.name, rows, ())
                    replayed += len(rows)
                    log.warning("audit journal: replayed %d rows left by a process that stopped", len(rows))
                path.unlink(missing_ok=True)
                self._forget.append(path.name)
            finally:
                os.close(fd)
        return replayed

    def _orphans(self) -> Iterator[Path]:
        return iter(sorted(self._directory.glob(f"*{SUFFIX}")))
