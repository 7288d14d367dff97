"""The audit trail: redaction, and the one way a record becomes durable.

The promise is "no answer without its audit record": ``AuditTrail.write``
returns only once the row is committed, and raises ``AuditWriteFailed``
otherwise, so the caller answers with an error instead of an unaudited verdict.
Records about a data change (a stored form version, a disclosure) go in with the
change itself, in the same transaction (``AuditTrail.insert``).

Request-level records (every decision, every read) sit on the EHR's hot path,
so concurrent writers share a commit (group commit): whoever finds the commit
lock free becomes the leader and commits every row queued so far, its own
included, while the others wait for the lock and usually find their row already
durable.  No extra thread, no files beside the database, nothing platform-specific.
If the commit fails, every request in that batch fails (fail closed).

A decision made from cached versions is audited *on condition* (``unless_changed_since``):
the row goes in only if the store's change marker (the form-version counter) is still
the one the cache was read under, checked by the INSERT itself.  So the audit commit
proves that nothing was stored between reading the versions and answering, without a
separate read of the marker on every decision; when something was, no row is written
and the caller decides again from fresh versions (``ConsentService.decide``).

Privacy: the trail keeps ids, actions, codes and outcomes only; ``redact``
replaces anything that looks like an identifying field or an NHS number.  The
``subject`` column alone holds the NHS number concerned, so "who looked at this
young person's choices?" can be answered.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import BindParameter, Connection, Dialect, Insert, Row, bindparam, insert, literal_column, select

from .. import nhs_number
from . import schema
from .engine import SQLITE_BUSY_TIMEOUT_SECONDS, Database, dumps, page_bounds, require_actor

log = logging.getLogger("fhir_adapter.store")


class AuditWriteFailed(RuntimeError):
    """The audit row could not be made durable; the caller must not answer as if it were."""


@dataclass(frozen=True)
class AuditRecord:
    """One audit event: who did what to which resource, and how it ended. Never clinical content."""

    id: int
    at: datetime
    actor: str
    action: str
    resource: str | None
    outcome: str
    detail: dict[str, Any] = field(default_factory=dict)
    subject: str | None = None  # NHS number of the young person concerned, when there is one

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "resource": self.resource,
            "outcome": self.outcome,
            "subject": self.subject,
            "detail": self.detail,
        }


# --------------------------------------------------------------------------- redaction

_SENSITIVE_KEYS = frozenset(
    {
        "name",
        "names",
        "givenname",
        "familyname",
        "nhsnumber",
        "birthdate",
        "dateofbirth",
        "dob",
        "address",
        "postcode",
        "phone",
        "telephone",
        "email",
        "reason",
        "recipient",
        "note",
        "notes",
        "text",
        "narrative",
        "comment",
        "comments",
        "freetext",
        "form",
        "document",
        "body",
        "content",
    }
)
_NHS_NUMBER_LIKE = re.compile(r"(?<!\d)(\d{3})[ -]?(\d{3})[ -]?(\d{4})(?!\d)")
_NOT_A_LETTER = re.compile(r"[^a-z]")
REDACTED = "[redacted]"
#: No shorter string can hold an NHS number.
NHS_NUMBER_DIGITS = 10
NHS_NUMBER_MASK = "[nhs-number]"


def mask_nhs_numbers(value: str) -> str:
    """Replace anything that is a valid NHS number (spaced or not) with a mask.

    >>> mask_nhs_numbers("Patient/9434765919 and 943 476 5919, not 1234567890")
    'Patient/[nhs-number] and [nhs-number], not 1234567890'
    """
    if len(value) < NHS_NUMBER_DIGITS:
        return value  # too short to hold ten digits (most audit values: codes)
    return _NHS_NUMBER_LIKE.sub(lambda m: NHS_NUMBER_MASK if nhs_number.is_valid("".join(m.groups())) else m.group(0), value)


#: Keys already judged: callers' detail keys are a small fixed set of names in the code, and every decision
#: redacts the same ten of them.  Bounded, in case a caller ever uses keys taken from input.
_KEY_VERDICTS: dict[str, bool] = {}
_KEY_VERDICTS_MAX = 4096


def _is_sensitive_key(key: str) -> bool:
    """Compared with punctuation, digits and case removed, so "Nhs_Number" and "nhs-number" are both caught."""
    known = _KEY_VERDICTS.get(key)
    if known is not None:
        return known
    lowered = key.lower()
    sensitive = (lowered if lowered.isalpha() else _NOT_A_LETTER.sub("", lowered)) in _SENSITIVE_KEYS
    if len(_KEY_VERDICTS) < _KEY_VERDICTS_MAX:
        _KEY_VERDICTS[key] = sensitive
    return sensitive


def redact(value: Any) -> Any:
    """An audit-safe copy of a value: identifying fields and NHS numbers removed, only JSON types kept.

    The audit trail must never hold clinical content, yet callers build its
    detail from live requests; redacting here means a careless caller leaks a
    placeholder rather than a name.

    >>> redact({"verdict": "permit", "name": "Alex", "nhs_number": "9434765919", "purposes": ["THREAT"], "ids": ["x 9434765919"]})
    {'verdict': 'permit', 'name': '[redacted]', 'nhs_number': '[redacted]', 'purposes': ['THREAT'], 'ids': ['x [nhs-number]']}
    """
    kind = type(value)  # the exact JSON types first: a decision's detail is nothing else
    if kind is str:
        return mask_nhs_numbers(value)
    if kind is dict:
        return _redacted_dict(value)
    if kind is list:
        return [redact(v) for v in value]
    if isinstance(value, str):
        return mask_nhs_numbers(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict | Mapping):
        return {str(k): REDACTED if _is_sensitive_key(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v) for v in value]
    return mask_nhs_numbers(str(value))


def _redacted_dict(value: dict[Any, Any]) -> dict[str, Any]:
    """``redact`` of a dict, with a short string value (a code: too short to hold an NHS number) kept without a call."""
    redacted: dict[str, Any] = {}
    for k, v in value.items():
        key = k if type(k) is str else str(k)
        if _is_sensitive_key(key):
            redacted[key] = REDACTED
        elif type(v) is str and len(v) < NHS_NUMBER_DIGITS:
            redacted[key] = v
        else:
            redacted[key] = redact(v)
    return redacted


def audit_row(
    at: datetime, *, actor: str, action: str, resource: str | None, outcome: str, detail: Mapping[str, Any] | None, subject: str | None
) -> dict[str, Any]:
    """The audit_log row for one event, redacted; ``subject`` is kept only when it is a valid NHS number."""
    return {
        "at": at,
        "actor": actor,
        "action": action,
        "resource": mask_nhs_numbers(resource) if resource is not None else None,
        "outcome": outcome,
        "detail": dumps(redact(detail or {})),
        "subject": subject if subject and nhs_number.is_valid(subject) else None,
    }


def _record_from_row(row: Row[Any]) -> AuditRecord:
    return AuditRecord(row.id, row.at, row.actor, row.action, row.resource, row.outcome, json.loads(row.detail), row.subject)


# --------------------------------------------------------------------------- group commit


@dataclass
class _Pending:
    row: Any
    committed: bool = False
    declined: bool = False
    error: BaseException | None = None


#: A batch writer: commits the rows it accepts in one transaction and says, per row, whether it was written
#: (``None``: every row was).  A row it declines (a condition that no longer holds) is not an error.
BatchWriter = Callable[[Sequence[Any]], "Sequence[bool] | None"]


class GroupCommit:
    """Leader/follower group commit of rows from many threads: a row is committed before ``write`` returns."""

    def __init__(self, write_batch: BatchWriter, *, max_batch: int = 500) -> None:
        self._write_batch = write_batch
        self._max_batch = max_batch
        self._queue_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._queued: list[_Pending] = []

    def write(self, row: Any) -> bool:
        """Commit a row (possibly with other threads' rows): True once committed, False if the writer declined it;
        raise AuditWriteFailed if the commit failed."""
        mine = _Pending(row)
        with self._queue_lock:
            self._queued.append(mine)
        while True:
            with self._commit_lock:
                if not (mine.committed or mine.declined or mine.error):
                    self._commit_queued()
            if mine.error is not None:
                raise AuditWriteFailed("the audit trail could not be written") from mine.error
            if mine.committed or mine.declined:
                return mine.committed

    def _commit_queued(self) -> None:
        with self._queue_lock:
            batch, self._queued = self._queued[: self._max_batch], self._queued[self._max_batch :]
        if not batch:
            return
        try:
            written = self._write_batch([p.row for p in batch])
        except Exception as exc:
            log.error("audit batch of %d rows failed: %s", len(batch), type(exc).__name__)
            for p in batch:
                p.error = exc
            return
        for i, p in enumerate(batch):
            if written is None or written[i]:
                p.committed = True
            else:
                p.declined = True


@dataclass(frozen=True)
class _Row:
    """An audit_log row, and the change marker the store must still be at for it to be written (None: always)."""

    values: dict[str, Any]
    unless_changed_since: int | None = None


_INSERT_AUDIT = insert(schema.audit_log)
#: The same row, inserted only while the form-version counter still holds the expected value: one statement, so
#: checking the marker costs no extra round trip (SQLite: the counter is read in the INSERT's own transaction).
_AUDIT_COLUMNS = [c for c in schema.audit_log.columns if not c.primary_key]
_MARKER_ROW = schema.counters.c.name == literal_column(f"'{schema.FORM_VERSION_COUNTER}'")  # a constant of ours, not input
_INSERT_AUDIT_UNLESS_CHANGED = insert(schema.audit_log).from_select(
    [c.name for c in _AUDIT_COLUMNS],
    select(*[bindparam(c.name, type_=c.type) for c in _AUDIT_COLUMNS]).where(
        select(schema.counters.c.value).where(_MARKER_ROW).scalar_subquery() == bindparam("unless_changed_since", type_=schema.counters.c.value.type)
    ),
)
_CURRENT_MARKER = select(schema.counters.c.value).where(_MARKER_ROW)


class _DriverInsert:
    """An audit INSERT as the database driver takes it, each value converted by its bind's type as SQLAlchemy would.

    Request-level records are written once per decision, and SQLAlchemy's per-statement machinery (events,
    compiled-cache lookup, result set-up) cost more than the insert and the commit together; the statement
    is compiled once here instead, and runs on a plain driver connection.
    """

    def __init__(self, statement: Insert, dialect: Dialect) -> None:
        names = [c.name for c in _AUDIT_COLUMNS]
        compiled = statement.compile(dialect=dialect, column_keys=names)
        self.sql = compiled.string
        self._positional = compiled.positional
        # (bind parameter name, value key, the bind type's conversion for this dialect), in the statement's order
        order = compiled.positiontup if compiled.positional else list(compiled.binds)
        binds: dict[str, BindParameter[Any]] = compiled.binds
        self._binds = [(key, binds[key].key, binds[key].type.bind_processor(dialect)) for key in order or ()]

    def params(self, row: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        values = [(bind, row[key] if convert is None else convert(row[key])) for bind, key, convert in self._binds]
        return tuple(v for _, v in values) if self._positional else dict(values)


#: The first and the longest pause between tries for SQLite's write lock (seconds).
LOCK_PAUSE_FIRST, LOCK_PAUSE_LONGEST = 0.00005, 0.001
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6


def _waiting_for_the_write_lock(write: Callable[[], Any]) -> Any:
    """Run ``write`` until it gets SQLite's write lock, pausing 50 µs, doubling to 1 ms, for at most the busy timeout.

    SQLite's own busy handler sleeps 1, 2, 5, 10 ... ms between tries, yet an audit row holds the lock for tens
    of microseconds: with several worker processes on one file, every row that met another's commit would wait
    a millisecond or more, and the decisions' p99 with it.  A write that met the lock has written nothing
    (a lone INSERT is its own transaction; a batch's BEGIN IMMEDIATE failed), so trying again is safe.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_SECONDS
    pause = LOCK_PAUSE_FIRST
    while True:
        try:
            return write()
        except sqlite3.OperationalError as exc:
            if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) not in (_SQLITE_BUSY, _SQLITE_LOCKED) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, LOCK_PAUSE_LONGEST)


