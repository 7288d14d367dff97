"""What the sync job keeps between runs: its cursors, a record per form it pushed or pulled, and its leases.

A ``SyncRecord`` field is a ``sync_records`` column of the same name: adding one is a field here, a column in
``schema.py`` and a migration that adds it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import CursorResult, delete, or_, select

from . import schema
from .engine import Database, page_bounds, require_actor, upsert

log = logging.getLogger("fhir_adapter.store")


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


class SyncState:
    def __init__(self, db: Database) -> None:
        self._db = db

    # ----------------------------------------------------------------------- cursors

    def get_cursor(self, name: str) -> str | None:
        """A sync job's saved position (opaque to the store), or None before its first run."""
        t = schema.sync_cursors
        with self._db.read() as conn:
            return conn.execute(select(t.c.value).where(t.c.name == name)).scalar_one_or_none()

    def set_cursor(self, name: str, value: str) -> None:
        """Save a sync job's position; a crash after this resumes from here."""
        with self._db.write() as conn:
            upsert(conn, schema.sync_cursors, {"name": name, "value": value, "updated_at": self._db.now()}, key="name")

    # ----------------------------------------------------------------------- per-form records

    def sync_record(self, form_id: str) -> SyncRecord | None:
        """What the sync job last recorded for a form, or None if it never has."""
        t = schema.sync_records
        names = [f.name for f in dataclasses.fields(SyncRecord)]
        with self._db.read() as conn:
            row = conn.execute(select(*(t.c[name] for name in names)).where(t.c.form_id == form_id)).first()
        return SyncRecord(**row._asdict()) if row is not None else None

    def save_sync_record(self, rec: SyncRecord) -> None:
        """Insert or replace the sync record for ``rec.form_id``."""
        with self._db.write() as conn:
            upsert(conn, schema.sync_records, dataclasses.asdict(rec), key="form_id")

    def form_ids_synced_with_mapping_before(self, mapping_version: int, after: str, limit: int) -> list[str]:
        """Form ids (ascending, after ``after``) whose Consent on the server was written by a mapping older than
        ``mapping_version`` (a NULL version counts as 1), so the sync job can rewrite them in the current shape."""
        page_bounds(limit, 0)
        t = schema.sync_records
        older = or_(t.c.mapping_version.is_(None), t.c.mapping_version < mapping_version) if mapping_version > 1 \
            else t.c.mapping_version < mapping_version
        query = (select(t.c.form_id).where(t.c.remote_id.is_not(None), t.c.form_id > after, older)
                 .order_by(t.c.form_id).limit(limit))
        with self._db.read() as conn:
            return [r.form_id for r in conn.execute(query).all()]

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
            upsert(conn, t, {"name": name, "owner": owner, "expires_at": now + timedelta(seconds=ttl_seconds)}, key="name",
                   only_if=or_(t.c.expires_at <= now, t.c.owner == owner))
            holder = conn.execute(select(t.c.owner).where(t.c.name == name)).scalar_one()
        return holder == owner

    def release_lock(self, name: str, owner: str) -> None:
        """Give the lease back early; does nothing if ``owner`` no longer holds it (it expired and was taken)."""
        t = schema.locks
        with self._db.write() as conn:
            result: CursorResult[Any] = conn.execute(delete(t).where(t.c.name == name, t.c.owner == owner))
        log.debug("lease %s released: %s", name, bool(result.rowcount))
