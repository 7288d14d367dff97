"""Keep the adapter's store and the trust FHIR server in step: push local form versions, pull remote Consents.

Why it is shaped this way:

* **Idempotent writes.** Every Consent carries the business identifier
  ``https://fhir.cpft.nhs.uk/casus/Id/consent-form|<formId>``.  A form the server has not seen from us is
  written with a conditional update ``PUT Consent?identifier=<system>|<formId>`` (create-or-update, so a
  retried or repeated request never makes a duplicate).  A form whose server id and version we recorded is
  written with ``PUT Consent/<id>`` and ``request.ifMatch`` (FHIR's version-aware update), so a remote change
  that slipped in after we looked is refused with 412 instead of being overwritten.  Both are idempotent, so
  the client may retry a transaction of them.
* **Only the latest version is pushed.** The server keeps its own history of what *it* received; a form edited
  three times between runs is pushed once, as it stands now (intermediate local versions are skipped).
* **Conflicts are reported, never resolved by overwriting.** Before a batch is sent, one search by identifier
  fetches the server's current state of every form in it.  If the server's version differs from the one we
  recorded at the last sync *and* the local form changed too, it is a conflict: reported, audited, and neither
  side is written.  If both sides hold the same content it is not a conflict: the sync record is simply brought
  up to date (this is also how a run killed after a write landed, but before it was recorded, converges).
  A conflict stays reported on every run (exit 1) until someone makes the two sides agree.
* **Durable, crash-safe progress.** The push cursor is the store's version sequence number and moves only after
  a batch has committed on the server *and* its sync records are saved; it never moves past a conflicted or
  rejected form, so that form is looked at again next run.  The pull cursor is the greatest ``meta.lastUpdated``
  of a fully processed page (``ge`` semantics, remembering which versions were seen at exactly that instant,
  so equal timestamps are neither lost nor reported twice).  A run killed at any point re-runs to the same end.
* **One run at a time**, by a lease in the store that is renewed between batches and released at the end.
* **Older shapes are rewritten once.** Each sync record keeps the mapping version of the Consent on the server
  (``mappings.MAPPING_VERSION`` when we wrote it; what its shape shows when we pulled it; unknown = 1).  After
  the cursor pass, every form whose server copy an older mapping wrote is pushed as a normal If-Match update if
  that copy still says what the form says, and its record then says current; a copy changed on the server is
  left to pull.

Known limit: paging follows the server's ``Bundle.link[next]``.  Most servers page by offset, so if a Consent
earlier in the result set is changed *while* a run is walking it, the set shifts and one Consent can be missed
by that run.  The moved Consent itself is seen (it now sorts last); the one missed is picked up the next time it
changes.  Servers with snapshot paging (HAPI, Azure) are not affected.

Privacy: logs and audit details carry form ids, server ids, versions and counts only.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from .fhir_client import (
    Conflict,
    FhirClient,
    FhirError,
    InvalidResource,
    MalformedResponse,
    PreconditionFailed,
    identifier_query,
    matched_resources,
    version_from_etag,
    weak_etag,
)
from .form import ConsentForm, form_to_json
from .mappings import MAPPING_VERSION, codes
from .mappings.r4 import form_to_r4, r4_to_form, written_mapping_version
from .outcome import InvalidInput, Issue, is_blocking, operation_outcome
from .store import Store
from .store.forms import AlreadyExists, FormVersion, VersionConflict
from .store.forms import NotFound as FormNotFound
from .store.sync_state import SyncRecord
from .validation import validate_consent

log = logging.getLogger(__name__)

LOCK_NAME = "sync"
PUSH_CURSOR = "sync.push"
PULL_CURSOR = "sync.pull"
ACTOR = "sync"
#: Longest comma-separated identifier list sent in one search (keeps URLs well under common 8 KB limits).
MAX_IDENTIFIER_QUERY_CHARS = 1800

Progress = Callable[[str, int], None]
PushAction = Literal["in-step", "create", "update", "conflict", "skip"]


# --------------------------------------------------------------------------- errors and the summary


class SyncError(Exception):
    """The run could not be carried out; the message is safe to print (ids and statuses only)."""


class SyncLocked(SyncError):
    """Another run holds the sync lease."""


class SyncAborted(SyncError):
    """The run stopped part-way (server unreachable, refused us, or answered nonsense).

    Everything finished before the failure is durable; ``summary`` says how far it got.
    """

    def __init__(self, reason: str, summary: SyncSummary) -> None:
        super().__init__(reason)
        self.summary = summary


@dataclass
class SyncSummary:
    """What one run did, in the shape printed by ``fhir-adapter sync``."""

    pushed: int = 0
    pulled: int = 0
    unchanged: int = 0
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    retries: int = 0
    requests: int = 0
    duration_seconds: float = 0.0
    dry_run: bool = False

    def add_conflict(self, form_id: str, reason: str) -> bool:
        """Record a conflict once per form (push and pull may both notice it); False if already recorded."""
        if any(c["formId"] == form_id for c in self.conflicts):
            return False
        self.conflicts.append({"formId": form_id, "reason": reason})
        return True

    def add_rejected(self, outcome: dict[str, Any], *, form_id: str | None = None, remote_id: str | None = None) -> None:
        entry: dict[str, Any] = {}
        if form_id:
            entry["formId"] = form_id
        if remote_id:
            entry["remoteId"] = remote_id
        entry["outcome"] = outcome
        self.rejected.append(entry)

    def exit_code(self) -> int:
        """0 when both sides are in step, 1 when the run finished but left conflicts or rejections."""
        return 1 if self.conflicts or self.rejected else 0

    def to_json(self) -> dict[str, Any]:
        return {"pushed": self.pushed, "pulled": self.pulled, "unchanged": self.unchanged, "conflicts": list(self.conflicts),
                "rejected": list(self.rejected), "retries": self.retries, "requests": self.requests,
                "durationSeconds": round(self.duration_seconds, 3), "dryRun": self.dry_run}


# --------------------------------------------------------------------------- remote state (pure)


@dataclass(frozen=True)
class RemoteState:
    """A Consent as the server holds it now: server id, version and last change."""

    resource_id: str
    version_id: str
    last_updated: str | None
    resource: dict[str, Any]


def remote_state(resource: dict[str, Any]) -> RemoteState:
    """The server identity of a Consent from a search or read; sync cannot work without id and versionId."""
    meta: dict[str, Any] = resource["meta"] if isinstance(resource.get("meta"), dict) else {}
    resource_id, version_id = resource.get("id"), meta.get("versionId")
    if not isinstance(resource_id, str) or not isinstance(version_id, str):
        raise MalformedResponse(None, None, "a Consent from the server has no id or meta.versionId")
    last_updated = meta.get("lastUpdated")
    return RemoteState(resource_id, version_id, last_updated if isinstance(last_updated, str) else None, resource)


def casus_form_id(resource: dict[str, Any]) -> str | None:
    """The CASUS form id (business identifier value) of a Consent, or None when it has none or several."""
    values = [i.get("value") for i in resource.get("identifier") or [] if isinstance(i, dict) and i.get("system") == codes.ID_CONSENT_FORM]
    return values[0] if len(values) == 1 and isinstance(values[0], str) and values[0] else None


def _id_from_location(location: str) -> str | None:
    """'[base]/Consent/abc/_history/2' -> 'abc'."""
    segments = urlsplit(location).path.rstrip("/").split("/")
    if "_history" in segments:
        segments = segments[: segments.index("_history")]
    return segments[-1] if len(segments) >= 2 and segments[-2] == "Consent" else None


def committed_state(entry: dict[str, Any]) -> RemoteState:
    """Server id, version and time of one transaction-response entry (from the resource, else the response headers)."""
    response: dict[str, Any] = entry["response"] if isinstance(entry.get("response"), dict) else {}
    if not str(response.get("status", "")).startswith("2"):
        raise MalformedResponse(None, None, "a committed transaction reported a non-2xx entry")
    resource = entry.get("resource")
    if isinstance(resource, dict) and resource.get("resourceType") == "Consent":
        return remote_state(resource)
    resource_id = _id_from_location(response.get("location") or "")
    version_id = version_from_etag(response.get("etag"))
    if resource_id is None or version_id is None:
        raise MalformedResponse(None, None, "a transaction-response entry has neither the Consent nor location and etag")
    last_modified = response.get("lastModified")
    return RemoteState(resource_id, version_id, last_modified if isinstance(last_modified, str) else None, {})


def same_content(resource: dict[str, Any], form: ConsentForm) -> bool:
    """True when a server Consent says exactly what the form says (the mapping is lossless, so compare as forms)."""
    try:
        return form_to_json(r4_to_form(resource)) == form_to_json(form)
    except InvalidInput:
        return False


def search_escape(value: str) -> str:
    """Escape FHIR search separators in a token value (``\\``, ``,``, ``|``, ``$``).

    >>> search_escape("a,b|c")
    'a\\\\,b\\\\|c'
    """
    for char in ("\\", ",", "|", "$"):
        value = value.replace(char, "\\" + char)
    return value


def identifier_chunks(form_ids: Sequence[str], limit: int = MAX_IDENTIFIER_QUERY_CHARS) -> list[list[str]]:
    """Form ids grouped so each group's ``identifier=sys|a,sys|b`` value stays within ``limit`` characters.

    >>> identifier_chunks(["a", "b", "c"], limit=len(codes.ID_CONSENT_FORM) * 2 + 5)
    [['a', 'b'], ['c']]
    """
    chunks: list[list[str]] = []
    size = 0
    for form_id in form_ids:
        token = len(codes.ID_CONSENT_FORM) + 1 + len(search_escape(form_id))
        if chunks and size + 1 + token <= limit:
            chunks[-1].append(form_id)
            size += 1 + token
        else:
            chunks.append([form_id])
            size = token
    return chunks


# --------------------------------------------------------------------------- decisions (pure)


def has_unpushed_change(latest: FormVersion, record: SyncRecord | None) -> bool:
    """A local edit the server has not received: the latest version was made here and is newer than what we pushed.

    Versions pulled from the server (source 'remote') are never pushed back.
    """
    pushed = record.pushed_version if record is not None and record.pushed_version is not None else 0
    return latest.source == "local" and latest.version > pushed


def written_by_older_mapping(record: SyncRecord | None) -> bool:
    """The server's Consent for a synced form was written in an older shape than the mappings write now."""
    return record is not None and record.remote_id is not None and (record.mapping_version or 1) < MAPPING_VERSION


