"""Consent forms and every version of them.

A young person can change their mind, and a decision has to be explainable
later ("which consent was in force on 3 March?"), so a form is never
overwritten: each change appends a version.  Writes are optimistic: the caller
names the version it read, and a stale write raises ``VersionConflict`` and
changes nothing, so two clinicians editing at once cannot silently undo each
other.

* **SQLite**: the write transaction holds the file's write lock (``BEGIN IMMEDIATE``).
* **PostgreSQL**: a write compares-and-sets the form's head row (``UPDATE ... WHERE
  latest_version = :expected``), which row-locks it; the unique (form_id, version)
  constraint backs that up.

Each stored version also gets a number from a counter row that is incremented
inside the writing transaction.  Holding that row lock until commit means the
numbers become visible strictly in order, which is what lets the sync job push
"everything after cursor N" without ever skipping a change that committed late.
(It serialises form writes globally; consent forms are written at human speed.)
The same counter is the change marker (``engine.py``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, Connection, Row, and_, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..form import ConsentForm, form_to_json, parse_form
from . import schema
from .audit import AuditTrail, audit_row
from .engine import Database, StoreError, dumps, page_bounds, require_actor, require_aware

log = logging.getLogger("fhir_adapter.store")

#: The largest version number a database integer column holds; anything larger cannot exist.
MAX_VERSION = 2**63 - 1
#: How many patients' versions the decision path keeps (see Forms.versions_for_patient).
PATIENT_CACHE_SIZE = 2_000
#: Forms per transaction in a bulk load: big enough that commits are a small part of the cost, small enough that
#: a transaction's rows (about 3 versions of ~1.5 kB each, and their audit rows) stay a few megabytes.
BULK_LOAD_BATCH_FORMS = 500
#: The audit action the store writes itself, inside the transaction that stores a version.
STORED_FORM_VERSION = "store.form-version"

Source = Literal["local", "remote"]
SOURCES: tuple[str, ...] = ("local", "remote")


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


@dataclass(frozen=True)
class FormVersion:
    """One stored version of a form and who stored it, when, and from where."""

    form_id: str
    version: int
    form: ConsentForm
    stored_at: datetime  # server time (UTC) the version was stored; the choice governs from form.recorded.date
    actor: str
    source: str  # 'local' (API) or 'remote' (pulled by sync)


def _require_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}")


def checked_document(form: ConsentForm) -> tuple[str, ConsentForm]:
    """The JSON text to store for a form, and the form as it will read back.

    The document is re-parsed before it is stored, so anything in the store
    is known to parse (reads never fail on data the store itself accepted) and
    a form that breaks a rule raises InvalidInput with nothing written.
    """
    document = form_to_json(form)
    return dumps(document), parse_form(document)


def _checked_history(history: Sequence[ConsentForm]) -> list[tuple[str, ConsentForm]]:
    """Every version of one form, checked as a single write would check it."""
    if not history:
        raise ValueError("a form's history needs at least one version")
    checked = [checked_document(form) for form in history]
    if len({form.form_id for _, form in checked}) != 1:
        raise ValueError("every version in a form's history must have the same form id")
    return checked


def _batches(items: Iterable[Sequence[ConsentForm]], size: int) -> Iterator[list[Sequence[ConsentForm]]]:
    batch: list[Sequence[ConsentForm]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _version_from_row(row: Row[Any]) -> FormVersion:
    return FormVersion(row.form_id, row.version, parse_form(json.loads(row.document)), row.recorded_at, row.actor, row.source)


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


class _PatientCache:
    """Patients' versions as read under one change marker; a different marker empties it.

    The only cache on the decision path.  Its invalidation is the marker: every stored version, by any
    process, increments it, so an entry holds only while nothing at all has been stored since it was read.
    An entry is served either after reading the marker (``get``), or with the marker it was read under
    (``peek``) for a caller that checks the marker itself when it commits (a decision's conditional audit row).
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._marker: int | None = None
        self._entries: OrderedDict[str, tuple[FormVersion, ...]] = OrderedDict()

    def get(self, marker: int, nhs_number: str) -> tuple[FormVersion, ...] | None:
        with self._lock:
            if marker != self._marker:
                self._entries.clear()
                self._marker = marker
                return None
            found = self._entries.get(nhs_number)
            if found is not None:
                self._entries.move_to_end(nhs_number)
            return found

    def peek(self, nhs_number: str) -> tuple[tuple[FormVersion, ...], int] | None:
        """The entry and the marker it was read under, without reading the marker: it may be stale."""
        with self._lock:
            found = self._entries.get(nhs_number)
            if found is None or self._marker is None:
                return None
            self._entries.move_to_end(nhs_number)
            return found, self._marker

    def put(self, marker: int, nhs_number: str, versions: tuple[FormVersion, ...]) -> None:
        with self._lock:
            if marker != self._marker:
                return  # read under an older (or newer) marker than the cache holds: not kept
            self._entries[nhs_number] = versions
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


class Forms:
    """Forms and their versions; every stored version is audited in the transaction that stores it."""

    def __init__(self, db: Database, audit: AuditTrail) -> None:
        self._db = db
        self._audit = audit
        self._patients = _PatientCache(PATIENT_CACHE_SIZE)

    # ----------------------------------------------------------------------- writes

    def create(self, form: ConsentForm, *, actor: str, source: str = "local", flags: tuple[str, ...] = ()) -> FormVersion:
        """Store a new form as version 1. Raises AlreadyExists, or InvalidInput with nothing stored.

        ``flags`` go into the version's audit record (e.g. ``backdated``: entered long after the choice was made).
        """
        require_actor(actor)
        _require_source(source)
        document, parsed = checked_document(form)
        now = self._db.now()
        with self._db.write() as conn:
            try:
                conn.execute(
                    insert(schema.forms).values(
                        form_id=parsed.form_id, latest_version=1, nhs_number=parsed.young_person.nhs_number, status=parsed.status, updated_at=now
                    )
                )
            except IntegrityError as exc:
                raise AlreadyExists(f"form {parsed.form_id} already exists") from exc
            return self._append_version(conn, parsed, document, version=1, now=now, actor=actor, source=source, flags=flags)

    def update(self, form: ConsentForm, *, expected_version: int, actor: str, source: str = "local", flags: tuple[str, ...] = ()) -> FormVersion:
        """Store a new version of a form, provided ``expected_version`` is still the latest.

        Raises NotFound, VersionConflict (nothing changed; re-read and retry), or InvalidInput.
        """
        require_actor(actor)
        _require_source(source)
        document, parsed = checked_document(form)
        if not 0 < expected_version <= MAX_VERSION:  # a version no database column can hold is simply stale
            raise VersionConflict(self.get(parsed.form_id).version, form_id=parsed.form_id, expected_version=expected_version)
        now = self._db.now()
        heads = schema.forms
        with self._db.write() as conn:
            # Compare-and-set on the head row: it row-locks on PostgreSQL, and a writer that was waiting
            # re-checks the condition against the committed row, so only one of two racers can match.
            changed = conn.execute(
                update(heads)
                .where(heads.c.form_id == parsed.form_id, heads.c.latest_version == expected_version)
                .values(latest_version=expected_version + 1, nhs_number=parsed.young_person.nhs_number, status=parsed.status, updated_at=now)
            )
            if changed.rowcount != 1:
                current = conn.execute(select(heads.c.latest_version).where(heads.c.form_id == parsed.form_id)).scalar_one_or_none()
                if current is None:
                    raise NotFound(f"form {parsed.form_id} not found")
                log.debug("version conflict on form %s: expected %s, latest %s", parsed.form_id, expected_version, current)
                raise VersionConflict(current, form_id=parsed.form_id, expected_version=expected_version)
            try:
                return self._append_version(conn, parsed, document, version=expected_version + 1, now=now, actor=actor, source=source, flags=flags)
            except IntegrityError as exc:  # the unique (form_id, version) backstop: someone else made this version
                raise VersionConflict(expected_version + 1, form_id=parsed.form_id, expected_version=expected_version) from exc

    def bulk_load(
        self, histories: Iterable[Sequence[ConsentForm]], *, actor: str, source: str = "local", batch_forms: int = BULK_LOAD_BATCH_FORMS
    ) -> int:
        """Store new forms, each with every version it has had (oldest first); returns how many versions were stored.

        For loading existing records without a request, a transaction and a counter round trip per version: every
        version is checked and audited as ``create`` and ``update`` do it, but ``batch_forms`` forms share one
        transaction, one counter update and one multi-row insert per table.  Each batch commits on its own; a
        batch with a form id already stored (AlreadyExists), a form that breaks a rule (InvalidInput) or a history
        whose versions name different forms (ValueError) stores nothing, and the batches before it stay stored.
        """
        require_actor(actor)
        _require_source(source)
        if batch_forms < 1:
            raise ValueError("batch_forms must be at least 1")
        stored = 0
        for batch in _batches(histories, batch_forms):
            checked = [_checked_history(history) for history in batch]
            stored += self._load_batch(checked, actor=actor, source=source)
        return stored

    def _load_batch(self, histories: list[list[tuple[str, ConsentForm]]], *, actor: str, source: str) -> int:
        count = sum(len(h) for h in histories)
        now = self._db.now()
        heads, versions, audits = [], [], []
        with self._db.write() as conn:
            t = schema.counters
            last = conn.execute(
                update(t).where(t.c.name == schema.FORM_VERSION_COUNTER).values(value=t.c.value + count).returning(t.c.value)
            ).scalar_one()
            seq = last - count
            for history in histories:
                latest = history[-1][1]
                heads.append(
                    {
                        "form_id": latest.form_id,
                        "latest_version": len(history),
                        "nhs_number": latest.young_person.nhs_number,
                        "status": latest.status,
                        "updated_at": now,
                    }
                )
                for version, (document, form) in enumerate(history, start=1):
                    seq += 1
                    versions.append(
                        {
                            "seq": seq,
                            "form_id": form.form_id,
                            "version": version,
                            "nhs_number": form.young_person.nhs_number,
                            "status": form.status,
                            "document": document,
                            "recorded_at": now,
                            "actor": actor,
                            "source": source,
                        }
                    )
                    audits.append(
                        audit_row(
                            now,
                            actor=actor,
                            action=STORED_FORM_VERSION,
                            resource=f"form/{form.form_id}",
                            outcome="created" if version == 1 else "updated",
                            subject=form.young_person.nhs_number,
                            detail={"version": version, "status": form.status, "source": source},
                        )
                    )
            try:
                conn.execute(insert(schema.forms), heads)
            except IntegrityError as exc:
                raise AlreadyExists("a form in this batch is already stored (or named twice)") from exc
            conn.execute(insert(schema.form_versions), versions)
            conn.execute(insert(schema.audit_log), audits)
        return count

    def _append_version(
        self, conn: Connection, form: ConsentForm, document: str, *, version: int, now: datetime, actor: str, source: str, flags: tuple[str, ...]
    ) -> FormVersion:
        seq = self._next_number(conn, schema.FORM_VERSION_COUNTER)
        conn.execute(
            insert(schema.form_versions).values(
                seq=seq,
                form_id=form.form_id,
                version=version,
                nhs_number=form.young_person.nhs_number,
                status=form.status,
                document=document,
                recorded_at=now,
                actor=actor,
                source=source,
            )
        )
        # Audited in the same transaction as the write, so no stored version (local or pulled by sync) goes unrecorded.
        self._audit.insert(
            conn,
            now,
            actor=actor,
            action=STORED_FORM_VERSION,
            resource=f"form/{form.form_id}",
            outcome="created" if version == 1 else "updated",
            subject=form.young_person.nhs_number,
            detail={
                "version": version,
                "status": form.status,
                "source": source,
                "governsFrom": form.recorded.date.isoformat(),
                "storedAt": now.isoformat(),
                **({"flags": list(flags)} if flags else {}),
            },
        )
        return FormVersion(form.form_id, version, form, now, actor, source)

    @staticmethod
    def _next_number(conn: Connection, counter: str) -> int:
        """The next number of a counter; its row stays locked until this transaction ends (see module doc)."""
        t = schema.counters
        return conn.execute(update(t).where(t.c.name == counter).values(value=t.c.value + 1).returning(t.c.value)).scalar_one()

    # ----------------------------------------------------------------------- reads

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
        with self._db.read_one() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise NotFound(f"form {form_id}" + (f" version {version}" if version is not None else "") + " not found")
        return _version_from_row(row)

    def history(self, form_id: str) -> list[FormVersion]:
        """Every version of a form, oldest first. Raises NotFound (a stored form always has version 1)."""
        fv = schema.form_versions
        with self._db.read_one() as conn:
            rows = conn.execute(select(fv).where(fv.c.form_id == form_id).order_by(fv.c.version)).all()
        if not rows:
            raise NotFound(f"form {form_id} not found")
        return [_version_from_row(r) for r in rows]

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
        """One page of latest versions matching every given filter, and how many match in all.

        Ordered by the time the latest version was stored, then form id, so paging is stable.
        ``updated_since`` is inclusive, ``updated_before`` exclusive. ``limit=0`` just counts.
        """
        page_bounds(limit, offset)
        require_aware(updated_since, "updated_since")
        require_aware(updated_before, "updated_before")
        fv, heads = schema.form_versions, schema.forms
        terms = _search_filters(nhs_number, status, updated_since, updated_before)
        joined = heads.join(fv, and_(fv.c.form_id == heads.c.form_id, fv.c.version == heads.c.latest_version))
        # The total rides along on each row (a window count), so page and total come from one snapshot.
        page = (
            select(fv, func.count().over().label("total"))
            .select_from(joined)
            .where(*terms)
            .order_by(heads.c.updated_at, heads.c.form_id)
            .limit(limit)
            .offset(offset)
        )
        with self._db.read() as conn:
            rows = conn.execute(page).all()
            total = rows[0].total if rows else conn.execute(select(func.count()).select_from(heads).where(*terms)).scalar_one()
        return [_version_from_row(r) for r in rows], total

    def versions_for_patient(self, nhs_number: str) -> tuple[FormVersion, ...]:
        """Every stored version (of every form) recorded for this NHS number, oldest first.

        The decision engine needs them all: the version in force at a past time may not be the latest.
        This is the decision endpoint's hot path, so the answer is cached (see _PatientCache): one
        primary-key read of the change marker per call decides whether the cached versions still hold.
        """
        marker = self._db.change_marker()
        found = self._patients.get(marker, nhs_number)
        if found is None:
            fv = schema.form_versions
            query = select(fv).where(fv.c.nhs_number == nhs_number).order_by(fv.c.recorded_at, fv.c.seq)
            with self._db.read_one() as conn:
                rows = conn.execute(query).all()
            found = tuple(_version_from_row(r) for r in rows)
            self._patients.put(marker, nhs_number, found)
        return found

    def cached_versions_for_patient(self, nhs_number: str) -> tuple[tuple[FormVersion, ...], int] | None:
        """The patient's versions as last read, and the change marker they were read under; None if not cached.

        No database read at all: the versions are current only if the marker still holds that value, which the
        caller must check when it commits (``AuditTrail.write(unless_changed_since=...)``).
        """
        return self._patients.peek(nhs_number)

    def form_ids_changed_since(self, cursor: int, limit: int) -> list[tuple[int, str]]:
        """Like versions_changed_since, but only (sequence number, form id): the sync job's push walks these
        without needing the documents, so it neither parses nor holds them (memory flat in the number of forms)."""
        page_bounds(limit, 0)
        fv = schema.form_versions
        query = select(fv.c.seq, fv.c.form_id).where(fv.c.seq > cursor).order_by(fv.c.seq).limit(limit)
        with self._db.read() as conn:
            return [(r.seq, r.form_id) for r in conn.execute(query).all()]

    def versions_changed_since(self, cursor: int, limit: int) -> list[tuple[int, FormVersion]]:
        """Up to ``limit`` versions stored after sequence number ``cursor``, ascending, with their numbers.

        Numbers are issued in commit order, so a sync job that saves the last number it handled never skips one.
        """
        page_bounds(limit, 0)
        fv = schema.form_versions
        query = select(fv).where(fv.c.seq > cursor).order_by(fv.c.seq).limit(limit)
        with self._db.read() as conn:
            return [(r.seq, _version_from_row(r)) for r in conn.execute(query).all()]
