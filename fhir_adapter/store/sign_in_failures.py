"""Failed sign-ins to the consent pages, counted per key in the database so every serving process sees them all.

A key is what a failure is held against: the username typed, or the client address.  Only a SHA-256 digest of
it is kept, because a username field sometimes receives a password, and an address is nobody's business once
its window has passed.  Rows older than the window are purged whenever a failure is recorded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import delete, func, insert, select

from . import schema
from .engine import Database


def key_digest(key: str) -> str:
    """The stored form of a key.

    >>> key_digest("user:demo") == key_digest("user:demo") != key_digest("user:dem0")
    True
    """
    return hashlib.sha256(key.encode()).hexdigest()


class SignInFailures:
    """How many times each key failed to sign in within the last ``window``."""

    def __init__(self, db: Database, *, window: timedelta) -> None:
        self._db = db
        self.window = window

    def record(self, keys: Iterable[str], now: datetime | None = None) -> None:
        """One more failure against each key; failures older than the window are forgotten in the same transaction."""
        moment = now or self._db.now()
        t = schema.sign_in_failures
        with self._db.write() as conn:
            conn.execute(delete(t).where(t.c.at < moment - self.window))
            rows = [{"key_digest": key_digest(k), "at": moment} for k in dict.fromkeys(keys)]
            if rows:
                conn.execute(insert(t), rows)

    def count(self, key: str, now: datetime | None = None) -> int:
        moment = now or self._db.now()
        t = schema.sign_in_failures
        query = select(func.count()).select_from(t).where(t.c.key_digest == key_digest(key), t.c.at >= moment - self.window)
        with self._db.read() as conn:
            return int(conn.execute(query).scalar_one())

    def forget(self, key: str) -> None:
        """A successful sign-in wipes the slate for its username."""
        t = schema.sign_in_failures
        with self._db.write() as conn:
            conn.execute(delete(t).where(t.c.key_digest == key_digest(key)))