def needs_push(latest: FormVersion, record: SyncRecord | None) -> bool:
    return has_unpushed_change(latest, record) or written_by_older_mapping(record)


def is_echo(remote: RemoteState, record: SyncRecord | None) -> bool:
    """The server still holds the version we last synced (for example our own push, seen again by pull)."""
    return record is not None and record.remote_id == remote.resource_id and record.remote_version_id == remote.version_id


@dataclass(frozen=True)
class PushPlan:
    """What to do with one locally changed form, given the server's current state."""

    latest: FormVersion
    record: SyncRecord | None
    action: PushAction
    remote: RemoteState | None = None
    reason: str | None = None


def plan_push(latest: FormVersion, record: SyncRecord | None, remotes: Sequence[RemoteState]) -> PushPlan:
    """Classify a form needing a push (a local change, or a Consent an older mapping wrote) against the server's Consents for it."""
    if len(remotes) > 1:
        return PushPlan(latest, record, "conflict", reason=f"{len(remotes)} Consents on the server carry this form identifier")
    remote = remotes[0] if remotes else None
    same = remote is not None and same_content(remote.resource, latest.form)
    if not has_unpushed_change(latest, record):
        # Only the shape is out of date.  Rewrite it when the server still says what we hold; if the server's
        # copy changed or went, that is the server's change (pull brings it in), not one of ours to push.
        if remote is None or not same:
            return PushPlan(latest, record, "skip", remote)
        current = written_mapping_version(remote.resource) >= MAPPING_VERSION
        return PushPlan(latest, record, "in-step" if current else "update", remote)
    if remote is None:
        return PushPlan(latest, record, "create")
    if same:
        # Same meaning: in step, unless an older mapping wrote it; then rewriting it in today's shape is safe.
        current = written_mapping_version(remote.resource) >= MAPPING_VERSION
        return PushPlan(latest, record, "in-step" if current else "update", remote)
    if is_echo(remote, record):
        return PushPlan(latest, record, "update", remote)
    if record is None or record.remote_version_id is None:
        reason = f"the server already holds a different Consent for this form (version {remote.version_id}) that was never synced"
    else:
        reason = (f"changed on the server (version {record.remote_version_id} -> {remote.version_id}) "
                  f"and locally (version {latest.version}) since the last sync")
    return PushPlan(latest, record, "conflict", remote, reason)


