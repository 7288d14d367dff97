"""The durable store: every version of every CASUS consent form, the audit trail, disclosures and sync state.

A young person can change their mind, and a decision has to be explainable
later ("which consent was in force on 3 March?"), so a form is never
overwritten: each change appends a version.  Writes are optimistic: the caller
names the version it read, and a stale write raises ``VersionConflict`` and
changes nothing, so two clinicians editing at once cannot silently undo each
other.

One code path (SQLAlchemy Core) serves both engines:

* **SQLite**, the embedded default: the file is created on first use.  Write
  transactions start with ``BEGIN IMMEDIATE`` so writers queue on the file lock
  instead of failing half-way; WAL mode lets readers carry on meanwhile.
* **PostgreSQL** (``postgresql+psycopg://...``): a write compares-and-sets the
  form's head row (``UPDATE ... WHERE latest_version = :expected``), which row-locks
  it; the unique (form_id, version) constraint backs that up.

Each stored version also gets a number from a counter row that is incremented
inside the writing transaction.  Holding that row lock until commit means the
numbers become visible strictly in order, which is what lets the sync job push
"everything after cursor N" without ever skipping a change that committed late.
(It serialises form writes globally; consent forms are written at human speed.)

Privacy: the store never logs form content, names, NHS numbers or disclosure
details; the audit trail keeps ids, actions, codes and outcomes only, and
``audit`` redacts anything that looks like an identifying field.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from sqlalchemy import (
    URL,
    ColumnElement,
    Connection,
    CursorResult,
    Engine,
    Row,
    Table,
    and_,
    create_engine,
    delete,
    event,
    func,
    insert,
    make_url,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from . import migrations as schema
from . import nhs_number
from .audit_journal import AuditJournal
from .audit_writer import AuditWriteFailed, AuditWriter
from .change_marker import READ_ONLY_OPTION, SQLITE_BUSY_TIMEOUT_SECONDS, change_marker, sqlite_file
from .disclosure import Disclosure, disclosure_issues
from .form import ConsentForm, form_to_json, parse_form
from .outcome import InvalidInput

log = logging.getLogger(__name__)

#: Where the embedded store lives when nothing else is configured (relative to the working directory).
DEFAULT_URL = "sqlite:///casus-adapter.db"
_INSERT_AUDIT = insert(schema.audit_log)


#: The largest version number a database integer column holds; anything larger cannot exist.
MAX_VERSION = 2**63 - 1
#: How many patients' version lists the decision hot path keeps (revalidated on every use, so never stale).
PATIENT_CACHE_SIZE = 2_000
#: Upper bound on one page of results, so no caller can ask the database for everything at once.
MAX_PAGE_SIZE = 1000

#: Audit actions the store writes itself, inside the transaction that changes the data (callers add their own
#: request-level records, e.g. "form.create", on top).
STORED_FORM_VERSION = "store.form-version"
STORED_DISCLOSURE = "store.disclosure"

Source = Literal["local", "remote"]
SOURCES: tuple[str, ...] = ("local", "remote")
Clock = Callable[[], datetime]


# --------------------------------------------------------------------------- errors


class StoreError(Exception):
    """Base of everything the store raises on purpose."""


class NotFound(StoreError):
    """No such form (or no such version of it)."""


class AlreadyExists(StoreError):
    """A form with this form id is already stored; change it with update_form instead."""


class VersionConflict(StoreError):
    """The write named a version that is no longer the latest; nothing was changed.

    ``current_version`` is what the caller should re-read before trying again.
    """

    def __init__(self, current_version: int, *, form_id: str | None = None, expected_version: int | None = None) -> None:
        self.current_version = current_version
        self.form_id = form_id
        self.expected_version = expected_version
        super().__init__(f"form {form_id}: expected version {expected_version} but the latest is {current_version}")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class FormVersion:
    """One stored version of a form and who stored it, when, and from where."""

    form_id: str
    version: int
    form: ConsentForm
    recorded_at: datetime  # server time (UTC) the version was stored
    actor: str
    source: str  # 'local' (API) or 'remote' (pulled by sync)


@dataclass(frozen=True)
class PatientVersions:
    """A patient's stored versions, oldest first, and the store-wide change marker read before them.

    Equal markers mean nothing was stored in between, so anything computed from ``versions`` can be
    reused for as long as the marker is unchanged (the decision endpoint's verdict memo relies on it).
    """

    marker: Any
    versions: tuple[FormVersion, ...]


@dataclass(frozen=True)
class AuditDetail:
    """An audit record's detail, already redacted and serialised.

    Built only by ``of``, so it cannot skip the redaction; a caller that records the same detail over and
    over (the decision endpoint: the same question, the same verdict) builds it once.
    """

    json: str

    @classmethod
    def of(cls, detail: Mapping[str, Any]) -> AuditDetail:
        return cls(_dumps(redact(detail)))


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
        return {"id": self.id, "at": self.at.isoformat(), "actor": self.actor, "action": self.action, "resource": self.resource,
                "outcome": self.outcome, "subject": self.subject, "detail": self.detail}


@dataclass(frozen=True)
class SyncRecord:
    """What the sync job last knew about one form on both sides."""

    form_id: str
    pushed_version: int | None = None
    remote_id: str | None = None
    remote_version_id: str | None = None
    remote_last_updated: str | None = None
    pulled_version: int | None = None
    mapping_version: int | None = None  # of the Consent the server holds; None (rows from before it was kept) means 1


# --------------------------------------------------------------------------- pure helpers


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _require_aware(value: datetime | None, name: str) -> None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")


def _require_actor(actor: str) -> None:
    if not isinstance(actor, str) or not actor.strip():
        raise ValueError("actor must be a non-empty string")


def _require_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}")


def _dumps(document: Any) -> str:
    """Canonical JSON text: the same content always serialises to the same string."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def checked_document(form: ConsentForm) -> tuple[str, ConsentForm]:
    """The JSON text to store for a form, and the form as it will read back.

    The document is re-parsed before it is stored, so anything in the store
    is known to parse (reads never fail on data the store itself accepted) and
    a form that breaks a rule raises InvalidInput with nothing written.
    """
    document = form_to_json(form)
    return _dumps(document), parse_form(document)


_SENSITIVE_KEYS = frozenset({
    "name", "names", "givenname", "familyname", "nhsnumber", "birthdate", "dateofbirth", "dob", "address",
    "postcode", "phone", "telephone", "email", "reason", "recipient", "note", "notes", "text", "narrative",
    "comment", "comments", "freetext", "form", "document", "body", "content",
})
_NHS_NUMBER_LIKE = re.compile(r"(?<!\d)(\d{3})[ -]?(\d{3})[ -]?(\d{4})(?!\d)")
REDACTED = "[redacted]"
NHS_NUMBER_MASK = "[nhs-number]"


def _mask_nhs_numbers(value: str) -> str:
    """Replace anything that is a valid NHS number (spaced or not) with a mask.

    >>> _mask_nhs_numbers("Patient/9434765919 and 943 476 5919, not 1234567890")
    'Patient/[nhs-number] and [nhs-number], not 1234567890'
    """
    if len(value) < 10:
        return value  # too short to hold ten digits (most audit values: codes)
    return _NHS_NUMBER_LIKE.sub(lambda m: NHS_NUMBER_MASK if nhs_number.is_valid("".join(m.groups())) else m.group(0), value)


def _is_sensitive_key(key: str) -> bool:
    # Audit details reuse a handful of short keys, so those are normalised once; long ones every time
    # (so that what callers send cannot fill the cache with large strings).
    return _is_sensitive_short_key(key) if len(key) <= 64 else _normalised_key(key) in _SENSITIVE_KEYS


def _normalised_key(key: str) -> str:
    return re.sub(r"[^a-z]", "", key.lower())


@lru_cache(maxsize=1024)
def _is_sensitive_short_key(key: str) -> bool:
    return _normalised_key(key) in _SENSITIVE_KEYS


def redact(value: Any) -> Any:
    """An audit-safe copy of a value: identifying fields and NHS numbers removed, only JSON types kept.

    The audit trail must never hold clinical content, yet callers build its
    detail from live requests; redacting here means a careless caller leaks a
    placeholder rather than a name.

    >>> redact({"verdict": "permit", "name": "Alex", "nhs_number": "9434765919", "purposes": ["THREAT"], "ids": ["x 9434765919"]})
    {'verdict': 'permit', 'name': '[redacted]', 'nhs_number': '[redacted]', 'purposes': ['THREAT'], 'ids': ['x [nhs-number]']}
    """
    # Most frequent types first (this runs on every decision); the answers do not depend on the order.
    if isinstance(value, str):
        return _mask_nhs_numbers(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict | Mapping):
        return {str(k): REDACTED if _is_sensitive_key(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v) for v in value]
    return _mask_nhs_numbers(str(value))


def _disclosure_json(d: Disclosure) -> dict[str, Any]:
    return {
        "nhsNumber": d.nhs_number,
        "formId": d.form_id,
        "exception": d.exception,
        "informationTypes": list(d.information_types),
        "recipient": dict(d.recipient),
        "reason": d.reason,
        "disclosedAt": d.disclosed_at.isoformat(),
        "youngPersonTold": d.young_person_told,
        "toldAt": d.told_at.isoformat() if d.told_at else None,
        "notToldReason": d.not_told_reason,
    }


def _disclosure_from_row(row: Row[Any]) -> Disclosure:
    doc = json.loads(row.document)
    return Disclosure(
        id=row.id,
        nhs_number=doc["nhsNumber"],
        form_id=doc["formId"],
        exception=doc["exception"],
        information_types=tuple(doc["informationTypes"]),
        recipient=doc["recipient"],
        reason=doc["reason"],
        disclosed_at=datetime.fromisoformat(doc["disclosedAt"]),
        young_person_told=doc["youngPersonTold"],
        told_at=datetime.fromisoformat(doc["toldAt"]) if doc["toldAt"] else None,
        not_told_reason=doc["notToldReason"],
        recorded_at=row.recorded_at,
    )


@lru_cache(maxsize=1024)
def _parse_document(document: str) -> ConsentForm:
    """Stored versions never change, so the same text always parses to the same form: parse it once.

    Keyed by the text itself (not the form id), so two stores in one process can never mix their forms up.
    """
    return parse_form(json.loads(document))


def _version_from_row(row: Row[Any]) -> FormVersion:
    return FormVersion(
        form_id=row.form_id,
        version=row.version,
        form=_parse_document(row.document),
        recorded_at=row.recorded_at,
        actor=row.actor,
        source=row.source,
    )


def _audit_row(at: datetime, *, actor: str, action: str, resource: str | None, outcome: str,
               detail: Mapping[str, Any] | AuditDetail | None, subject: str | None) -> dict[str, Any]:
    text = detail.json if isinstance(detail, AuditDetail) else AuditDetail.of(detail or {}).json
    return {"at": at, "actor": actor, "action": action, "resource": _mask_nhs_numbers(resource) if resource is not None else None,
            "outcome": outcome, "detail": text, "subject": subject}


@lru_cache(maxsize=8)
def _driver_insert(table: Table, dialect: Dialect) -> tuple[str, tuple[tuple[str, Callable[[Any], Any] | None], ...]]:
    """An INSERT of every non-key column as the driver takes it (positional), with each column type's own
    bind conversion, so that rows go in exactly as SQLAlchemy would have written them."""
    names = [c.name for c in table.columns if not c.primary_key]
    compiled = insert(table).compile(dialect=dialect, column_keys=names)
    if not compiled.positional:
        raise ValueError(f"{dialect.name} takes named parameters; use the SQLAlchemy path")
    order = [compiled.binds[key].key for key in compiled.positiontup or ()]
    return compiled.string, tuple((name, table.c[name].type.bind_processor(dialect)) for name in order)


def _audit_from_row(row: Row[Any]) -> AuditRecord:
    return AuditRecord(row.id, row.at, row.actor, row.action, row.resource, row.outcome, json.loads(row.detail), row.subject)


def _page_bounds(limit: int, offset: int) -> None:
    if not 0 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 0 and {MAX_PAGE_SIZE}")
    if offset < 0:
        raise ValueError("offset must not be negative")


def _search_filters(nhs: str | None, status: str | None, since: datetime | None, before: datetime | None) -> list[ColumnElement[bool]]:
    """WHERE terms over the head rows; ``since`` is inclusive and ``before`` exclusive, so ranges tile."""
    t = schema.forms
    terms: list[ColumnElement[bool]] = []
    if nhs is not None:
        terms.append(t.c.nhs_number == nhs)
    if status is not None:
        terms.append(t.c.status == status)
    if since is not None:
        terms.append(t.c.updated_at >= since)
    if before is not None:
        terms.append(t.c.updated_at < before)
    return terms


# --------------------------------------------------------------------------- engines


def normalise_url(url: str | URL) -> URL:
    """A database URL with the psycopg 3 driver filled in for bare PostgreSQL URLs.

    >>> normalise_url("postgresql://u@127.0.0.1:5432/casus").drivername
    'postgresql+psycopg'
    >>> normalise_url("sqlite:///casus.db").drivername
    'sqlite'
    """
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _enable_wal(cursor: sqlite3.Cursor) -> None:
    """Switch the file to WAL mode (readers no longer wait for writers), retrying while another connection holds it.

    The switch needs an exclusive lock and SQLite does not always apply the busy timeout to it, so several
    processes opening a brand-new file at once would otherwise see "database is locked".  Bounded by the
    same deadline as any other busy wait.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_SECONDS
    delay = 0.01
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the sqlite3 module so that BEGIN IMMEDIATE (below) is what starts one.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        _enable_wal(cursor)
        # In WAL mode NORMAL syncs at checkpoints, not at every commit: the file cannot be corrupted, and a
        # commit survives a crash of the process; only an OS crash or power cut can lose the last commits.
        # PostgreSQL is the option where every commit must survive power loss.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    # Writers take the file's write lock up front: they wait their turn (busy timeout) instead of
    # failing at commit after reading a snapshot that another writer has since changed.
    connection.exec_driver_sql("BEGIN" if connection.get_execution_options().get(READ_ONLY_OPTION) else "BEGIN IMMEDIATE")


def _sqlite_engine(url: URL) -> Engine:
    database = url.database or ""
    in_memory = database in ("", ":memory:")
    if not in_memory:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    # An in-memory database exists only on its one connection (useful for single-threaded tests only).
    pool: dict[str, Any] = {"poolclass": StaticPool} if in_memory else {}
    # hide_parameters: even with SQL logging switched on, bound values (NHS numbers, documents) never reach a log.
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
                           hide_parameters=True, **pool)
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def make_engine(url: str | URL) -> Engine:
    """An engine for a supported URL, configured for the store's transaction discipline."""
    parsed = normalise_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed)
    if backend == "postgresql":
        return create_engine(parsed, pool_pre_ping=True, hide_parameters=True)
    raise StoreError(f"unsupported database '{parsed.drivername}': use sqlite:///path/file.db or postgresql+psycopg://...")


