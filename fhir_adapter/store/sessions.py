"""Signed-in sessions of the consent pages, kept in the database so every serving process honours them.

``serve --workers N`` runs several processes on one database, and a restart replaces them all: a session kept
in one process's memory would be unknown to the next request's process.  So a session is a row here, found by
the SHA-256 digest of its id (the browser's cookie holds the id itself; the table never does, so reading it
signs nobody in).  Both timeouts are checked in the same transaction that restarts the idle clock, and a
session found expired is deleted there and then; ``start`` also purges every expired row, so the table holds
only sessions that could still be used.

The store knows nothing of HTTP: the facade decides what a session may do and how its id travels.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, delete, func, insert, or_, select, update

from . import schema
from .engine import Database, require_actor


@dataclass(frozen=True)
class PageSession:
    session_id: str  # the browser's secret; the store keeps only its digest
    actor: str  # the name audit records carry: the username, or the API token's name
    display_name: str
    scopes: frozenset[str]
    csrf_token: str
    started: datetime
    last_seen: datetime

    def may(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def id_digest(session_id: str) -> str:
    """The key a session is kept under.

    >>> len(id_digest("anything"))
    64
    """
    return hashlib.sha256(session_id.encode()).hexdigest()


def _from_row(session_id: str, row: Row[Any], last_seen: datetime) -> PageSession:
    return PageSession(
        session_id=session_id,
        actor=row.actor,
        display_name=row.display_name,
        scopes=frozenset(row.scopes.split()),
        csrf_token=row.csrf_token,
        started=row.started_at,
        last_seen=last_seen,
    )


class PageSessions:
    """Sessions that end after ``idle`` without a request, and after ``max_age`` whatever happens."""

    def __init__(self, db: Database, *, idle: timedelta, max_age: timedelta) -> None:
        self._db = db
        self.idle = idle
        self.max_age = max_age

    def _expired(self, now: datetime) -> Any:
        t = schema.page_sessions
        return or_(t.c.last_seen_at < now - self.idle, t.c.started_at < now - self.max_age)

    def start(self, *, actor: str, display_name: str, scopes: frozenset[str], now: datetime | None = None) -> PageSession:
        """A new session with a new random id (never one the browser offered, so a planted id cannot be signed in)."""
        require_actor(actor)
        moment = now or self._db.now()
        started = PageSession(secrets.token_urlsafe(32), actor, display_name, frozenset(scopes), secrets.token_urlsafe(32), moment, moment)
        t = schema.page_sessions
        with self._db.write() as conn:
            conn.execute(delete(t).where(self._expired(moment)))
            conn.execute(
                insert(t).values(
                    id_digest=id_digest(started.session_id),
                    actor=actor,
                    display_name=display_name,
                    scopes=" ".join(sorted(scopes)),
                    csrf_token=started.csrf_token,
                    started_at=moment,
                    last_seen_at=moment,
                )
            )
        return started

    def find(self, session_id: str | None, now: datetime | None = None) -> PageSession | None:
        """The session, its idle clock restarted; None when unknown, idle too long or too old (and then it is deleted)."""
        if not session_id:
            return None
        moment = now or self._db.now()
        t, key = schema.page_sessions, id_digest(session_id)
        with self._db.write() as conn:
            row = conn.execute(select(t).where(t.c.id_digest == key)).first()
            if row is None:
                return None
            if moment - row.last_seen_at > self.idle or moment - row.started_at > self.max_age:
                conn.execute(delete(t).where(t.c.id_digest == key))
                return None
            conn.execute(update(t).where(t.c.id_digest == key).values(last_seen_at=max(moment, row.last_seen_at)))
        return _from_row(session_id, row, max(moment, row.last_seen_at))

    def end(self, session_id: str | None) -> bool:
        """Sign the session out for good; False when there was none."""
        if not session_id:
            return False
        t = schema.page_sessions
        with self._db.write() as conn:
            return conn.execute(delete(t).where(t.c.id_digest == id_digest(session_id))).rowcount > 0

    def purge_expired(self, now: datetime | None = None) -> int:
        """Delete every session past either timeout; returns how many."""
        t = schema.page_sessions
        with self._db.write() as conn:
            return conn.execute(delete(t).where(self._expired(now or self._db.now()))).rowcount

    def open_count(self) -> int:
        """How many sessions are kept (expired ones not yet purged included)."""
        t = schema.page_sessions
        with self._db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(t)).scalar_one())
