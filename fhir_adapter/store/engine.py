"""The database connection the rest of the store works through: engines, SQLite settings, transactions, the change marker.

One code path (SQLAlchemy Core) serves both engines:

* **SQLite**, the embedded default: the file is created on first use.  Write
  transactions start with ``BEGIN IMMEDIATE`` so writers queue on the file lock
  instead of failing half-way; WAL mode lets readers carry on meanwhile.
* **PostgreSQL** (``postgresql+psycopg://...``): row locks and unique constraints
  (see ``forms.py``) do the same job.

The *change marker* answers "has any form version been stored since I last
looked?" for the decision path's one cache (``forms.py``).  It is the form-version
counter, which every stored version increments in its own transaction, so a
write by any process (another facade instance, a sync run) moves it at once.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import URL, ColumnElement, Connection, Engine, Table, create_engine, event, make_url, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool

from . import schema

log = logging.getLogger("fhir_adapter.store")

#: How long a SQLite writer waits for the file lock before giving up.
SQLITE_BUSY_TIMEOUT_SECONDS = 30.0
#: Execution option marking a pooled connection's transaction as read-only (plain BEGIN, not BEGIN IMMEDIATE).
READ_ONLY_OPTION = "casus_read_only"
#: Upper bound on one page of results, so no caller can ask the database for everything at once.
MAX_PAGE_SIZE = 1000
#: Write-ahead log pages after which a commit copies the log into the database file (SQLite's default: 1,000).
#: Every decision's audit record is a commit of about four pages, and the commit that crosses the mark runs the
#: checkpoint and its sync on its request: at 1,000 that is one decision in 250, and it lands in the p99; at
#: 4,000 one in a thousand, for a log of at most about 16 MB.
WAL_AUTOCHECKPOINT_PAGES = 4000

Clock = Callable[[], datetime]


class StoreError(Exception):
    """Base of everything the store raises on purpose."""


# --------------------------------------------------------------------------- small checks shared by the parts


def utc_now() -> datetime:
    return datetime.now(UTC)


def require_aware(value: datetime | None, name: str) -> None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")


def require_actor(actor: str) -> None:
    if not isinstance(actor, str) or not actor.strip():
        raise ValueError("actor must be a non-empty string")


def page_bounds(limit: int, offset: int) -> None:
    if not 0 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 0 and {MAX_PAGE_SIZE}")
    if offset < 0:
        raise ValueError("offset must not be negative")


#: One encoder for every call: json.dumps with options builds a new encoder each time, and an audit row is
#: serialised on every decision.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def dumps(document: Any) -> str:
    """Canonical JSON text: the same content always serialises to the same string."""
    return _CANONICAL.encode(document)


def upsert(conn: Connection, table: Table, values: dict[str, Any], *, key: str | tuple[str, ...], only_if: ColumnElement[bool] | None = None) -> None:
    """INSERT, or UPDATE the row with the same ``key`` column(s) (SQLite and PostgreSQL share SQLAlchemy's ON CONFLICT API)."""
    keys = (key,) if isinstance(key, str) else key
    stmt = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table).values(**values)
    changes = {name: stmt.excluded[name] for name in values if name not in keys}
    conn.execute(stmt.on_conflict_do_update(index_elements=list(keys), set_=changes, where=only_if))


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
        cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        # cache_size and mmap_size stay at SQLite's defaults (2 MB of cache, no memory map).  Every request commits
        # an audit row on the audit trail's own connection, and in WAL mode a connection that finds another's commit
        # empties its page cache (and with a memory map, unmaps it) before its next read: a larger cache holds no
        # more from one request to the next, and mapping the file again made a form's history read two to three
        # times slower (benchmarks/bench_per_patient.py).  Reads are index searches of a few pages, which the
        # operating system's cache serves.
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    # Writers take the file's write lock up front: they wait their turn (busy timeout) instead of
    # failing at commit after reading a snapshot that another writer has since changed.
    connection.exec_driver_sql("BEGIN" if connection.get_execution_options().get(READ_ONLY_OPTION) else "BEGIN IMMEDIATE")


def _private_sqlite_file(path: Path) -> None:
    """Create the database file 0600 in a 0700 folder, and warn when an existing one is open to others.

    The file holds young people's names and choices; SQLite creates a new file with the umask's mode
    (usually 0644) and gives its ``-wal`` and ``-shm`` files the database file's mode, so creating the
    database file 0600 first makes all three private.  Existing modes are the operator's to change: a
    warning, not a refusal, since a shared group may be deliberate.
    """
    folder = path.parent
    if not folder.exists():
        folder.mkdir(parents=True, mode=0o700)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    for place, kind in ((folder, "folder"), (path, "file")):
        mode = place.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("the SQLite database %s is open to other users (mode %o); chmod %s it", kind, mode, "700" if kind == "folder" else "600")


