"""The store's schema and the short, versioned list of migrations that builds it.

Why not Alembic: the schema is small and owned by one package, and the adapter
must upgrade itself at start-up on both the embedded SQLite file and a shared
PostgreSQL database with nothing to install or run by hand.  A numbered list of
Python steps, recorded in ``schema_version``, does that in a page of code.

How it stays safe:

* every pending step runs in **one transaction** together with its
  ``schema_version`` row, so a crash leaves the schema at the old version,
  never half-way (both engines have transactional DDL);
* two processes opening the same PostgreSQL database at once serialise on a
  transaction-level advisory lock; on SQLite the transaction starts with
  ``BEGIN IMMEDIATE`` (see ``engine.py``), which takes the file's write lock;
* running it again is a no-op, and a database newer than this code is refused
  rather than written with an older idea of the schema.

Adding a migration: append ``Migration(N, ...)`` with explicit DDL for the
change and update the table definitions below to match (they describe the
*current* schema, which the store queries).  Version 1 creates the tables as
they were at version 1, so once a later step alters a table, give version 1 a
frozen copy of the old definition.  ``test_store`` checks the migrated schema
against these definitions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.types import TypeDecorator

#: Key of the PostgreSQL advisory lock that serialises migrations: any fixed signed 64-bit number will do; this one spells "CASUSMIG".
MIGRATION_LOCK_KEY = int.from_bytes(b"CASUSMIG", "big")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that goes in as an aware datetime and always comes out aware, in UTC.

    PostgreSQL keeps the zone (``timestamptz``); SQLite has no zone type, so the
    value is normalised to UTC before it is written and UTC is re-attached on the
    way out.  Either way callers never see a naive datetime, and comparisons in
    SQL are between UTC instants.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return value.astimezone(UTC) if dialect.name == "postgresql" else value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", String(200), nullable=False),
    Column("applied_at", UTCDateTime, nullable=False),
)

#: One row per form: its latest version and the fields searched on, so "latest only" needs no GROUP BY
#: and an update can lock exactly one row (SELECT ... FOR UPDATE) while it checks the expected version.
forms = Table(
    "forms",
    metadata,
    Column("form_id", String(64), primary_key=True),
    Column("latest_version", Integer, nullable=False),
    Column("nhs_number", String(10), nullable=False, index=True),
    Column("status", String(32), nullable=False, index=True),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_forms_updated_at_form_id", "updated_at", "form_id"),
)

#: Every version ever stored.  ``seq`` is the global change sequence that sync pushes from; the unique
#: (form_id, version) pair is the last line of defence against two writers making the same version.
form_versions = Table(
    "form_versions",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("form_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("nhs_number", String(10), nullable=False, index=True),
    Column("status", String(32), nullable=False),
    Column("document", Text, nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("source", String(16), nullable=False),
    UniqueConstraint("form_id", "version", name="uq_form_versions_form_id_version"),
)

#: Named counters handed out under a row lock, so numbers become visible in the order they were issued
#: (a plain sequence/identity can commit out of order on PostgreSQL, and a sync cursor would skip a change).
counters = Table(
    "counters",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

#: Written on every decision, so it carries one index besides its key: ``subject``, for "who looked at this
#: young person's choices?".  Newest first is key order (ids are handed out as rows are written).
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(100), nullable=False),
    Column("resource", String(200), nullable=True),
    Column("outcome", String(50), nullable=False),
    Column("detail", Text, nullable=False),
    # The NHS number whose consent was read or decided on: the audit must answer "who looked at this young
    # person's choices?". The audit table is access-controlled data, not a log; nothing else identifying goes here.
    Column("subject", String(10), nullable=True, index=True),
)

#: audit_log as migration 1 created it (frozen: a later migration drops the indexes on at and actor).
_audit_log_v1 = Table(
    "audit_log",
    MetaData(),
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False, index=True),
    Column("actor", String(200), nullable=False, index=True),
    Column("action", String(100), nullable=False),
    Column("resource", String(200), nullable=True),
    Column("outcome", String(50), nullable=False),
    Column("detail", Text, nullable=False),
    Column("subject", String(10), nullable=True, index=True),
)

disclosures = Table(
    "disclosures",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("nhs_number", String(10), nullable=False, index=True),
    Column("form_id", String(64), nullable=True),
    Column("disclosed_at", UTCDateTime, nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("document", Text, nullable=False),
)

#: A FHIR server's normalised base URL (``sync_state.server_key``) is part of every key of the sync state, so
#: pointing the job at another server starts from nothing there instead of reusing this server's positions.
#: Rows from before state was kept per server carry ``LEGACY_SERVER``.
SERVER_KEY_LENGTH = 400

sync_cursors = Table(
    "sync_cursors",
    metadata,
    Column("server", String(SERVER_KEY_LENGTH), primary_key=True),
    Column("name", String(100), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

#: sync_cursors as migration 1 created it (frozen: migration 5 keys it by server).
_sync_cursors_v1 = Table(
    "sync_cursors",
    MetaData(),
    Column("name", String(100), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

sync_records = Table(
    "sync_records",
    metadata,
    Column("server", String(SERVER_KEY_LENGTH), primary_key=True),
    Column("form_id", String(64), primary_key=True),
    Column("pushed_version", Integer, nullable=True),
    Column("remote_id", String(200), nullable=True),
    Column("remote_version_id", String(200), nullable=True),
    Column("remote_last_updated", String(64), nullable=True),
    Column("pulled_version", Integer, nullable=True),
    # The mapping version of the Consent the server holds as we last knew it (NULL: written before versions were
    # recorded, read as 1); sync re-pushes every form whose Consent was written by an older mapping.
    Column("mapping_version", Integer, nullable=True),
)

#: sync_records as migration 1 created it (frozen: migration 4 adds mapping_version).
_sync_records_v1 = Table(
    "sync_records",
    MetaData(),
    Column("form_id", String(64), primary_key=True),
    Column("pushed_version", Integer, nullable=True),
    Column("remote_id", String(200), nullable=True),
    Column("remote_version_id", String(200), nullable=True),
    Column("remote_last_updated", String(64), nullable=True),
    Column("pulled_version", Integer, nullable=True),
)

locks = Table(
    "locks",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("owner", String(200), nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
)

#: Problems a sync run found that stay until they are solved: a conflict (both sides changed) or a rejection
#: (the server refused our Consent, or holds one that breaks the profile).  ``key`` is the form id, or
#: ``Consent/<server id>`` for a server Consent without a usable form id.  A row is removed when the form or
#: the server copy changes so that the problem is gone; every run and ``sync status`` list what remains.
sync_problems = Table(
    "sync_problems",
    metadata,
    Column("server", String(SERVER_KEY_LENGTH), primary_key=True),
    Column("key", String(300), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("form_id", String(64), nullable=True),
    Column("remote_id", String(200), nullable=True),
    Column("remote_version_id", String(200), nullable=True),
    Column("local_version", Integer, nullable=True),
    Column("detail", Text, nullable=False),
    Column("first_seen", UTCDateTime, nullable=False),
    Column("last_seen", UTCDateTime, nullable=False),
)

#: One row per sync run that got as far as opening the store: what ``sync status`` shows as the last run and
#: what the facade's metrics count (the counts the metrics add up are columns).  ``summary`` is the run's JSON
#: summary (ids and counts only).
sync_runs = Table(
    "sync_runs",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("server", String(SERVER_KEY_LENGTH), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime, nullable=False),
    Column("exit_code", Integer, nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("pushed", Integer, nullable=False),
    Column("pulled", Integer, nullable=False),
    Column("duration_seconds", Float, nullable=False),
    Column("summary", Text, nullable=False),
    Index("ix_sync_runs_server_ended_at", "server", "ended_at"),
)

#: Signed-in sessions of the consent pages, shared by every process serving one database.  The browser holds
#: the random session id; only its SHA-256 digest is kept here, so a copy of the table signs nobody in.
page_sessions = Table(
    "page_sessions",
    metadata,
    Column("id_digest", String(64), primary_key=True),
    Column("actor", String(200), nullable=False),
    Column("display_name", String(200), nullable=False),
    Column("scopes", String(1000), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("last_seen_at", UTCDateTime, nullable=False),
)

#: One row per failed sign-in per key (a digest of the username typed, or of the client address), kept for
#: the throttling window so every process counts the same failures.
sign_in_failures = Table(
    "sign_in_failures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key_digest", String(64), nullable=False),
    Column("at", UTCDateTime, nullable=False, index=True),
    Index("ix_sign_in_failures_key_digest_at", "key_digest", "at"),
)


FORM_VERSION_COUNTER = "form_versions"
#: The server of sync state kept before it was keyed by server (which server it was is not known).
LEGACY_SERVER = ""


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _v1_initial_schema(conn: Connection) -> None:
    metadata.create_all(conn, tables=[forms, form_versions, counters, disclosures, locks])
    _audit_log_v1.create(conn)
    _sync_cursors_v1.create(conn)
    _sync_records_v1.create(conn)
    conn.execute(insert(counters).values(name=FORM_VERSION_COUNTER, value=0))


def _v2_audit_journal(conn: Connection) -> None:
    # Frozen copy: the table an earlier way of writing the audit trail kept, dropped again by version 3.
    Table(
        "audit_journal_segments", MetaData(), Column("name", String(100), primary_key=True), Column("drained_at", UTCDateTime, nullable=False)
    ).create(conn)


def _v3_drop_audit_journal(conn: Connection) -> None:
    conn.execute(text("DROP TABLE IF EXISTS audit_journal_segments"))


def _v4_sync_mapping_version(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE sync_records ADD COLUMN mapping_version INTEGER"))


def _rekey_by_server(conn: Connection, table: Table) -> None:
    """Rebuild ``table`` with the server as the first key column; existing rows keep ``LEGACY_SERVER``.

    A copy without constraints is taken first and the original dropped, so the new table's primary key can
    take the original's constraint name (PostgreSQL keeps constraint names with a renamed table).
    """
    name, copy = table.name, f"{table.name}_before_v5"
    old_columns = ", ".join(c.name for c in table.columns if c.name != "server")
    conn.execute(text(f"CREATE TABLE {copy} AS SELECT {old_columns} FROM {name}"))
    conn.execute(text(f"DROP TABLE {name}"))
    table.create(conn)
    conn.execute(text(f"INSERT INTO {name} (server, {old_columns}) SELECT :legacy, {old_columns} FROM {copy}"), {"legacy": LEGACY_SERVER})
    conn.execute(text(f"DROP TABLE {copy}"))


def _v5_sync_per_server(conn: Connection) -> None:
    _rekey_by_server(conn, sync_cursors)
    _rekey_by_server(conn, sync_records)
    metadata.create_all(conn, tables=[sync_problems, sync_runs])


def _v6_audit_write_indexes(conn: Connection) -> None:
    # Every decision writes an audit row; each index is one more page to change in its commit.  Reads order by
    # id and filter by subject (indexed); a filter by actor walks back from the newest row.
    conn.execute(text("DROP INDEX IF EXISTS ix_audit_log_at"))
    conn.execute(text("DROP INDEX IF EXISTS ix_audit_log_actor"))


def _v7_sessions_in_the_store(conn: Connection) -> None:
    metadata.create_all(conn, tables=[page_sessions, sign_in_failures])


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "forms and versions, audit, disclosures, sync state, leases", _v1_initial_schema),
    Migration(2, "drained audit journal segments", _v2_audit_journal),
    Migration(3, "audit records committed directly: journal segments dropped", _v3_drop_audit_journal),
    Migration(4, "mapping version of each Consent sync pushed", _v4_sync_mapping_version),
    Migration(5, "sync state per FHIR server; outstanding sync problems; sync runs", _v5_sync_per_server),
    Migration(6, "audit log: indexes on at and actor dropped (one write per decision, fewer pages)", _v6_audit_write_indexes),
    Migration(7, "consent page sessions and failed sign-ins, shared by every process", _v7_sessions_in_the_store),
)


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer adapter; writing to it with this one could corrupt it."""