def push_entry(plan: PushPlan, base_url: str) -> dict[str, Any]:
    """The transaction entry writing one form: version-aware instance PUT when we know the server's id, else conditional PUT."""
    resource = form_to_r4(plan.latest.form)
    if plan.action == "update" and plan.remote is not None:
        resource["id"] = plan.remote.resource_id
        return {"fullUrl": f"{base_url}/Consent/{plan.remote.resource_id}", "resource": resource,
                "request": {"method": "PUT", "url": f"Consent/{plan.remote.resource_id}", "ifMatch": weak_etag(plan.remote.version_id)}}
    return {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": resource,
            "request": {"method": "PUT", "url": "Consent?" + identifier_query(codes.ID_CONSENT_FORM, plan.latest.form_id)}}


def transaction_bundle(entries: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


# --------------------------------------------------------------------------- the pull cursor (pure)


def parse_instant(value: str) -> datetime:
    """A FHIR instant as an aware datetime (a missing zone is read as UTC)."""
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class PullCursor:
    """Where pull resumes: ``_lastUpdated=ge<last_updated>``, skipping the versions already handled at exactly that instant."""

    last_updated: str | None = None
    seen: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str | None) -> PullCursor:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(data.get("lastUpdated"), frozenset(data.get("seen", [])))

    def dump(self) -> str:
        return json.dumps({"lastUpdated": self.last_updated, "seen": sorted(self.seen)}, separators=(",", ":"))

    @staticmethod
    def key(remote: RemoteState) -> str:
        return f"{remote.resource_id}/_history/{remote.version_id}"

    def already_seen(self, remote: RemoteState) -> bool:
        return (self.last_updated is not None and remote.last_updated is not None and self.key(remote) in self.seen
                and parse_instant(remote.last_updated) == parse_instant(self.last_updated))

    def advanced(self, page: Sequence[RemoteState]) -> PullCursor:
        """The cursor after a fully processed page (pages come in ascending lastUpdated order)."""
        stamped = [r for r in page if r.last_updated is not None]
        if not stamped:
            return self
        newest = max(stamped, key=lambda r: parse_instant(r.last_updated or ""))
        at = parse_instant(newest.last_updated or "")
        same = {self.key(r) for r in stamped if parse_instant(r.last_updated or "") == at}
        if self.last_updated is not None and parse_instant(self.last_updated) == at:
            same |= self.seen
        return PullCursor(newest.last_updated, frozenset(same))