class AuditTrail:
    """Writes and reads the audit_log table."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._commits = GroupCommit(self._write_batch)
        self._insert = _DriverInsert(_INSERT_AUDIT, db.engine.dialect)
        self._insert_unless_changed = _DriverInsert(_INSERT_AUDIT_UNLESS_CHANGED, db.engine.dialect)
        self._current_marker = str(_CURRENT_MARKER.compile(dialect=db.engine.dialect))
        self._sqlite = db.backend == "sqlite"
        self._conn: Any = None  # a driver connection, used only under the group commit's lock

    def write(
        self,
        *,
        actor: str,
        action: str,
        resource: str | None,
        outcome: str,
        detail: Mapping[str, Any] | None = None,
        subject: str | None = None,
        unless_changed_since: int | None = None,
    ) -> bool:
        """Append a record; True once it is committed, or raises AuditWriteFailed.

        ``detail`` is for codes and ids; identifying fields are redacted on the way in.  With
        ``unless_changed_since`` the record is written only if the store's change marker still holds that value
        when it is committed; False, with nothing written, if a form version has been stored since.
        """
        require_actor(actor)
        values = audit_row(self._db.now(), actor=actor, action=action, resource=resource, outcome=outcome, detail=detail, subject=subject)
        return self._commits.write(_Row(values, unless_changed_since))

    def insert(
        self,
        conn: Connection,
        at: datetime,
        *,
        actor: str,
        action: str,
        resource: str | None,
        outcome: str,
        detail: Mapping[str, Any] | None,
        subject: str | None = None,
    ) -> None:
        """Append a record inside the caller's transaction: it commits, or is rolled back, with the change it records."""
        conn.execute(
            _INSERT_AUDIT.values(**audit_row(at, actor=actor, action=action, resource=resource, outcome=outcome, detail=detail, subject=subject))
        )

    def _write_batch(self, rows: Sequence[_Row]) -> list[bool] | None:
        """One transaction for the batch, on one connection kept for the purpose (the commit lock serialises its use).

        The connection is in autocommit mode (SQLite: see engine.py; PostgreSQL: set here, on a connection
        taken out of the pool for good so no other user inherits the mode): a lone row's INSERT is its own
        transaction, committed when the statement completes (on PostgreSQL one round trip, not BEGIN, INSERT
        and COMMIT); a batch is wrapped in BEGIN (IMMEDIATE on SQLite) ... COMMIT, and reads the change marker
        once for the rows written on condition.  Returns, per row, whether it was written (None: all were).
        A failure closes the connection: the next batch starts on a fresh one.
        """
        if self._conn is None:
            self._conn = self._own_connection()
        try:
            if self._sqlite:
                return _waiting_for_the_write_lock(lambda: self._write_rows(rows))
            return self._write_rows(rows)
        except Exception:
            self.close()
            raise

    def _write_rows(self, rows: Sequence[_Row]) -> list[bool] | None:
        cursor = self._conn.cursor()
        try:
            if len(rows) == 1:
                return self._write_one(cursor, rows[0])
            cursor.execute("BEGIN IMMEDIATE" if self._sqlite else "BEGIN")
            try:
                written = self._accepted(cursor, rows)
                cursor.executemany(self._insert.sql, [self._insert.params(row.values) for row, ok in zip(rows, written, strict=True) if ok])
            except Exception:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")
            return written
        finally:
            cursor.close()

    def _write_one(self, cursor: Any, row: _Row) -> list[bool] | None:
        if row.unless_changed_since is None:
            cursor.execute(self._insert.sql, self._insert.params(row.values))
            return None
        cursor.execute(
            self._insert_unless_changed.sql, self._insert_unless_changed.params({**row.values, "unless_changed_since": row.unless_changed_since})
        )
        return [cursor.rowcount == 1]

    def _accepted(self, cursor: Any, rows: Sequence[_Row]) -> list[bool]:
        """Which rows of a batch to write: all but those whose change marker has moved (read once, in the batch's transaction)."""
        if all(row.unless_changed_since is None for row in rows):
            return [True] * len(rows)
        cursor.execute(self._current_marker)
        current = int(cursor.fetchone()[0])
        return [row.unless_changed_since in (None, current) for row in rows]

    def records(self, *, actor: str | None = None, subject: str | None = None, action: str | None = None, limit: int = 100) -> list[AuditRecord]:
        """The most recent records, newest first, optionally for one actor, one subject and/or one action."""
        page_bounds(limit, 0)
        t = schema.audit_log
        query = select(t).order_by(t.c.id.desc()).limit(limit)
        if actor is not None:
            query = query.where(t.c.actor == actor)
        if subject is not None:
            query = query.where(t.c.subject == subject)
        if action is not None:
            query = query.where(t.c.action == action)
        with self._db.read() as conn:
            return [_record_from_row(r) for r in conn.execute(query).all()]

    def _own_connection(self) -> Any:
        conn = self._db.engine.raw_connection()
        driver: Any = conn.driver_connection
        conn.detach()  # closed, not returned to the pool, when done: the pool's users expect transactions and waits
        if self._sqlite:
            driver.execute("PRAGMA busy_timeout = 0")  # this connection waits for the write lock itself (see below)
        else:
            driver.autocommit = True
        return conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # nothing to undo after a commit; after a failure, leave no open transaction
                conn.rollback()
            conn.close()