def latest_version(migrations: tuple[Migration, ...] = MIGRATIONS) -> int:
    """The schema version this code expects.

    >>> latest_version((Migration(1, "a", print), Migration(2, "b", print)))
    2
    """
    return max((m.version for m in migrations), default=0)


def pending(current: int, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[Migration]:
    """The steps still to run on a database at ``current``, in order.

    >>> [m.version for m in pending(1, (Migration(2, "b", print), Migration(1, "a", print), Migration(3, "c", print)))]
    [2, 3]
    """
    return sorted((m for m in migrations if m.version > current), key=lambda m: m.version)


def _take_migration_lock(conn: Connection) -> None:
    """Serialise concurrent migrators until this transaction ends (SQLite's BEGIN IMMEDIATE already did)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})


def current_version(conn: Connection) -> int:
    """The highest applied migration, 0 for an empty database."""
    if not conn.dialect.has_table(conn, schema_version.name):
        return 0
    return conn.execute(select(func.coalesce(func.max(schema_version.c.version), 0))).scalar_one()


def migrate(conn: Connection, migrations: tuple[Migration, ...] = MIGRATIONS, *, now: Callable[[], datetime] | None = None) -> list[int]:
    """Bring the schema up to date inside the caller's (write) transaction; returns the versions applied.

    The caller commits: the schema changes and their ``schema_version`` rows land together or not at all.
    """
    clock = now or (lambda: datetime.now(UTC))
    _take_migration_lock(conn)
    schema_version.create(conn, checkfirst=True)
    current = current_version(conn)
    if current > latest_version(migrations):
        raise SchemaTooNew(f"database schema is at version {current}; this adapter knows up to {latest_version(migrations)}")
    applied = []
    for step in pending(current, migrations):
        step.apply(conn)
        conn.execute(insert(schema_version).values(version=step.version, description=step.description, applied_at=clock()))
        applied.append(step.version)
    return applied


def table_columns() -> dict[str, set[str]]:
    """Column names per table as this module defines them (what the store's queries rely on)."""
    return {name: {c.name for c in table.columns} for name, table in metadata.tables.items()}


def describe(conn: Connection) -> dict[str, Any]:
    """Column names per table as the database actually has them (for drift checks and diagnostics)."""
    inspector = inspect(conn)
    return {name: {c["name"] for c in inspector.get_columns(name)} for name in inspector.get_table_names()}
