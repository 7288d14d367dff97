"""The change marker the decision hot path reads on every request, and the SQLite connection settings.

Every decision asks "is the cached patient still current?"; through
SQLAlchemy's pool that read costs a checkout, events and a transaction — more
than the SQLite work itself.  On an embedded SQLite file it runs on a raw
connection kept open per thread.  Anything that is not a SQLite file
(PostgreSQL, an in-memory database) keeps the pooled path.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from . import migrations as schema

#: How long a SQLite writer waits for the file lock before giving up.
SQLITE_BUSY_TIMEOUT_SECONDS = 30.0
#: Execution option marking a pooled connection's transaction as read-only (plain BEGIN, not BEGIN IMMEDIATE).
READ_ONLY_OPTION = "casus_read_only"

_CURRENT_VERSION_SEQ = select(schema.counters.c.value).where(schema.counters.c.name == schema.FORM_VERSION_COUNTER)


def sqlite_file(engine: Engine) -> str | None:
    """The database file behind a SQLite engine, or None (another engine, or in-memory)."""
    database = engine.url.database or ""
    if engine.dialect.name == "sqlite" and database not in ("", ":memory:"):
        return str(Path(database).expanduser())
    return None


def _open(path: str) -> sqlite3.Connection:
    # Autocommit at the module level: the SQL below says where transactions begin and end.
    conn = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_SECONDS, check_same_thread=False, isolation_level=None)
    # synchronous is per connection: the same durability as the pool's connections (see store._sqlite_on_connect).
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


class CounterMarker:
    """Any engine: the form-version counter, read in one primary-key lookup (changes with every stored version)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def marker(self) -> Any:
        with self._engine.connect() as conn:
            conn.execution_options(**{READ_ONLY_OPTION: True})
            return conn.execute(_CURRENT_VERSION_SEQ).scalar_one()

    def close(self) -> None:
        pass


class SqliteCounterMarker:
    """SQLite file: the same counter, read on a per-thread raw connection kept open for the purpose.

    Through the pool a read costs a checkout, events and a transaction (~0.15 ms); on a dedicated raw
    connection in autocommit it is a few microseconds, and still sees every commit by any process.
    (``PRAGMA data_version`` would be cheaper still, but it changes on every commit, audit rows included,
    so it would invalidate the cache on every decision.)
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def marker(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _open(self._path)
            self._local.conn = conn
            with self._lock:
                self._opened.append(conn)
        return conn.execute("SELECT value FROM counters WHERE name = ?", (schema.FORM_VERSION_COUNTER,)).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            for conn in self._opened:
                conn.close()
            self._opened.clear()


def change_marker(engine: Engine) -> CounterMarker | SqliteCounterMarker:
    path = sqlite_file(engine)
    return CounterMarker(engine) if path is None else SqliteCounterMarker(path)
