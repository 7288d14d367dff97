"""What the sync job keeps between runs, per FHIR server: cursors, a record per form, outstanding problems, runs; and leases.

Everything but the lease is keyed by the server (``server_key`` of its base URL): the same database synced with
a staging server and then a production server keeps two independent sets of positions, so the second server
starts with a full sync instead of inheriting the first one's "already pushed".

A ``SyncRecord`` field is a ``sync_records`` column of the same name: adding one is a field here, a column in
``schema.py`` and a migration that adds it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import CursorResult, delete, func, or_, select, update

from . import schema
from .engine import Database, dumps, page_bounds, require_actor, upsert

log = logging.getLogger("fhir_adapter.store")

ProblemKind = Literal["conflict", "rejected"]


def server_key(base_url: str) -> str:
    """The FHIR server a base URL names, spelt one way: lower-case scheme and host, no default port, no trailing slash.

    >>> server_key("HTTPS://FHIR.Example.org:443/R4/")
    'https://fhir.example.org/R4'
    >>> server_key("http://127.0.0.1:8080/fhir")
    'http://127.0.0.1:8080/fhir'
    """
    parts = urlsplit(base_url.strip())
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    default_port = {"https": 443, "http": 80}.get(scheme)
    netloc = host if parts.port is None or parts.port == default_port else f"{host}:{parts.port}"
    key = urlunsplit((scheme, netloc, parts.path.rstrip("/"), "", ""))
    if len(key) > schema.SERVER_KEY_LENGTH:
        raise ValueError(f"a FHIR base URL longer than {schema.SERVER_KEY_LENGTH} characters is not supported")
    return key


@dataclass(frozen=True)
class SyncRecord:
    """What the sync job last knew about one form on both sides, with one server."""

    server: str
    form_id: str
    pushed_version: int | None = None
    remote_id: str | None = None
    remote_version_id: str | None = None
    remote_last_updated: str | None = None
    pulled_version: int | None = None
    mapping_version: int | None = None  # of the Consent the server holds; None (rows from before it was kept) means 1


@dataclass(frozen=True)
class SyncProblem:
    """A conflict or rejection that stays reported, run after run, until the form or the server copy changes."""

    kind: ProblemKind
    key: str  # the form id, or "Consent/<server id>" for a server Consent with no usable form id
    form_id: str | None
    remote_id: str | None
    remote_version_id: str | None
    local_version: int | None
    detail: dict[str, Any]  # {"reason": ...} for a conflict, {"outcome": OperationOutcome} for a rejection
    first_seen: datetime | None = None
    last_seen: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {}
        if self.form_id:
            entry["formId"] = self.form_id
        if self.remote_id:
            entry["remoteId"] = self.remote_id
        if self.remote_version_id:
            entry["remoteVersionId"] = self.remote_version_id
        if self.local_version is not None:
            entry["localVersion"] = self.local_version
        entry.update(self.detail)
        if self.first_seen is not None:
            entry["since"] = self.first_seen.isoformat()
        return entry


@dataclass(frozen=True)
class SyncRun:
    """One finished (or refused) run as ``sync status`` and the metrics see it."""

    run_id: str
    server: str
    started_at: datetime
    ended_at: datetime
    exit_code: int
    outcome: str
    summary: dict[str, Any]

    @property
    def pushed(self) -> int:
        return int(self.summary.get("pushed", 0))

    @property
    def pulled(self) -> int:
        return int(self.summary.get("pulled", 0))

    @property
    def duration_seconds(self) -> float:
        return float(self.summary.get("durationSeconds", 0.0))


@dataclass(frozen=True)
class RunTotals:
    server: str
    outcome: str
    runs: int
    pushed: int
    pulled: int
    duration_seconds: float


@dataclass(frozen=True)
class LeaseHolder:
    owner: str
    expires_at: datetime


class SyncState:
    def __init__(self, db: Database) -> None:
        self._db = db

    # ----------------------------------------------------------------------- cursors

    def get_cursor(self, server: str, name: str) -> str | None:
        """A sync job's saved position with ``server`` (opaque to the store), or None before its first run there."""
        t = schema.sync_cursors
        with self._db.read() as conn:
            return conn.execute(select(t.c.value).where(t.c.server == server, t.c.name == name)).scalar_one_or_none()

    def set_cursor(self, server: str, name: str, value: str) -> None:
        """Save a sync job's position with ``server``; a crash after this resumes from here."""
        with self._db.write() as conn:
            upsert(conn, schema.sync_cursors, {"server": server, "name": name, "value": value, "updated_at": self._db.now()}, key=("server", "name"))

    def clear_cursors(self, server: str) -> None:
        """Forget every position with ``server``, so the next run walks both sides from the start (a full sync)."""
        t = schema.sync_cursors
        with self._db.write() as conn:
            conn.execute(delete(t).where(t.c.server == server))

    # ----------------------------------------------------------------------- per-form records

    def sync_record(self, server: str, form_id: str) -> SyncRecord | None:
        """What the sync job last recorded for a form with ``server``, or None if it never has."""
        t = schema.sync_records
        names = [f.name for f in dataclasses.fields(SyncRecord)]
        with self._db.read() as conn:
            row = conn.execute(select(*(t.c[name] for name in names)).where(t.c.server == server, t.c.form_id == form_id)).first()
        return SyncRecord(**row._asdict()) if row is not None else None

    def save_sync_record(self, rec: SyncRecord) -> None:
        """Insert or replace the sync record for ``rec.form_id`` with ``rec.server``."""
        with self._db.write() as conn:
            upsert(conn, schema.sync_records, dataclasses.asdict(rec), key=("server", "form_id"))

    def form_ids_on_server(self, server: str, after: str, limit: int) -> list[str]:
        """Form ids (ascending, after ``after``) whose Consent ``server`` is recorded as holding, so the sync job can
        check each is still there, still the same, and in the current mapping's shape."""
        page_bounds(limit, 0)
        t = schema.sync_records
        query = select(t.c.form_id).where(t.c.server == server, t.c.remote_id.is_not(None), t.c.form_id > after).order_by(t.c.form_id).limit(limit)
        with self._db.read() as conn:
            return [r.form_id for r in conn.execute(query).all()]

    def form_ids_synced_with_mapping_before(self, server: str, mapping_version: int, after: str, limit: int) -> list[str]:
        """Form ids (ascending, after ``after``) whose Consent on ``server`` was written by a mapping older than
        ``mapping_version`` (a NULL version counts as 1), so the sync job can rewrite them in the current shape."""
        page_bounds(limit, 0)
        t = schema.sync_records
        older = (
            or_(t.c.mapping_version.is_(None), t.c.mapping_version < mapping_version)
            if mapping_version > 1
            else t.c.mapping_version < mapping_version
        )
        query = (
            select(t.c.form_id).where(t.c.server == server, t.c.remote_id.is_not(None), t.c.form_id > after, older).order_by(t.c.form_id).limit(limit)
        )
        with self._db.read() as conn:
            return [r.form_id for r in conn.execute(query).all()]

    def form_id_of_remote(self, server: str, remote_id: str) -> str | None:
        """The form whose Consent on ``server`` has this server id, if we recorded one."""
        t = schema.sync_records
        with self._db.read() as conn:
            return conn.execute(select(t.c.form_id).where(t.c.server == server, t.c.remote_id == remote_id).limit(1)).scalar_one_or_none()

    def forms_waiting(self, server: str) -> int:
        """Forms with a change ``server`` has not received: never synced with it, or a local version newer than the
        one pushed (the same rule as the sync job's ``has_unpushed_change``)."""
        f, v, r = schema.forms, schema.form_versions, schema.sync_records
        latest = f.join(v, (v.c.form_id == f.c.form_id) & (v.c.version == f.c.latest_version)).outerjoin(
            r, (r.c.server == server) & (r.c.form_id == f.c.form_id)
        )
        waiting = or_(r.c.form_id.is_(None), (v.c.source == "local") & (f.c.latest_version > func.coalesce(r.c.pushed_version, 0)))
        with self._db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(latest).where(waiting)).scalar_one())

    def servers(self) -> list[str]:
        """Every server the store keeps sync state or runs for (the unnamed legacy server left out)."""
        names: set[str] = set()
        with self._db.read() as conn:
            for table in (schema.sync_records, schema.sync_cursors, schema.sync_runs):
                names.update(conn.execute(select(table.c.server).distinct()).scalars())
        return sorted(n for n in names if n != schema.LEGACY_SERVER)

    # ----------------------------------------------------------------------- outstanding problems

    def save_problem(self, server: str, problem: SyncProblem) -> None:
        """Record (or refresh) an outstanding problem; ``first_seen`` is kept from its first report."""
        t = schema.sync_problems
        now = self._db.now()
        with self._db.write() as conn:
            first = conn.execute(select(t.c.first_seen).where(t.c.server == server, t.c.key == problem.key)).scalar_one_or_none()
            upsert(
                conn,
                t,
                {
                    "server": server,
                    "key": problem.key,
                    "kind": problem.kind,
                    "form_id": problem.form_id,
                    "remote_id": problem.remote_id,
                    "remote_version_id": problem.remote_version_id,
                    "local_version": problem.local_version,
                    "detail": dumps(problem.detail),
                    "first_seen": first or now,
                    "last_seen": now,
                },
                key=("server", "key"),
            )

    def clear_problem(self, server: str, key: str) -> bool:
        """The problem is solved; True if one was outstanding."""
        t = schema.sync_problems
        with self._db.write() as conn:
            result: CursorResult[Any] = conn.execute(delete(t).where(t.c.server == server, t.c.key == key))
        return bool(result.rowcount)

    def problems(self, server: str | None = None, *, kind: ProblemKind | None = None) -> list[SyncProblem]:
        """Outstanding problems (with one server, or every server), oldest first."""
        t = schema.sync_problems
        query = select(t).order_by(t.c.first_seen, t.c.key)
        if server is not None:
            query = query.where(t.c.server == server)
        if kind is not None:
            query = query.where(t.c.kind == kind)
        with self._db.read() as conn:
            return [
                SyncProblem(
                    kind=r.kind,
                    key=r.key,
                    form_id=r.form_id,
                    remote_id=r.remote_id,
                    remote_version_id=r.remote_version_id,
                    local_version=r.local_version,
                    detail=json.loads(r.detail),
                    first_seen=r.first_seen,
                    last_seen=r.last_seen,
                )
                for r in conn.execute(query).all()
            ]

    def problem(self, server: str, key: str) -> SyncProblem | None:
        return next((p for p in self.problems(server) if p.key == key), None)

    # ----------------------------------------------------------------------- runs

    def record_run(self, run: SyncRun) -> None:
        with self._db.write() as conn:
            conn.execute(
                schema.sync_runs.insert().values(
                    run_id=run.run_id,
                    server=run.server,
                    started_at=run.started_at,
                    ended_at=run.ended_at,
                    exit_code=run.exit_code,
                    outcome=run.outcome,
                    pushed=run.pushed,
                    pulled=run.pulled,
                    duration_seconds=run.duration_seconds,
                    summary=dumps(run.summary),
                )
            )

    def last_run(self, server: str | None = None, *, outcome: str | None = None, not_outcome: str | None = None) -> SyncRun | None:
        t = schema.sync_runs
        query = select(t).order_by(t.c.ended_at.desc(), t.c.run_id.desc()).limit(1)
        if not_outcome is not None:
            query = query.where(t.c.outcome != not_outcome)
        if server is not None:
            query = query.where(t.c.server == server)
        if outcome is not None:
            query = query.where(t.c.outcome == outcome)
        with self._db.read() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return SyncRun(row.run_id, row.server, row.started_at, row.ended_at, row.exit_code, row.outcome, json.loads(row.summary))

    def run_totals(self) -> list[RunTotals]:
        """Runs recorded so far by server and outcome, with the forms they pushed and pulled and the time they took."""
        t = schema.sync_runs
        query = (
            select(t.c.server, t.c.outcome, func.count(), func.sum(t.c.pushed), func.sum(t.c.pulled), func.sum(t.c.duration_seconds))
            .group_by(t.c.server, t.c.outcome)
            .order_by(t.c.server, t.c.outcome)
        )
        with self._db.read() as conn:
            return [RunTotals(r[0], r[1], int(r[2]), int(r[3] or 0), int(r[4] or 0), float(r[5] or 0.0)) for r in conn.execute(query).all()]

    def problem_counts(self) -> dict[tuple[str, str], int]:
        """Outstanding problems by (server, kind)."""
        t = schema.sync_problems
        with self._db.read() as conn:
            rows = conn.execute(select(t.c.server, t.c.kind, func.count()).group_by(t.c.server, t.c.kind)).all()
        return {(r[0], r[1]): int(r[2]) for r in rows}

    # ----------------------------------------------------------------------- leases

    def acquire_lock(self, name: str, owner: str, ttl_seconds: int) -> bool:
        """Take (or renew) the lease ``name`` for ``ttl_seconds``; False if another owner holds an unexpired one.

        A lease rather than a session lock, so a crashed holder blocks others for at most the TTL.
        Owners should be unique per run (e.g. host + pid + uuid); the same owner calling again renews.
        """
        require_actor(owner)
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        now = self._db.now()
        t = schema.locks
        with self._db.write() as conn:
            upsert(
                conn,
                t,
                {"name": name, "owner": owner, "expires_at": now + timedelta(seconds=ttl_seconds)},
                key="name",
                only_if=or_(t.c.expires_at <= now, t.c.owner == owner),
            )
            holder = conn.execute(select(t.c.owner).where(t.c.name == name)).scalar_one()
        return holder == owner

    def take_over_lock(self, name: str, previous_owner: str, owner: str, ttl_seconds: int) -> bool:
        """Take the lease from ``previous_owner`` (known to be dead); False if it changed hands in the meantime."""
        require_actor(owner)
        t = schema.locks
        with self._db.write() as conn:
            result: CursorResult[Any] = conn.execute(
                update(t)
                .where(t.c.name == name, t.c.owner == previous_owner)
                .values(owner=owner, expires_at=self._db.now() + timedelta(seconds=ttl_seconds))
            )
        return bool(result.rowcount)

    def lock_holder(self, name: str) -> LeaseHolder | None:
        """Who holds the lease ``name`` and until when, or None when it is free (expired counts as free)."""
        t = schema.locks
        with self._db.read() as conn:
            row = conn.execute(select(t.c.owner, t.c.expires_at).where(t.c.name == name, t.c.expires_at > self._db.now())).first()
        return LeaseHolder(row.owner, row.expires_at) if row is not None else None

    def release_lock(self, name: str, owner: str) -> None:
        """Give the lease back early; does nothing if ``owner`` no longer holds it (it expired and was taken)."""
        t = schema.locks
        with self._db.write() as conn:
            result: CursorResult[Any] = conn.execute(delete(t).where(t.c.name == name, t.c.owner == owner))
        log.debug("lease %s released: %s", name, bool(result.rowcount))

    def break_lock(self, name: str) -> LeaseHolder | None:
        """Remove the lease whoever holds it (the operator's ``sync unlock``); returns who held it."""
        t = schema.locks
        with self._db.write() as conn:
            row = conn.execute(select(t.c.owner, t.c.expires_at).where(t.c.name == name)).first()
            conn.execute(delete(t).where(t.c.name == name))
        return LeaseHolder(row.owner, row.expires_at) if row is not None else None