def _dialect_insert(conn: Connection, table: Table) -> Any:
    """INSERT with ON CONFLICT support; SQLite and PostgreSQL share the same upsert API in SQLAlchemy."""
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


def _upsert(conn: Connection, table: Table, values: dict[str, Any], *, key: str, only_if: ColumnElement[bool] | None = None) -> None:
    stmt = _dialect_insert(conn, table).values(**values)
    changes = {name: stmt.excluded[name] for name in values if name != key}
    conn.execute(stmt.on_conflict_do_update(index_elements=[key], set_=changes, where=only_if))


# --------------------------------------------------------------------------- the store


class Store:
    """Forms, versions, audit, disclosures and sync state in one database.

    Thread-safe: share one Store per process (it holds a connection pool).
    """

    def __init__(self, engine: Engine, *, clock: Clock | None = None) -> None:
        self._engine = engine
        self._clock = clock or _utc_now
        self._audit_writer = AuditWriter(self._write_audit_batch)
        self._changes = change_marker(engine)
        self._audit_conn: Connection | None = None
        path = sqlite_file(engine)
        # The embedded SQLite file journals audit rows (see audit_journal.py); the journal is opened by
        # Store.open once the schema it drains into exists.  PostgreSQL and in-memory databases commit directly.
        self._journal_directory = None if path is None else Path(f"{path}-audit-journal")
        self._journal: AuditJournal | None = None
        self._journal_lock = threading.Lock()
        self._local = threading.local()

    @classmethod
    def open(cls, url: str = DEFAULT_URL, *, clock: Clock | None = None) -> Store:
        """Connect, and bring the schema up to date (safe to run from several processes at once).

        ``clock`` supplies "now" for recorded_at, audit times and lease expiry (tests pass a fake one).
        """
        engine = make_engine(url)
        store = cls(engine, clock=clock)
        try:
            with store._write() as conn:
                applied = schema.migrate(conn, now=store._now)
        except BaseException:
            engine.dispose()
            raise
        log.info("store opened on %s; migrations applied: %s", engine.dialect.name, applied or "none")
        if store._journal_directory is not None:
            store._audit_journal()  # replays what a stopped process left in the journal
        return store

    def close(self) -> None:
        """Flush the audit trail and close every pooled connection."""
        if self._journal is not None:
            try:
                self._journal.close()
            except Exception as exc:  # the rows stay in the journal files; the next Store.open replays them
                log.error("audit journal could not be drained on close (%s); it will be replayed on the next open",
                          type(exc).__name__)
        self._audit_writer.close()
        self._changes.close()
        if self._audit_conn is not None:
            self._audit_conn.close()
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _patient_cache(self) -> OrderedDict[str, PatientVersions]:
        """This thread's cache (no lock on the hot path; threads of a WSGI server live long)."""
        cache = getattr(self._local, "patients", None)
        if cache is None:
            cache = self._local.patients = OrderedDict()
        return cache

    def ping(self) -> bool:
        """True when the database answers; for the readiness endpoint."""
        try:
            with self._read() as conn:
                conn.execute(select(1))
            return True
        except SQLAlchemyError:
            log.warning("store ping failed")
            return False

    @property
    def backend(self) -> str:
        """'sqlite' or 'postgresql'."""
        return self._engine.dialect.name

    def _now(self) -> datetime:
        now = self._clock()
        _require_aware(now, "the clock's time")
        return now.astimezone(UTC)

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            conn.execution_options(**{READ_ONLY_OPTION: True})
            with conn.begin():
                yield conn

    # ----------------------------------------------------------------------- forms

    def create_form(self, form: ConsentForm, *, actor: str, source: str = "local") -> FormVersion:
        """Store a new form as version 1. Raises AlreadyExists, or InvalidInput with nothing stored."""
        _require_actor(actor)
        _require_source(source)
        document, parsed = checked_document(form)
        now = self._now()
        with self._write() as conn:
            try:
                conn.execute(insert(schema.forms).values(
                    form_id=parsed.form_id, latest_version=1, nhs_number=parsed.young_person.nhs_number,
                    status=parsed.status, updated_at=now))
            except IntegrityError as exc:
                raise AlreadyExists(f"form {parsed.form_id} already exists") from exc
            return self._append_version(conn, parsed, document, version=1, now=now, actor=actor, source=source)

    def update_form(self, form: ConsentForm, *, expected_version: int, actor: str, source: str = "local") -> FormVersion:
        """Store a new version of a form, provided ``expected_version`` is still the latest.

        Raises NotFound, VersionConflict (nothing changed; re-read and retry), or InvalidInput.
        """
        _require_actor(actor)
        _require_source(source)
        document, parsed = checked_document(form)
        if not 0 < expected_version <= MAX_VERSION:  # a version no database column can hold is simply stale
            raise VersionConflict(self.get(parsed.form_id).version, form_id=parsed.form_id, expected_version=expected_version)
        now = self._now()
        heads = schema.forms
        with self._write() as conn:
            # Compare-and-set on the head row: it row-locks on PostgreSQL, and a writer that was waiting
            # re-checks the condition against the committed row, so only one of two racers can match.
            changed = conn.execute(
                update(heads)
                .where(heads.c.form_id == parsed.form_id, heads.c.latest_version == expected_version)
                .values(latest_version=expected_version + 1, nhs_number=parsed.young_person.nhs_number,
                        status=parsed.status, updated_at=now))
            if changed.rowcount != 1:
                current = conn.execute(select(heads.c.latest_version).where(heads.c.form_id == parsed.form_id)).scalar_one_or_none()
                if current is None:
                    raise NotFound(f"form {parsed.form_id} not found")
                log.debug("version conflict on form %s: expected %s, latest %s", parsed.form_id, expected_version, current)
                raise VersionConflict(current, form_id=parsed.form_id, expected_version=expected_version)
            try:
                return self._append_version(conn, parsed, document, version=expected_version + 1, now=now, actor=actor, source=source)
            except IntegrityError as exc:  # the unique (form_id, version) backstop: someone else made this version
                raise VersionConflict(expected_version + 1, form_id=parsed.form_id, expected_version=expected_version) from exc

    def _append_version(self, conn: Connection, form: ConsentForm, document: str, *, version: int, now: datetime,
                        actor: str, source: str) -> FormVersion:
        seq = self._next_number(conn, schema.FORM_VERSION_COUNTER)
        conn.execute(insert(schema.form_versions).values(
            seq=seq, form_id=form.form_id, version=version, nhs_number=form.young_person.nhs_number, status=form.status,
            document=document, recorded_at=now, actor=actor, source=source))
        # Audited in the same transaction as the write, so no stored version (local or pulled by sync) goes unrecorded.
        self._insert_audit(conn, now, actor=actor, action=STORED_FORM_VERSION,
                           resource=f"form/{form.form_id}", outcome="created" if version == 1 else "updated",
                           subject=form.young_person.nhs_number,
                           detail={"version": version, "status": form.status, "source": source})
        return FormVersion(form.form_id, version, form, now, actor, source)

    @staticmethod
    def _next_number(conn: Connection, counter: str) -> int:
        """The next number of a counter; its row stays locked until this transaction ends (see module doc)."""
        t = schema.counters
        return conn.execute(update(t).where(t.c.name == counter).values(value=t.c.value + 1).returning(t.c.value)).scalar_one()

    def get(self, form_id: str, version: int | None = None) -> FormVersion:
        """The latest version of a form, or the given version. Raises NotFound."""
        if version is not None and not 0 < version <= MAX_VERSION:
            raise NotFound(f"form {form_id} has no version {version}")
        fv, heads = schema.form_versions, schema.forms
        query = select(fv).where(fv.c.form_id == form_id)
        if version is None:
            query = query.join(heads, and_(heads.c.form_id == fv.c.form_id, heads.c.latest_version == fv.c.version))
        else:
            query = query.where(fv.c.version == version)
        with self._read() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise NotFound(f"form {form_id}" + (f" version {version}" if version is not None else "") + " not found")
        return _version_from_row(row)

    def history(self, form_id: str) -> list[FormVersion]:
        """Every version of a form, oldest first. Raises NotFound (a stored form always has version 1)."""
        fv = schema.form_versions
        with self._read() as conn:
            rows = conn.execute(select(fv).where(fv.c.form_id == form_id).order_by(fv.c.version)).all()
        if not rows:
            raise NotFound(f"form {form_id} not found")
        return [_version_from_row(r) for r in rows]

    def search(self, *, nhs_number: str | None = None, status: str | None = None, updated_since: datetime | None = None,
               updated_before: datetime | None = None, limit: int = 50, offset: int = 0) -> tuple[list[FormVersion], int]:
        """One page of latest versions matching every given filter, and how many match in all.

        Ordered by the time the latest version was stored, then form id, so paging is stable.
        ``updated_since`` is inclusive, ``updated_before`` exclusive. ``limit=0`` just counts.
        """
        _page_bounds(limit, offset)
        _require_aware(updated_since, "updated_since")
        _require_aware(updated_before, "updated_before")
        fv, heads = schema.form_versions, schema.forms
        terms = _search_filters(nhs_number, status, updated_since, updated_before)
        joined = heads.join(fv, and_(fv.c.form_id == heads.c.form_id, fv.c.version == heads.c.latest_version))
        # The total rides along on each row (a window count), so page and total come from one snapshot.
        page = (select(fv, func.count().over().label("total")).select_from(joined).where(*terms)
                .order_by(heads.c.updated_at, heads.c.form_id).limit(limit).offset(offset))
        with self._read() as conn:
            rows = conn.execute(page).all()
            total = rows[0].total if rows else conn.execute(select(func.count()).select_from(heads).where(*terms)).scalar_one()
        return [_version_from_row(r) for r in rows], total

    def versions_for_patient(self, nhs_number: str) -> list[FormVersion]:
        """Every stored version (of every form) recorded for this NHS number, oldest first."""
        return list(self.patient_versions(nhs_number).versions)

    def patient_versions(self, nhs_number: str) -> PatientVersions:
        """The patient's versions with the change marker they were read under (see PatientVersions).

        The decision engine needs them all: the version in force at a past time may not be the latest.
        This is the decision endpoint's hot path, so the answer is cached per patient and revalidated on
        every call against the global version counter (one primary-key read): any write by any process —
        another facade instance or a sync run on the same database — changes the counter and so the cache.
        """
        fv = schema.form_versions
        cache = self._patient_cache()
        marker = self._changes.marker()
        cached = cache.get(nhs_number)
        if cached is not None and cached.marker == marker:
            cache.move_to_end(nhs_number)
            return cached
        query = select(fv).where(fv.c.nhs_number == nhs_number).order_by(fv.c.recorded_at, fv.c.seq)
        with self._read() as conn:
            found = PatientVersions(marker, tuple(_version_from_row(r) for r in conn.execute(query).all()))
        cache[nhs_number] = found
        cache.move_to_end(nhs_number)
        while len(cache) > PATIENT_CACHE_SIZE:
            cache.popitem(last=False)
        return found

    def form_ids_changed_since(self, cursor: int, limit: int) -> list[tuple[int, str]]:
        """Like versions_changed_since, but only (sequence number, form id): the sync job's push walks these
        without needing the documents, so it neither parses nor holds them (memory flat in the number of forms)."""
        _page_bounds(limit, 0)
        fv = schema.form_versions
        query = select(fv.c.seq, fv.c.form_id).where(fv.c.seq > cursor).order_by(fv.c.seq).limit(limit)
        with self._read() as conn:
            return [(r.seq, r.form_id) for r in conn.execute(query).all()]

    def versions_changed_since(self, cursor: int, limit: int) -> list[tuple[int, FormVersion]]:
        """Up to ``limit`` versions stored after sequence number ``cursor``, ascending, with their numbers.

        Numbers are issued in commit order, so a sync job that saves the last number it handled never skips one.
        """
        _page_bounds(limit, 0)
        fv = schema.form_versions
        query = select(fv).where(fv.c.seq > cursor).order_by(fv.c.seq).limit(limit)
        with self._read() as conn:
            return [(r.seq, _version_from_row(r)) for r in conn.execute(query).all()]

    # ----------------------------------------------------------------------- audit

    def audit(self, *, actor: str, action: str, resource: str | None, outcome: str,
              detail: Mapping[str, Any] | AuditDetail | None = None, subject: str | None = None) -> None:
        """Append an audit record; returns once it is durable, or raises AuditWriteFailed.

        Durable means journaled on a SQLite file (see audit_journal.py; visible to queries after the next
        drain, at once to this process's own ``audit_log``), committed elsewhere (group commit with
        concurrent callers).  ``detail`` is for codes and ids; identifying fields are redacted on the way in.  ``subject`` is the
        NHS number concerned, kept in its own column so "who looked at this young person?" can be answered.
        """
        _require_actor(actor)
        row = _audit_row(self._now(), actor=actor, action=action, resource=resource, outcome=outcome,
                         detail=detail, subject=subject if subject and nhs_number.is_valid(subject) else None)
        if self._journal_directory is None:
            self._audit_writer.write(row)
            return
        try:
            self._audit_journal().append(row)
        except OSError as exc:  # JournalWriteFailed, or the journal could not be opened (disk full, permissions)
            log.error("audit journal append failed: %s", type(exc).__name__)
            raise AuditWriteFailed("the audit trail could not be written") from exc

    def _audit_journal(self) -> AuditJournal:
        if self._journal is None:
            assert self._journal_directory is not None
            with self._journal_lock:
                if self._journal is None:
                    self._journal = AuditJournal(self._journal_directory, self._drain_journal, self._journal_segment_drained)
        return self._journal

    def _drain_journal(self, segment: str, rows: Sequence[dict[str, Any]], forget: Sequence[str]) -> None:
        """Journal rows into audit_log together with the mark that their segment is in (see audit_journal.py)."""
        marks = schema.audit_journal_segments
        with self._write() as conn:
            if rows:
                # Straight to the driver's executemany: this runs for every decision, just not on its request.
                sql, columns = _driver_insert(schema.audit_log, conn.dialect)
                conn.exec_driver_sql(sql, [tuple(row[name] if convert is None else convert(row[name]) for name, convert in columns)
                                           for row in rows])
            conn.execute(insert(marks).values(name=segment, drained_at=self._now()))
            if forget:
                conn.execute(delete(marks).where(marks.c.name.in_(list(forget))))

    def _journal_segment_drained(self, segment: str) -> bool:
        marks = schema.audit_journal_segments
        with self._read() as conn:
            return conn.execute(select(marks.c.name).where(marks.c.name == segment)).first() is not None

    def flush_audit(self) -> None:
        """Make every audit record this process has written visible to queries (journal drained)."""
        if self._journal_directory is not None:
            self._audit_journal().flush()

    def _write_audit_batch(self, rows: Any) -> None:
        """Called by the audit writer under its commit lock, so one dedicated connection serves every batch."""
        rows = list(rows)
        if self._audit_conn is None:
            self._audit_conn = self._engine.connect()
        try:
            with self._audit_conn.begin():
                # A lone row goes as a single execute: executemany's set-up costs more than it saves for one.
                self._audit_conn.execute(_INSERT_AUDIT, rows[0] if len(rows) == 1 else rows)
        except SQLAlchemyError:
            self._audit_conn.close()
            self._audit_conn = None
            raise

    @staticmethod
    def _insert_audit(conn: Connection, at: datetime, *, actor: str, action: str, resource: str | None, outcome: str,
                      detail: Mapping[str, Any] | None, subject: str | None = None) -> None:
        conn.execute(insert(schema.audit_log).values(**_audit_row(at, actor=actor, action=action, resource=resource, outcome=outcome,
                                                                  detail=detail, subject=subject)))

    def audit_log(self, *, actor: str | None = None, subject: str | None = None, limit: int = 100) -> list[AuditRecord]:
        """The most recent audit records, newest first, optionally for one actor."""
        _page_bounds(limit, 0)
        self.flush_audit()
        t = schema.audit_log
        # By time: journaled rows reach the table in batches, after rows written inside data transactions.
        query = select(t).order_by(t.c.at.desc(), t.c.id.desc()).limit(limit)
        if actor is not None:
            query = query.where(t.c.actor == actor)
        if subject is not None:
            query = query.where(t.c.subject == subject)
        with self._read() as conn:
            return [_audit_from_row(r) for r in conn.execute(query).all()]

    # ----------------------------------------------------------------------- disclosures

    def record_disclosure(self, d: Disclosure, *, actor: str) -> Disclosure:
        """Keep a disclosure made under a policy exception; returns it with its new id and recorded_at.

        Raises InvalidInput (nothing stored) when the record is incomplete. The audit trail gets the id,
        the exception code and the form id, not the content.
        """
        _require_actor(actor)
        issues = disclosure_issues(d)
        if issues:
            raise InvalidInput(issues)
        now = self._now()
        stored = replace(d, id=str(uuid.uuid4()), recorded_at=now, information_types=tuple(d.information_types),
                         recipient=dict(d.recipient))
        with self._write() as conn:
            conn.execute(insert(schema.disclosures).values(
                id=stored.id, nhs_number=stored.nhs_number, form_id=stored.form_id, disclosed_at=stored.disclosed_at,
                recorded_at=now, actor=actor, document=_dumps(_disclosure_json(stored))))
            self._insert_audit(conn, now, actor=actor, action=STORED_DISCLOSURE, subject=stored.nhs_number,
                               resource=f"disclosure/{stored.id}", outcome="recorded",
                               detail={"exception": stored.exception, "formId": stored.form_id,
                                       "informationTypeCount": len(stored.information_types)})
        return stored

    def disclosures(self, nhs_number: str) -> list[Disclosure]:
        """Every disclosure recorded for one NHS number, in the order they were made."""
        t = schema.disclosures
        query = select(t).where(t.c.nhs_number == nhs_number).order_by(t.c.disclosed_at, t.c.recorded_at, t.c.id)
        with self._read() as conn:
            return [_disclosure_from_row(r) for r in conn.execute(query).all()]

    # ----------------------------------------------------------------------- sync state

    def get_cursor(self, name: str) -> str | None:
        """A sync job's saved position (opaque to the store), or None before its first run."""
        t = schema.sync_cursors
        with self._read() as conn:
            return conn.execute(select(t.c.value).where(t.c.name == name)).scalar_one_or_none()

    def set_cursor(self, name: str, value: str) -> None:
        """Save a sync job's position; a crash after this resumes from here."""
        with self._write() as conn:
            _upsert(conn, schema.sync_cursors, {"name": name, "value": value, "updated_at": self._now()}, key="name")

    def sync_record(self, form_id: str) -> SyncRecord | None:
        """What the sync job last recorded for a form, or None if it never has."""
        t = schema.sync_records
        with self._read() as conn:
            row = conn.execute(select(t).where(t.c.form_id == form_id)).first()
        return SyncRecord(**row._asdict()) if row is not None else None

    def save_sync_record(self, rec: SyncRecord) -> None:
        """Insert or replace the sync record for ``rec.form_id``."""
        values = {"form_id": rec.form_id, "pushed_version": rec.pushed_version, "remote_id": rec.remote_id,
                  "remote_version_id": rec.remote_version_id, "remote_last_updated": rec.remote_last_updated,
                  "pulled_version": rec.pulled_version, "mapping_version": rec.mapping_version}
        with self._write() as conn:
            _upsert(conn, schema.sync_records, values, key="form_id")

    def form_ids_synced_with_mapping_before(self, mapping_version: int, after: str, limit: int) -> list[str]:
        """Form ids (ascending, after ``after``) whose Consent on the server was written by a mapping older than
        ``mapping_version`` (a NULL version counts as 1), so the sync job can rewrite them in the current shape."""
        _page_bounds(limit, 0)
        t = schema.sync_records
        older = or_(t.c.mapping_version.is_(None), t.c.mapping_version < mapping_version) if mapping_version > 1 \
            else t.c.mapping_version < mapping_version
        query = (select(t.c.form_id).where(t.c.remote_id.is_not(None), t.c.form_id > after, older)
                 .order_by(t.c.form_id).limit(limit))
        with self._read() as conn:
            return [r.form_id for r in conn.execute(query).all()]

    # ----------------------------------------------------------------------- leases

    def acquire_lock(self, name: str, owner: str, ttl_seconds: int) -> bool:
        """Take (or renew) the lease ``name`` for ``ttl_seconds``; False if another owner holds an unexpired one.

        A lease rather than a session lock, so a crashed holder blocks others for at most the TTL.
        Owners should be unique per run (e.g. host + pid + uuid); the same owner calling again renews.
        """
        _require_actor(owner)
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        now = self._now()
        t = schema.locks
        with self._write() as conn:
            _upsert(conn, t, {"name": name, "owner": owner, "expires_at": now + timedelta(seconds=ttl_seconds)}, key="name",
                    only_if=or_(t.c.expires_at <= now, t.c.owner == owner))
            holder = conn.execute(select(t.c.owner).where(t.c.name == name)).scalar_one()
        return holder == owner

    def release_lock(self, name: str, owner: str) -> None:
        """Give the lease back early; does nothing if ``owner`` no longer holds it (it expired and was taken)."""
        t = schema.locks
        with self._write() as conn:
            result: CursorResult[Any] = conn.execute(delete(t).where(t.c.name == name, t.c.owner == owner))
        log.debug("lease %s released: %s", name, bool(result.rowcount))