def _sqlite_engine(url: URL) -> Engine:
    database = url.database or ""
    in_memory = database in ("", ":memory:")
    if not in_memory:
        _private_sqlite_file(Path(database).expanduser())
    # An in-memory database exists only on its one connection (useful for single-threaded tests only).
    pool: dict[str, Any] = {"poolclass": StaticPool} if in_memory else {}
    # hide_parameters: even with SQL logging switched on, bound values (NHS numbers, documents) never reach a log.
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_SECONDS}, hide_parameters=True, **pool)
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


def sqlite_file(engine: Engine) -> str | None:
    """The database file behind a SQLite engine, or None (another engine, or in-memory)."""
    database = engine.url.database or ""
    if engine.dialect.name == "sqlite" and database not in ("", ":memory:"):
        return str(Path(database).expanduser())
    return None


# --------------------------------------------------------------------------- the change marker

_CURRENT_VERSION_SEQ = select(schema.counters.c.value).where(schema.counters.c.name == schema.FORM_VERSION_COUNTER)


def single_statement_engine(engine: Engine) -> Engine:
    """The engine (same pool) for reads of one statement: on PostgreSQL in autocommit, so a read is one round
    trip instead of three (BEGIN, the SELECT, ROLLBACK), and one statement sees one snapshot anyway."""
    return engine.execution_options(isolation_level="AUTOCOMMIT") if engine.dialect.name == "postgresql" else engine


class _PooledMarker:
    """Any engine: the form-version counter, read in one primary-key lookup on a pooled connection."""

    def __init__(self, engine: Engine) -> None:
        self._engine = single_statement_engine(engine)

    def read(self) -> int:
        with self._engine.connect() as conn:
            conn.execution_options(**{READ_ONLY_OPTION: True})
            return int(conn.execute(_CURRENT_VERSION_SEQ).scalar_one())

    def close(self) -> None:
        pass


class _SqliteMarker:
    """SQLite file: the same counter, read on a raw connection per thread, kept open for the purpose.

    Through the pool a read costs a checkout, events and a transaction (~0.15 ms); on a raw connection in
    autocommit it is a few microseconds, and it still sees every commit by any process.  (``PRAGMA
    data_version`` would be cheaper still, but it changes on every commit, audit rows included, so it
    would empty the cache on every decision.)
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def read(self) -> int:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._path, timeout=SQLITE_BUSY_TIMEOUT_SECONDS, check_same_thread=False, isolation_level=None)
            self._local.conn = conn
            with self._lock:
                self._opened.append(conn)
        return int(conn.execute("SELECT value FROM counters WHERE name = ?", (schema.FORM_VERSION_COUNTER,)).fetchone()[0])

    def close(self) -> None:
        with self._lock:
            for conn in self._opened:
                conn.close()
            self._opened.clear()


# --------------------------------------------------------------------------- the database


class Database:
    """An engine with the store's transaction discipline, its clock and its change marker; shared by the parts."""

    def __init__(self, engine: Engine, *, clock: Clock | None = None) -> None:
        self.engine = engine
        self._single_statement = single_statement_engine(engine)
        self._clock = clock or utc_now
        path = sqlite_file(engine)
        self._marker = _PooledMarker(engine) if path is None else _SqliteMarker(path)

    @classmethod
    def open(cls, url: str, *, clock: Clock | None = None) -> Database:
        """Connect, and bring the schema up to date (safe to run from several processes at once)."""
        engine = make_engine(url)
        db = cls(engine, clock=clock)
        try:
            with db.write() as conn:
                applied = schema.migrate(conn, now=db.now)
        except BaseException:
            engine.dispose()
            raise
        log.info("store opened on %s; migrations applied: %s", engine.dialect.name, applied or "none")
        return db

    @property
    def backend(self) -> str:
        """'sqlite' or 'postgresql'."""
        return self.engine.dialect.name

    def now(self) -> datetime:
        now = self._clock()
        require_aware(now, "the clock's time")
        return now.astimezone(UTC)

    def change_marker(self) -> int:
        """The form-version counter: equal values mean no version was stored in between, by any process."""
        return self._marker.read()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(**{READ_ONLY_OPTION: True})
            with conn.begin():
                yield conn

    @contextmanager
    def read_one(self) -> Iterator[Connection]:
        """For a read of exactly one statement (a snapshot of its own): no transaction round trips on PostgreSQL."""
        with self._single_statement.connect() as conn:
            conn.execution_options(**{READ_ONLY_OPTION: True})
            yield conn

    def ping(self) -> bool:
        """True when the database answers; for the readiness endpoint."""
        try:
            with self.read() as conn:
                conn.execute(select(1))
            return True
        except SQLAlchemyError:
            log.warning("store ping failed")
            return False

    def close(self) -> None:
        self._marker.close()
        self.engine.dispose()
