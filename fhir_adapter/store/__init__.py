"""The durable store: every version of every CASUS consent form, the audit trail, disclosures and sync state.

One module per job, each working through the shared ``Database`` (``engine.py``):

* ``engine.py``: engines, SQLite settings, transactions, the change marker;
* ``schema.py``: the tables and the migrations that build them;
* ``forms.py``: forms and their versions (and the decision path's one cache);
* ``audit.py``: redaction and the audit trail (the one durable audit write);
* ``disclosures.py``: disclosures made under a policy exception;
* ``sync_state.py``: the sync job's state per FHIR server (cursors, per-form records, problems, runs) and leases;
* ``sessions.py``: the consent pages' signed-in sessions (digests of their ids), shared by every process;
* ``sign_in_failures.py``: failed sign-ins per username and client address, for throttling.

``Store`` puts them behind one object, because the service, the sync job and the
CLI each need several of them on the same database.

Privacy: the store never logs form content, names, NHS numbers or disclosure
details; the audit trail keeps ids, actions, codes and outcomes only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

from ..disclosure import Disclosure
from ..form import ConsentForm
from .audit import AuditRecord, AuditTrail
from .disclosures import Disclosures
from .engine import Clock, Database
from .forms import Forms, FormVersion
from .sessions import PageSessions
from .sign_in_failures import SignInFailures
from .sync_state import SyncRecord, SyncState


class Store:
    """Forms, versions, audit, disclosures and sync state in one database.

    Thread-safe: share one Store per process (it holds a connection pool).
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.audit_trail = AuditTrail(db)
        self.forms = Forms(db, self.audit_trail)
        self.disclosure_records = Disclosures(db, self.audit_trail)
        self.sync_state = SyncState(db)

    @classmethod
    def open(cls, url: str, *, clock: Clock | None = None) -> Store:
        """Connect to ``url`` and bring the schema up to date (safe to run from several processes at once).

        ``clock`` supplies "now" for a version's stored_at, audit times and lease expiry (tests pass a fake one).
        """
        return cls(Database.open(url, clock=clock))

    def close(self) -> None:
        """Close every connection (nothing is buffered: every audit record was committed before its write returned)."""
        self.audit_trail.close()
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @property
    def backend(self) -> str:
        """'sqlite' or 'postgresql'."""
        return self.db.backend

    def ping(self) -> bool:
        return self.db.ping()

    # ----------------------------------------------------------------------- forms (see forms.py)

    def create_form(self, form: ConsentForm, *, actor: str, source: str = "local", flags: tuple[str, ...] = ()) -> FormVersion:
        return self.forms.create(form, actor=actor, source=source, flags=flags)

    def update_form(self, form: ConsentForm, *, expected_version: int, actor: str, source: str = "local", flags: tuple[str, ...] = ()) -> FormVersion:
        return self.forms.update(form, expected_version=expected_version, actor=actor, source=source, flags=flags)

    def bulk_load(self, histories: Iterable[Sequence[ConsentForm]], *, actor: str, source: str = "local") -> int:
        return self.forms.bulk_load(histories, actor=actor, source=source)

    def get(self, form_id: str, version: int | None = None) -> FormVersion:
        return self.forms.get(form_id, version)

    def history(self, form_id: str) -> list[FormVersion]:
        return self.forms.history(form_id)

    def search(
        self,
        *,
        nhs_number: str | None = None,
        status: str | None = None,
        updated_since: datetime | None = None,
        updated_before: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[FormVersion], int]:
        return self.forms.search(
            nhs_number=nhs_number, status=status, updated_since=updated_since, updated_before=updated_before, limit=limit, offset=offset
        )

    def versions_for_patient(self, nhs_number: str) -> tuple[FormVersion, ...]:
        return self.forms.versions_for_patient(nhs_number)

    def cached_versions_for_patient(self, nhs_number: str) -> tuple[tuple[FormVersion, ...], int] | None:
        return self.forms.cached_versions_for_patient(nhs_number)

    def form_ids_changed_since(self, cursor: int, limit: int) -> list[tuple[int, str]]:
        return self.forms.form_ids_changed_since(cursor, limit)

    def versions_changed_since(self, cursor: int, limit: int) -> list[tuple[int, FormVersion]]:
        return self.forms.versions_changed_since(cursor, limit)

    # ----------------------------------------------------------------------- audit (see audit.py)

    def audit(
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
        """Append an audit record; True once it is committed, or raises AuditWriteFailed.

        With ``unless_changed_since`` (a change marker): written only if no form version has been stored since
        that marker, False otherwise (see ``AuditTrail.write``).
        """
        return self.audit_trail.write(
            actor=actor, action=action, resource=resource, outcome=outcome, detail=detail, subject=subject, unless_changed_since=unless_changed_since
        )

    def audit_log(self, *, actor: str | None = None, subject: str | None = None, action: str | None = None, limit: int = 100) -> list[AuditRecord]:
        return self.audit_trail.records(actor=actor, subject=subject, action=action, limit=limit)

    # ----------------------------------------------------------------------- disclosures (see disclosures.py)

    def record_disclosure(self, d: Disclosure, *, actor: str) -> Disclosure:
        return self.disclosure_records.record(d, actor=actor)

    def disclosures(self, nhs_number: str) -> list[Disclosure]:
        return self.disclosure_records.for_patient(nhs_number)

    # ----------------------------------------------------------------------- sync state (see sync_state.py)

    # Cursors, records and problems are per FHIR server (``sync_state.server_key``); the less used parts
    # (problems, runs, lease holders) are reached through ``store.sync_state``.

    def get_cursor(self, server: str, name: str) -> str | None:
        return self.sync_state.get_cursor(server, name)

    def set_cursor(self, server: str, name: str, value: str) -> None:
        self.sync_state.set_cursor(server, name, value)

    def sync_record(self, server: str, form_id: str) -> SyncRecord | None:
        return self.sync_state.sync_record(server, form_id)

    def save_sync_record(self, rec: SyncRecord) -> None:
        self.sync_state.save_sync_record(rec)

    def acquire_lock(self, name: str, owner: str, ttl_seconds: int) -> bool:
        return self.sync_state.acquire_lock(name, owner, ttl_seconds)

    def release_lock(self, name: str, owner: str) -> None:
        self.sync_state.release_lock(name, owner)

    # ----------------------------------------------------------------------- consent page sign-in (see sessions.py, sign_in_failures.py)

    def page_sessions(self, *, idle: timedelta, max_age: timedelta) -> PageSessions:
        """The consent pages' sessions on this database, ended after ``idle`` without a request or ``max_age`` in any case."""
        return PageSessions(self.db, idle=idle, max_age=max_age)

    def sign_in_failures(self, *, window: timedelta) -> SignInFailures:
        """Failed sign-ins on this database, counted over the last ``window``."""
        return SignInFailures(self.db, window=window)