def check_sorted(page: Sequence[RemoteState], floor: PullCursor) -> None:
    """Refuse a page older than the cursor already reached: the server is not honouring ``_sort=_lastUpdated``.

    Advancing per page is only safe on sorted results, so an unsorted server stops the run rather than losing changes.
    """
    if floor.last_updated is None:
        return
    lowest = parse_instant(floor.last_updated)
    if any(r.last_updated is not None and parse_instant(r.last_updated) < lowest for r in page):
        raise MalformedResponse(None, None, "search results are not in _lastUpdated order (is _sort=_lastUpdated supported?)")


def default_owner() -> str:
    """A lease owner unique to this process run (host, pid, random), so a second run can never renew ours."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- the job


class SyncJob:
    """One sync run's worth of work between a Store and a FHIR server (construct per run or reuse)."""

    def __init__(self, store: Store, client: FhirClient, *, batch_size: int = 100, page_size: int = 100, owner: str | None = None,
                 lock_ttl_seconds: int = 900, progress: Progress | None = None) -> None:
        if not 1 <= batch_size <= 1000:
            raise ValueError("batch_size must be between 1 and 1000")
        if not 1 <= page_size <= 1000:
            raise ValueError("page_size must be between 1 and 1000")
        self.store = store
        self.client = client
        self.batch_size = batch_size
        self.page_size = page_size
        self.owner = owner or default_owner()
        self.lock_ttl_seconds = lock_ttl_seconds
        self._progress = progress

    # ---------------------------------------------------------------- entry point

    def run(self, *, push: bool = True, pull: bool = True, dry_run: bool = False) -> SyncSummary:
        """Push then pull. Raises SyncLocked (another run is active) or SyncAborted (stopped part-way; progress kept).

        ``dry_run`` reads both sides and reports what would happen, writing nothing anywhere (not even the lease).
        """
        summary = SyncSummary(dry_run=dry_run)
        started, requests0, retries0 = time.monotonic(), self.client.stats.requests, self.client.stats.retries
        if not dry_run and not self.store.acquire_lock(LOCK_NAME, self.owner, self.lock_ttl_seconds):
            raise SyncLocked("another sync run holds the lease")
        outcome = "aborted"
        try:
            if push:
                self._push_older_mappings(summary, dry_run, already_planned=self._push(summary, dry_run))
            if pull:
                self._pull(summary, dry_run)
            outcome = "conflicts" if summary.exit_code() else "in-step"
        except FhirError as exc:
            raise SyncAborted(f"FHIR server: {exc.message}", summary) from exc
        finally:
            summary.requests = self.client.stats.requests - requests0
            summary.retries = self.client.stats.retries - retries0
            summary.duration_seconds = time.monotonic() - started
            if not dry_run:
                self._finish(summary, outcome)
        log.info("sync %s: pushed %d, pulled %d, unchanged %d, conflicts %d, rejected %d, requests %d, retries %d",
                 outcome, summary.pushed, summary.pulled, summary.unchanged, len(summary.conflicts), len(summary.rejected),
                 summary.requests, summary.retries)
        return summary

    def _finish(self, summary: SyncSummary, outcome: str) -> None:
        try:
            self.store.audit(actor=ACTOR, action="sync.run", resource=None, outcome=outcome,
                             detail={"pushed": summary.pushed, "pulled": summary.pulled, "unchanged": summary.unchanged,
                                     "conflicts": len(summary.conflicts), "rejected": len(summary.rejected),
                                     "requests": summary.requests, "retries": summary.retries})
        finally:
            self.store.release_lock(LOCK_NAME, self.owner)

    def _renew_lease(self, dry_run: bool, summary: SyncSummary) -> None:
        if not dry_run and not self.store.acquire_lock(LOCK_NAME, self.owner, self.lock_ttl_seconds):
            raise SyncAborted("the sync lease expired and was taken by another run", summary)

    def _report(self, stage: str, count: int) -> None:
        if self._progress is not None and count:
            self._progress(stage, count)

    # ---------------------------------------------------------------- push

    def _push(self, summary: SyncSummary, dry_run: bool) -> set[str]:
        """Push forms changed since the cursor; returns the form ids it planned a write or check for."""
        cursor = int(self.store.get_cursor(PUSH_CURSOR) or 0)
        hold: int | None = None  # the durable cursor must stay below the first form still needing attention
        planned: set[str] = set()
        while True:
            page = self.store.form_ids_changed_since(cursor, self.batch_size)
            if not page:
                return planned
            self._renew_lease(dry_run, summary)
            first_seq: dict[str, int] = {}
            for seq, form_id in page:
                first_seq.setdefault(form_id, seq)
            unsettled = self._push_batch(list(first_seq), summary, dry_run, planned)
            for form_id in unsettled:
                hold = min(hold, first_seq[form_id] - 1) if hold is not None else first_seq[form_id] - 1
            cursor = page[-1][0]
            if not dry_run:
                self.store.set_cursor(PUSH_CURSOR, str(cursor if hold is None else min(cursor, hold)))
            self._report("push", len(first_seq))

    def _push_older_mappings(self, summary: SyncSummary, dry_run: bool, already_planned: set[str]) -> None:
        """Rewrite every Consent an older mapping wrote, as a normal (If-Match) update; its record then says current.

        Walks the sync records by form id, skipping forms the cursor pass of this run already planned, so each
        form is tried once per run; one left unsettled (conflict, rejection) keeps its old version and is tried
        again next run.
        """
        after = ""
        while True:
            page = self.store.form_ids_synced_with_mapping_before(MAPPING_VERSION, after, self.batch_size)
            if not page:
                return
            self._renew_lease(dry_run, summary)
            form_ids = [f for f in page if f not in already_planned]
            self._push_batch(form_ids, summary, dry_run, already_planned)
            after = page[-1]
            self._report("push", len(form_ids))

    def _push_batch(self, form_ids: list[str], summary: SyncSummary, dry_run: bool, planned: set[str]) -> set[str]:
        """Push one batch; returns the form ids left unsettled (conflicts, rejections) so the cursor waits for them.

        Every form it plans for is added to ``planned``.
        """
        candidates: list[tuple[FormVersion, SyncRecord | None]] = []
        for form_id in form_ids:
            latest, record = self.store.get(form_id), self.store.sync_record(form_id)
            if needs_push(latest, record):
                candidates.append((latest, record))
                planned.add(form_id)
        if not candidates:
            return set()
        for attempt in (1, 2):
            remotes = self._remote_states([latest.form_id for latest, _ in candidates])
            plans = [plan_push(latest, record, remotes.get(latest.form_id, [])) for latest, record in candidates]
            writes = [p for p in plans if p.action in ("create", "update")]
            if dry_run:
                summary.pushed += len(writes)
                return self._settle_unwritten(plans, summary, dry_run)
            try:
                committed = self._send(writes)
            except (PreconditionFailed, Conflict):
                if attempt == 1:
                    log.info("push batch of %d hit a version race (412); re-reading the server and classifying again", len(writes))
                    continue
                unsettled = self._settle_unwritten(plans, summary, dry_run)
                for plan in writes:
                    self._conflict(summary, plan.latest, "changed on the server while this batch was being pushed (412 twice)")
                    unsettled.add(plan.latest.form_id)
                return unsettled
            except InvalidResource:
                unsettled = self._settle_unwritten(plans, summary, dry_run)
                return unsettled | self._push_one_by_one(writes, summary)
            unsettled = self._settle_unwritten(plans, summary, dry_run)
            self._record_pushed(zip(writes, committed, strict=True), summary)
            return unsettled
        raise AssertionError("unreachable: the loop returns on its second attempt")

    def _send(self, writes: list[PushPlan]) -> list[RemoteState]:
        """One transaction for the batch; the server's id, version and time for each entry, in order."""
        if not writes:
            return []
        response = self.client.transaction(transaction_bundle(push_entry(p, self.client.base_url) for p in writes))
        entries = response.get("entry") or []
        if len(entries) != len(writes):
            raise MalformedResponse(None, None, f"transaction response has {len(entries)} entries for {len(writes)} requests")
        return [committed_state(e) for e in entries]

    def _push_one_by_one(self, writes: list[PushPlan], summary: SyncSummary) -> set[str]:
        """The server refused the batch as invalid: send each form alone to find (and report) the ones it rejects."""
        unsettled: set[str] = set()
        for plan in writes:
            try:
                committed = self._send([plan])
            except InvalidResource as exc:
                outcome = exc.outcome or operation_outcome([Issue("error", "invalid", "Consent", f"the server refused the Consent ({exc.status})")])
                summary.add_rejected(outcome, form_id=plan.latest.form_id)
                self._audit(plan.latest, "sync.push", "rejected", {"status": exc.status})
                unsettled.add(plan.latest.form_id)
            except (PreconditionFailed, Conflict):
                self._conflict(summary, plan.latest, "changed on the server while it was being pushed (412)")
                unsettled.add(plan.latest.form_id)
            else:
                self._record_pushed([(plan, committed[0])], summary)
        return unsettled

    def _settle_unwritten(self, plans: list[PushPlan], summary: SyncSummary, dry_run: bool) -> set[str]:
        """Record forms already in step and report conflicts; returns the conflicted form ids."""
        unsettled: set[str] = set()
        for plan in plans:
            if plan.action == "in-step" and plan.remote is not None:
                summary.unchanged += 1
                if not dry_run:
                    self._save_record(plan.latest, plan.record, plan.remote, written_mapping_version(plan.remote.resource))
            elif plan.action == "conflict":
                self._conflict(summary, plan.latest, plan.reason or "changed on both sides", audit=not dry_run)
                unsettled.add(plan.latest.form_id)
        return unsettled

    def _record_pushed(self, done: Iterable[tuple[PushPlan, RemoteState]], summary: SyncSummary) -> None:
        for plan, state in done:
            self._save_record(plan.latest, plan.record, state, MAPPING_VERSION)
            summary.pushed += 1
            self._audit(plan.latest, "sync.push", "pushed", {"version": plan.latest.version, "remoteVersionId": state.version_id})
            log.debug("pushed form %s version %d as Consent %s/_history/%s", plan.latest.form_id, plan.latest.version,
                      state.resource_id, state.version_id)

    def _save_record(self, latest: FormVersion, record: SyncRecord | None, state: RemoteState, mapping_version: int) -> None:
        self.store.save_sync_record(SyncRecord(
            form_id=latest.form_id, pushed_version=latest.version, remote_id=state.resource_id, remote_version_id=state.version_id,
            remote_last_updated=state.last_updated, pulled_version=record.pulled_version if record is not None else None,
            mapping_version=mapping_version))

    def _remote_states(self, form_ids: list[str]) -> dict[str, list[RemoteState]]:
        """The server's current Consents for these forms, by form id: one search per URL-sized chunk."""
        wanted = set(form_ids)
        found: dict[str, list[RemoteState]] = {}
        for chunk in identifier_chunks(form_ids):
            value = ",".join(f"{codes.ID_CONSENT_FORM}|{search_escape(f)}" for f in chunk)
            for resource in self.client.search("Consent", [("identifier", value), ("_count", str(max(len(chunk), 10)))]):
                form_id = casus_form_id(resource)
                if form_id in wanted:
                    found.setdefault(form_id, []).append(remote_state(resource))
        return found

    # ---------------------------------------------------------------- pull

    def _pull(self, summary: SyncSummary, dry_run: bool) -> None:
        cursor = PullCursor.parse(self.store.get_cursor(PULL_CURSOR))
        params: list[tuple[str, str]] = [("identifier", f"{codes.ID_CONSENT_FORM}|")]
        if cursor.last_updated:
            params.append(("_lastUpdated", f"ge{cursor.last_updated}"))
        params += [("_sort", "_lastUpdated"), ("_count", str(self.page_size))]
        for bundle in self.client.search_pages("Consent", params):
            page = [remote_state(r) for r in matched_resources(bundle)]
            check_sorted(page, cursor)
            self._renew_lease(dry_run, summary)
            for remote in page:
                if cursor.already_seen(remote):
                    summary.unchanged += 1
                else:
                    self._pull_one(remote, summary, dry_run)
            cursor = cursor.advanced(page)
            if not dry_run and page:
                self.store.set_cursor(PULL_CURSOR, cursor.dump())
            self._report("pull", len(page))

    def _pull_one(self, remote: RemoteState, summary: SyncSummary, dry_run: bool) -> None:
        form_id = casus_form_id(remote.resource)
        record = self.store.sync_record(form_id) if form_id else None
        if is_echo(remote, record):
            summary.unchanged += 1
            return
        issues = validate_consent(remote.resource, "r4", profile=codes.PROFILE_CONSENT)
        if form_id is None and not is_blocking(issues):
            missing = f"exactly one identifier with system {codes.ID_CONSENT_FORM} is required"
            issues = [*issues, Issue("error", "required", "Consent.identifier", missing)]
        if form_id is None or is_blocking(issues):
            self._reject(summary, remote, form_id, issues, dry_run)
            return
        try:
            form = r4_to_form(remote.resource)
        except InvalidInput as exc:
            self._reject(summary, remote, form_id, exc.issues, dry_run)
            return
        latest = self._latest(form_id)
        if latest is not None and form_to_json(latest.form) == form_to_json(form):
            summary.unchanged += 1
            if not dry_run:
                self._save_record(latest, record, remote, written_mapping_version(remote.resource))
            return
        if latest is not None and has_unpushed_change(latest, record):
            reason = (f"changed on the server (version {remote.version_id}) while local version {latest.version} "
                      "has not been pushed")
            self._conflict(summary, latest, reason, audit=not dry_run)
            return
        if dry_run:
            summary.pulled += 1
            return
        self._import(form, latest, record, remote, summary)

    def _import(self, form: ConsentForm, latest: FormVersion | None, record: SyncRecord | None, remote: RemoteState,
                summary: SyncSummary) -> None:
        try:
            if latest is None:
                stored = self.store.create_form(form, actor=ACTOR, source="remote")
            else:
                stored = self.store.update_form(form, expected_version=latest.version, actor=ACTOR, source="remote")
        except (VersionConflict, AlreadyExists):
            now = self._latest(form.form_id)
            if now is not None:
                self._conflict(summary, now, "changed locally while the server's version was being pulled")
            return
        self.store.save_sync_record(SyncRecord(
            form_id=form.form_id, pushed_version=stored.version, remote_id=remote.resource_id, remote_version_id=remote.version_id,
            remote_last_updated=remote.last_updated, pulled_version=stored.version,
            mapping_version=written_mapping_version(remote.resource)))
        summary.pulled += 1
        log.debug("pulled Consent %s/_history/%s as form %s version %d", remote.resource_id, remote.version_id, form.form_id, stored.version)

    def _latest(self, form_id: str) -> FormVersion | None:
        try:
            return self.store.get(form_id)
        except FormNotFound:
            return None

    # ---------------------------------------------------------------- reporting

    def _conflict(self, summary: SyncSummary, latest: FormVersion, reason: str, *, audit: bool = True) -> None:
        if summary.add_conflict(latest.form_id, reason):
            log.warning("sync conflict on form %s (local version %d)", latest.form_id, latest.version)
            if audit:
                self._audit(latest, "sync.conflict", "conflict", {"version": latest.version})

    def _reject(self, summary: SyncSummary, remote: RemoteState, form_id: str | None, issues: list[Issue], dry_run: bool) -> None:
        summary.add_rejected(operation_outcome(issues), form_id=form_id, remote_id=remote.resource_id)
        log.warning("sync rejected Consent %s/_history/%s: %d issue(s)", remote.resource_id, remote.version_id, len(issues))
        if not dry_run:
            self.store.audit(actor=ACTOR, action="sync.rejected", resource=f"Consent/{remote.resource_id}", outcome="rejected",
                             detail={"formId": form_id, "remoteVersionId": remote.version_id, "issueCount": len(issues)})

    def _audit(self, latest: FormVersion, action: str, outcome: str, detail: dict[str, Any]) -> None:
        self.store.audit(actor=ACTOR, action=action, resource=f"form/{latest.form_id}", outcome=outcome, detail=detail,
                         subject=latest.form.young_person.nhs_number)
