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
  fetches the server's current state of every form in it (``POST Consent/_search`` with the OR-list in the
  body; GET in URL-sized chunks from a server that refuses POST search).  If the server's version differs from the one we
  recorded at the last sync *and* the local form changed too, it is a conflict: reported, audited, and neither
  side is written.  If both sides hold the same content it is not a conflict: the sync record is simply brought
  up to date (this is also how a run killed after a write landed, but before it was recorded, converges).
  Conflicts and rejections are kept in the store (``sync_problems``) and listed by every run (exit 1) and by
  ``sync status`` until the two sides agree; ``resolve`` makes them agree, choosing a side.
* **Deletes on the server** are read from its Consent history since the previous run; a form whose Consent
  was deleted is reported, and written again only while it is in force.
* **Counts mean what they say.** ``pushed`` counts forms whose content reached the server in this run, also a
  write whose answer was lost and that a re-read found landed; ``in_step`` counts forms checked and found the
  same on both sides; echoes of our own writes seen again by pull count as neither.
* **Durable, crash-safe progress.** The push cursor is the store's version sequence number and moves only after
  a batch has committed on the server *and* its sync records are saved; it never moves past a conflicted or
  rejected form, so that form is looked at again next run.  The pull cursor is the greatest ``meta.lastUpdated``
  of a fully processed page (``ge`` semantics, remembering which versions were seen at exactly that instant,
  so equal timestamps are neither lost nor reported twice).  A run killed at any point re-runs to the same end.
* **State per server.** Cursors, sync records and outstanding problems are kept per FHIR server (its normalised
  base URL).  A server the store has no state for gets a full sync: every form is looked up by its business
  identifier and written only where the server lacks it or holds an older copy, so switching from a staging
  to a production server pushes everything exactly once.  ``full=True`` forces the same walk with a known server.
* **One run at a time**, by a lease in the store that is renewed between batches and released at the end.
  A lease whose holder is dead on this host is taken over at once (``sync_lease``); elsewhere it expires.
* **Older shapes are rewritten once.** Each sync record keeps the mapping version of the Consent on the server
  (``mappings.MAPPING_VERSION`` when we wrote it; what its shape shows when we pulled it; unknown = 1).  After
  the cursor pass, every form whose server copy an older mapping wrote is pushed as a normal If-Match update if
  that copy still says what the form says, and its record then says current; a copy changed on the server is
  left to pull.
* **Pull pages by keyset, not by offset.** Each page is asked afresh from the cursor
  (``_lastUpdated=ge<cursor>&_sort=_lastUpdated``) instead of by following the server's ``Bundle.link[next]``.
  Most servers page by offset: a Consent changed while a run walks the result set moves to its end and shifts
  every later page by one, so one Consent would be missed, and reaching each offset costs the server a walk past
  everything before the page.  Asked from the cursor, a changed Consent is simply met again at its new instant and nothing shifts.

Known limit: when more Consents share one ``meta.lastUpdated`` than a page holds, asking again from that instant
would return the same page, so pull follows the server's next link until a page moves past it.  Only in that
stretch does offset paging apply: a Consent changed during it can shift the next page by one and one Consent can
be missed by that run; it is pulled the next time it changes, or by a full sync.

Privacy: logs and audit details carry form ids, server ids, versions and counts only.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
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
    TransportError,
    Unauthorized,
    bundle_entries,
    identifier_query,
    matched_resources,
    next_link,
    version_from_etag,
    weak_etag,
)
from .form import ConsentForm, form_to_json
from .log_records import run_context
from .mappings import MAPPING_VERSION, codes
from .mappings.r4 import form_to_r4, r4_to_form, written_mapping_version
from .outcome import InvalidInput, Issue, is_blocking, operation_outcome
from .store import Store
from .store.forms import AlreadyExists, FormVersion, VersionConflict
from .store.forms import NotFound as FormNotFound
from .store.schema import LEGACY_SERVER
from .store.sync_state import LeaseHolder, ProblemKind, SyncProblem, SyncRecord, SyncRun, server_key
from .sync_lease import holder_is_dead, lease_owner
from .validation import validate_consent

log = logging.getLogger(__name__)

LOCK_NAME = "sync"
PUSH_CURSOR = "sync.push"
PULL_CURSOR = "sync.pull"
DELETE_CURSOR = "sync.deletes"
ACTOR = "sync"
#: Longest comma-separated identifier list sent in one GET search (keeps URLs well under common 8 KB limits); a
#: ``POST [type]/_search`` carries a whole batch in its body instead.
MAX_IDENTIFIER_QUERY_CHARS = 1800

Progress = Callable[[str, int], None]
PushAction = Literal["in-step", "create", "update", "conflict", "skip", "deleted"]


# --------------------------------------------------------------------------- errors and the summary


class SyncError(Exception):
    """The run could not be carried out; the message is safe to print (ids and statuses only)."""


class SyncLocked(SyncError):
    """Another run holds the sync lease; the message names the holder and when its lease expires."""

    def __init__(self, reason: str, summary: SyncSummary, holder: LeaseHolder | None) -> None:
        super().__init__(reason)
        self.summary = summary
        self.holder = holder


class SyncAborted(SyncError):
    """The run stopped (server unreachable, refused us, or answered nonsense).

    Everything finished before the failure is durable; ``summary`` says how far it got and why it stopped.
    """

    def __init__(self, reason: str, summary: SyncSummary) -> None:
        super().__init__(reason)
        self.summary = summary


#: Exit codes of ``fhir-adapter sync`` and outcomes of a run, one to one (75 is sysexits' EX_TEMPFAIL).
EXIT_IN_STEP, EXIT_PROBLEMS, EXIT_FAILED, EXIT_SKIPPED = 0, 1, 2, 75
OUTCOMES = {EXIT_IN_STEP: "in-step", EXIT_PROBLEMS: "problems", EXIT_FAILED: "failed", EXIT_SKIPPED: "skipped"}


def utc_now() -> datetime:
    return datetime.now(UTC)


def failure_reason(exc: FhirError, *, first_request: bool) -> str:
    """A one-line, secret-free reason for a FHIR failure that tells the operator what to check.

    >>> failure_reason(Unauthorized(401, None, "GET /Consent -> 401"), first_request=True)
    'the FHIR server refused the credentials (401): check CASUS_FHIR_AUTH and its token or key'
    >>> failure_reason(FhirError(404, None, "GET /Consent -> 404"), first_request=True)
    'the FHIR server answered 404 to its first request (GET /Consent -> 404): is CASUS_FHIR_BASE_URL the FHIR base URL?'
    """
    if isinstance(exc, Unauthorized):
        return f"the FHIR server refused the credentials ({exc.status}): check CASUS_FHIR_AUTH and its token or key"
    if exc.status == 404 and (first_request or isinstance(exc, MalformedResponse)):
        when = "to its first request" if first_request else "with a page that is not FHIR"
        return f"the FHIR server answered 404 {when} ({exc.message}): is CASUS_FHIR_BASE_URL the FHIR base URL?"
    if isinstance(exc, TransportError):
        return f"the FHIR server could not be reached: {exc.message}"
    return f"FHIR server: {exc.message}"


@dataclass
class SyncSummary:
    """What one run did, in the shape printed by ``fhir-adapter sync`` and kept for ``sync status``.

    Counts mean what they say: ``pushed`` forms whose content reached the server in this run (including a
    write whose answer was lost and that was found landed), ``pulled`` server changes stored as new local
    versions, ``in_step`` forms checked and found the same on both sides.
    """

    server: str = ""
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: datetime = field(default_factory=utc_now)
    ended_at: datetime | None = None
    pushed: int = 0
    pulled: int = 0
    in_step: int = 0
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    deleted_on_server: list[dict[str, Any]] = field(default_factory=list)
    retries: int = 0
    requests: int = 0
    duration_seconds: float = 0.0
    dry_run: bool = False
    full: bool = False
    failure: str | None = None
    skipped: bool = False
    _problem_keys: set[str] = field(default_factory=set, repr=False)
    _in_step_ids: set[str] = field(default_factory=set, repr=False)

    def add_problem(self, problem: SyncProblem) -> bool:
        """Report a conflict or rejection once per run (push, pull and the outstanding list may each meet it)."""
        entries = self.conflicts if problem.kind == "conflict" else self.rejected
        if problem.key in self._problem_keys:
            return False
        self._problem_keys.add(problem.key)
        entries.append(problem.to_json())
        return True

    def reset_problems(self) -> None:
        self.conflicts.clear()
        self.rejected.clear()
        self._problem_keys.clear()

    def mark_in_step(self, form_id: str) -> None:
        """A form checked and found the same on both sides (counted once per run)."""
        if form_id not in self._in_step_ids:
            self._in_step_ids.add(form_id)
            self.in_step = len(self._in_step_ids)

    def exit_code(self) -> int:
        """0 in step, 1 finished with problems to report, 2 failed, 75 skipped (another run holds the lease)."""
        if self.skipped:
            return EXIT_SKIPPED
        if self.failure is not None:
            return EXIT_FAILED
        return EXIT_PROBLEMS if self.conflicts or self.rejected or self.deleted_on_server else EXIT_IN_STEP

    @property
    def outcome(self) -> str:
        return OUTCOMES[self.exit_code()]

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "runId": self.run_id,
            "startedAt": self.started_at.isoformat(),
            "endedAt": (self.ended_at or self.started_at).isoformat(),
            "exitCode": self.exit_code(),
            "outcome": self.outcome,
            "failure": self.failure,
            "full": self.full,
            "dryRun": self.dry_run,
            "pushed": self.pushed,
            "pulled": self.pulled,
            "inStep": self.in_step,
            "conflicts": list(self.conflicts),
            "rejected": list(self.rejected),
            "deletedOnServer": list(self.deleted_on_server),
            "requests": self.requests,
            "retries": self.retries,
            "durationSeconds": round(self.duration_seconds, 3),
        }


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


def identifier_values(form_ids: Sequence[str]) -> str:
    """The OR-list ``system|a,system|b`` of the forms' business identifiers, one search parameter value.

    >>> identifier_values(["a", "b,c"]).count(",")
    2
    """
    return ",".join(f"{codes.ID_CONSENT_FORM}|{search_escape(f)}" for f in form_ids)


def lookup_page_size(forms: int) -> int:
    """``_count`` for an identifier look-up: room for every form and a few duplicates, so one page is the usual answer."""
    return max(2 * forms, 10)


def refuses_post_search(exc: FhirError) -> bool:
    """The server's answer to ``POST [type]/_search`` says it does not take that form of search (not a failure of the
    search itself: a refused credential or a server error is reported as such).

    >>> refuses_post_search(FhirError(405, None, "")), refuses_post_search(Unauthorized(403, None, ""))
    (True, False)
    """
    return not isinstance(exc, Unauthorized) and exc.status in (400, 404, 405, 415, 422, 501)


def states_by_form_id(pages: Iterable[dict[str, Any]], wanted: set[str]) -> dict[str, list[RemoteState]]:
    """The Consents on these search pages that carry one of the wanted form ids, grouped by form id."""
    found: dict[str, list[RemoteState]] = {}
    for bundle in pages:
        for resource in matched_resources(bundle):
            form_id = casus_form_id(resource)
            if form_id in wanted:
                found.setdefault(form_id, []).append(remote_state(resource))
    return found


# --------------------------------------------------------------------------- decisions (pure)


def has_unpushed_change(latest: FormVersion, record: SyncRecord | None) -> bool:
    """A change this server has not received: the form was never synced with it, or the latest version was made
    here and is newer than what we pushed.

    Versions pulled from the server (source 'remote') are never pushed back to it; a form with no record for
    this server (another server's, or from before the switch) is the server's to receive whatever its source.
    """
    if record is None:
        return True
    pushed = record.pushed_version if record.pushed_version is not None else 0
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


def deleted_on_server(record: SyncRecord | None, remotes: Sequence[RemoteState]) -> bool:
    """The server held a Consent for this form (we recorded its id) and now holds none."""
    return not remotes and record is not None and record.remote_id is not None


def plan_push(latest: FormVersion, record: SyncRecord | None, remotes: Sequence[RemoteState]) -> PushPlan:
    """Classify a form (changed locally, or checked against the server) against the server's Consents for it."""
    if len(remotes) > 1:
        return PushPlan(latest, record, "conflict", reason=f"{len(remotes)} Consents on the server carry this form identifier")
    if deleted_on_server(record, remotes):
        return PushPlan(latest, record, "deleted")
    remote = remotes[0] if remotes else None
    same = remote is not None and same_content(remote.resource, latest.form)
    if not has_unpushed_change(latest, record):
        # Nothing of ours to send, at most a shape to bring up to date: rewrite it when the server still says what
        # we hold; if the server's copy changed, that is the server's change (pull brings it in).
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
        reason = (
            f"changed on the server (version {record.remote_version_id} -> {remote.version_id}) "
            f"and locally (version {latest.version}) since the last sync"
        )
    return PushPlan(latest, record, "conflict", remote, reason)


def push_entry(plan: PushPlan, base_url: str) -> dict[str, Any]:
    """The transaction entry writing one form: version-aware instance PUT when we know the server's id, else conditional PUT."""
    resource = form_to_r4(plan.latest.form)
    if plan.action == "update" and plan.remote is not None:
        resource["id"] = plan.remote.resource_id
        return {
            "fullUrl": f"{base_url}/Consent/{plan.remote.resource_id}",
            "resource": resource,
            "request": {"method": "PUT", "url": f"Consent/{plan.remote.resource_id}", "ifMatch": weak_etag(plan.remote.version_id)},
        }
    return {
        "fullUrl": f"urn:uuid:{uuid.uuid4()}",
        "resource": resource,
        "request": {"method": "PUT", "url": "Consent?" + identifier_query(codes.ID_CONSENT_FORM, plan.latest.form_id)},
    }


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
        return (
            self.last_updated is not None
            and remote.last_updated is not None
            and self.key(remote) in self.seen
            and parse_instant(remote.last_updated) == parse_instant(self.last_updated)
        )

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


# --------------------------------------------------------------------------- the job


class SyncJob:
    """One sync run's worth of work between a Store and one FHIR server (construct per run or reuse)."""

    def __init__(
        self,
        store: Store,
        client: FhirClient,
        *,
        batch_size: int = 100,
        page_size: int = 100,
        owner: str | None = None,
        lock_ttl_seconds: int = 900,
        progress: Progress | None = None,
    ) -> None:
        if not 1 <= batch_size <= 1000:
            raise ValueError("batch_size must be between 1 and 1000")
        if not 1 <= page_size <= 1000:
            raise ValueError("page_size must be between 1 and 1000")
        self.store = store
        self.client = client
        self.server = server_key(client.base_url)
        self.batch_size = batch_size
        self.page_size = page_size
        self.owner = owner or lease_owner()
        self.lock_ttl_seconds = lock_ttl_seconds
        self._progress = progress
        self._sent: set[str] = set()  # forms whose write this run sent, so one found landed after a lost answer counts as pushed
        self._outstanding: set[str] = set()  # keys of the problems outstanding with this server (so solving costs no write otherwise)
        self._post_search = True  # identifier look-ups as one POST [type]/_search per batch until the server refuses it

    # ---------------------------------------------------------------- entry point

    def run(self, *, push: bool = True, pull: bool = True, dry_run: bool = False, full: bool = False) -> SyncSummary:
        """Push, check every synced form against the server, then pull.

        Raises SyncLocked (another live run holds the lease) or SyncAborted (stopped; progress kept), each
        carrying the run's summary.  ``dry_run`` reads both sides and reports what would happen, writing
        nothing anywhere (not even the lease).  ``full`` walks every form and every server Consent from the
        start, as a first run with a server does.
        """
        state = self.store.sync_state
        summary = SyncSummary(server=self.server, dry_run=dry_run)
        summary.full = full or (state.get_cursor(self.server, PUSH_CURSOR) is None and state.get_cursor(self.server, PULL_CURSOR) is None)
        self._sent = set()
        self._post_search = True
        self._outstanding = {p.key for p in state.problems(self.server)}
        with run_context(summary.run_id):
            return self._run(summary, push=push, pull=pull, dry_run=dry_run, full=full)

    def _run(self, summary: SyncSummary, *, push: bool, pull: bool, dry_run: bool, full: bool) -> SyncSummary:
        state = self.store.sync_state
        started, requests0, retries0 = time.monotonic(), self.client.stats.requests, self.client.stats.retries
        if not dry_run:
            self._take_lease(summary)
        try:
            if full and not dry_run:
                state.clear_cursors(self.server)
            if push:
                planned = self._push(summary, dry_run, from_start=full)
                self._check_synced(summary, dry_run, planned, every_form=full)
                self._check_deletions(summary, dry_run, planned)
            if pull:
                self._pull(summary, dry_run, from_start=full)
                if not dry_run and state.get_cursor(self.server, DELETE_CURSOR) is None:
                    pulled_to = PullCursor.parse(state.get_cursor(self.server, PULL_CURSOR)).last_updated
                    if pulled_to is not None:
                        state.set_cursor(self.server, DELETE_CURSOR, pulled_to)
            self._list_outstanding(summary, dry_run)
        except FhirError as exc:
            refused_probe = 0 if self._post_search else 1  # a POST search the server refused before asking by GET
            first = (self.client.stats.requests - requests0) - (self.client.stats.retries - retries0) - refused_probe <= 1
            summary.failure = failure_reason(exc, first_request=first)
            raise SyncAborted(summary.failure, summary) from exc
        except Exception as exc:
            summary.failure = f"unexpected {type(exc).__name__}"
            raise
        finally:
            summary.requests = self.client.stats.requests - requests0
            summary.retries = self.client.stats.retries - retries0
            summary.duration_seconds = time.monotonic() - started
            summary.ended_at = utc_now()
            if not dry_run:
                self._finish(summary)
        log.info(
            "sync %s with %s: pushed %d, pulled %d, in step %d, conflicts %d, rejected %d, deleted on server %d, requests %d, retries %d",
            summary.outcome,
            self.server,
            summary.pushed,
            summary.pulled,
            summary.in_step,
            len(summary.conflicts),
            len(summary.rejected),
            len(summary.deleted_on_server),
            summary.requests,
            summary.retries,
        )
        return summary

    def _take_lease(self, summary: SyncSummary, *, record_refusal: bool = True) -> None:
        """Take the lease, taking it over at once from a holder that is dead on this host; else SyncLocked."""
        state = self.store.sync_state
        if state.acquire_lock(LOCK_NAME, self.owner, self.lock_ttl_seconds):
            return
        holder = state.lock_holder(LOCK_NAME)
        if holder is None and state.acquire_lock(LOCK_NAME, self.owner, self.lock_ttl_seconds):
            return
        if holder is not None and holder_is_dead(holder.owner) and state.take_over_lock(LOCK_NAME, holder.owner, self.owner, self.lock_ttl_seconds):
            log.warning("sync lease taken over from %s, a process on this host that has ended", holder.owner)
            self.store.audit(
                actor=ACTOR,
                action="sync.lease",
                resource=None,
                outcome="taken-over",
                detail={"previousOwner": holder.owner, "owner": self.owner, "server": self.server},
            )
            return
        summary.skipped = True
        summary.ended_at = utc_now()
        who = f"{holder.owner} until {holder.expires_at.isoformat(timespec='seconds')}" if holder is not None else "another run"
        summary.failure = f"another sync run holds the lease ({who})"
        if record_refusal:
            self._record_run(summary)
        raise SyncLocked(summary.failure, summary, holder)

    def _finish(self, summary: SyncSummary) -> None:
        try:
            detail: dict[str, Any] = {
                "server": self.server,
                "runId": summary.run_id,
                "pushed": summary.pushed,
                "pulled": summary.pulled,
                "inStep": summary.in_step,
                "conflicts": len(summary.conflicts),
                "rejected": len(summary.rejected),
                "deletedOnServer": len(summary.deleted_on_server),
                "requests": summary.requests,
                "retries": summary.retries,
            }
            if summary.failure is not None:
                detail["failure"] = summary.failure  # not "reason": the audit trail redacts free text under that key
            self.store.audit(actor=ACTOR, action="sync.run", resource=None, outcome=summary.outcome, detail=detail)
            self._record_run(summary)
        finally:
            self.store.release_lock(LOCK_NAME, self.owner)

    def _record_run(self, summary: SyncSummary) -> None:
        self.store.sync_state.record_run(
            SyncRun(
                run_id=summary.run_id,
                server=self.server,
                started_at=summary.started_at,
                ended_at=summary.ended_at or utc_now(),
                exit_code=summary.exit_code(),
                outcome=summary.outcome,
                summary=summary.to_json(),
            )
        )

    def _renew_lease(self, dry_run: bool, summary: SyncSummary) -> None:
        if not dry_run and not self.store.acquire_lock(LOCK_NAME, self.owner, self.lock_ttl_seconds):
            raise SyncAborted("the sync lease expired and was taken by another run", summary)

    def _report(self, stage: str, count: int) -> None:
        if self._progress is not None and count:
            self._progress(stage, count)

    # ---------------------------------------------------------------- push

    def _push(self, summary: SyncSummary, dry_run: bool, *, from_start: bool) -> set[str]:
        """Push forms changed since the cursor (every form when ``from_start``); returns the form ids it looked up."""
        cursor = 0 if from_start else int(self.store.get_cursor(self.server, PUSH_CURSOR) or 0)
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
            unsettled = self._push_batch(list(first_seq), summary, dry_run, planned, check_all=from_start)
            for form_id in unsettled:
                hold = min(hold, first_seq[form_id] - 1) if hold is not None else first_seq[form_id] - 1
            cursor = page[-1][0]
            if not dry_run:
                self.store.set_cursor(self.server, PUSH_CURSOR, str(cursor if hold is None else min(cursor, hold)))
            self._report("push", len(first_seq))

    def _check_synced(self, summary: SyncSummary, dry_run: bool, already_planned: set[str], *, every_form: bool) -> None:
        """Look up forms the server is known to hold and settle them: a Consent an older mapping wrote is rewritten
        (If-Match update), one deleted on the server is reported (and re-pushed while the form is in force), one
        that is the same on both sides counts as in step.

        Each run checks the forms whose Consent an older mapping wrote; a full run checks every form the server
        is known to hold.  Walks the sync records by form id, one identifier search per batch, skipping forms
        the cursor pass of this run already looked up, so each form is tried once per run.
        """
        state = self.store.sync_state
        after = ""
        while True:
            page = (
                state.form_ids_on_server(self.server, after, self.batch_size)
                if every_form
                else state.form_ids_synced_with_mapping_before(self.server, MAPPING_VERSION, after, self.batch_size)
            )
            if not page:
                return
            self._renew_lease(dry_run, summary)
            form_ids = [f for f in page if f not in already_planned]
            self._push_batch(form_ids, summary, dry_run, already_planned, check_all=True)
            after = page[-1]
            self._report("push", len(form_ids))

    def _check_deletions(self, summary: SyncSummary, dry_run: bool, already_planned: set[str]) -> None:
        """Find Consents deleted on the server since the last run in its type history (``Consent/_history?_since=``,
        where a delete is an entry with ``request.method`` DELETE) and settle each form we had synced there.

        Starts from the deletion cursor, or the pull cursor on the first run with a server (nothing synced before
        it can have been deleted unseen); a server without type history is logged and left to ``--full``.
        """
        state = self.store.sync_state
        since = state.get_cursor(self.server, DELETE_CURSOR) or PullCursor.parse(state.get_cursor(self.server, PULL_CURSOR)).last_updated
        if since is None:
            return
        newest, deleted = since, []
        try:
            for bundle in self.client.history_pages("Consent", [("_since", since), ("_count", str(self.page_size))]):
                for entry in bundle_entries(bundle):
                    request, response = entry.get("request") or {}, entry.get("response") or {}
                    when = response.get("lastModified") if isinstance(response, dict) else None
                    if isinstance(when, str) and parse_instant(when) > parse_instant(newest):
                        newest = when
                    if isinstance(request, dict) and request.get("method") == "DELETE":
                        remote_id = _id_from_location(str(request.get("url") or entry.get("fullUrl") or ""))
                        form_id = state.form_id_of_remote(self.server, remote_id) if remote_id else None
                        if form_id is not None and form_id not in already_planned:
                            deleted.append(form_id)
        except FhirError as exc:
            if isinstance(exc, Unauthorized) or exc.status is None or exc.status not in (400, 404, 405, 501):
                raise
            log.warning("sync: the server's Consent history is not available (%s); deletions are found by --full only", exc.status)
            return
        gone = sorted(set(deleted))
        for start in range(0, len(gone), self.batch_size):
            self._push_batch(gone[start : start + self.batch_size], summary, dry_run, already_planned, check_all=True)
        if not dry_run:
            state.set_cursor(self.server, DELETE_CURSOR, newest)

    def _push_batch(self, form_ids: list[str], summary: SyncSummary, dry_run: bool, planned: set[str], *, check_all: bool = False) -> set[str]:
        """Push one batch; returns the form ids left unsettled (conflicts, rejections) so the cursor waits for them.

        Every form it looks up is added to ``planned``; ``check_all`` looks up forms with nothing to push too.
        """
        candidates: list[tuple[FormVersion, SyncRecord | None]] = []
        for form_id in form_ids:
            latest, record = self.store.get(form_id), self.store.sync_record(self.server, form_id)
            if check_all or needs_push(latest, record):
                candidates.append((latest, record))
                planned.add(form_id)
        if not candidates:
            return set()
        for attempt in (1, 2):
            remotes = self._remote_states([latest.form_id for latest, _ in candidates])
            plans = [
                self._settle_deleted(
                    plan_push(latest, record or self._adopted(latest.form_id, remotes.get(latest.form_id, [])), remotes.get(latest.form_id, [])),
                    summary,
                    dry_run,
                )
                for latest, record in candidates
            ]
            writes = [p for p in plans if p.action in ("create", "update")]
            if dry_run:
                summary.pushed += len(writes)
                return self._settle_unwritten(plans, summary, dry_run)
            try:
                self._sent.update(p.latest.form_id for p in writes)
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

    def _settle_deleted(self, plan: PushPlan, summary: SyncSummary, dry_run: bool) -> PushPlan:
        """A Consent deleted on the server: report it; write the form again only while it is in force (active)."""
        if plan.action != "deleted":
            return plan
        in_force = plan.latest.form.status == "active"
        record = plan.record
        assert record is not None  # deleted_on_server() needs a record
        if not any(d["formId"] == plan.latest.form_id for d in summary.deleted_on_server):
            summary.deleted_on_server.append(
                {"formId": plan.latest.form_id, "remoteId": record.remote_id, "status": plan.latest.form.status, "rePushed": in_force}
            )
            log.warning(
                "sync: Consent %s for form %s was deleted on the server (%s)",
                record.remote_id,
                plan.latest.form_id,
                "re-pushing, the form is in force" if in_force else "not re-pushed, the form is not in force",
            )
            if not dry_run:
                self._audit(
                    plan.latest,
                    "sync.deleted-on-server",
                    "re-pushed" if in_force else "reported",
                    {"remoteId": record.remote_id, "server": self.server},
                )
        if in_force:
            return replace(plan, action="create", record=replace(record, remote_id=None, remote_version_id=None))
        if not dry_run:  # the server no longer holds it: forget its id, so the deletion is reported once
            self.store.save_sync_record(
                replace(record, remote_id=None, remote_version_id=None, remote_last_updated=None, pushed_version=plan.latest.version)
            )
        return replace(plan, action="skip")

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
                self._problem(
                    summary,
                    "rejected",
                    plan.latest.form_id,
                    form_id=plan.latest.form_id,
                    remote=plan.remote,
                    local_version=plan.latest.version,
                    detail={"outcome": outcome},
                    dry_run=False,
                )
                self._audit(plan.latest, "sync.push", "rejected", {"status": exc.status})
                unsettled.add(plan.latest.form_id)
            except (PreconditionFailed, Conflict):
                self._conflict(summary, plan.latest, "changed on the server while it was being pushed (412)")
                unsettled.add(plan.latest.form_id)
            else:
                self._record_pushed([(plan, committed[0])], summary)
        return unsettled

    def _settle_unwritten(self, plans: list[PushPlan], summary: SyncSummary, dry_run: bool) -> set[str]:
        """Record forms already in step and report conflicts; returns the conflicted form ids.

        A form in step whose write this run sent (its answer was lost, a retry met 412) landed: it counts as pushed.
        """
        unsettled: set[str] = set()
        for plan in plans:
            form_id = plan.latest.form_id
            if plan.action == "in-step" and plan.remote is not None:
                if form_id in self._sent:
                    summary.pushed += 1
                    if not dry_run:
                        self._audit(
                            plan.latest,
                            "sync.push",
                            "pushed",
                            {"version": plan.latest.version, "remoteVersionId": plan.remote.version_id, "landed": True},
                        )
                else:
                    summary.mark_in_step(form_id)
                if not dry_run:
                    self._save_record(plan.latest, plan.record, plan.remote, written_mapping_version(plan.remote.resource))
                    self._solved(form_id)
            elif plan.action == "conflict":
                self._conflict(summary, plan.latest, plan.reason or "changed on both sides", remote=plan.remote, dry_run=dry_run)
                unsettled.add(form_id)
        return unsettled

    def _record_pushed(self, done: Iterable[tuple[PushPlan, RemoteState]], summary: SyncSummary) -> None:
        for plan, state in done:
            self._save_record(plan.latest, plan.record, state, MAPPING_VERSION)
            self._solved(plan.latest.form_id)
            summary.pushed += 1
            self._audit(plan.latest, "sync.push", "pushed", {"version": plan.latest.version, "remoteVersionId": state.version_id})
            log.debug(
                "pushed form %s version %d as Consent %s/_history/%s", plan.latest.form_id, plan.latest.version, state.resource_id, state.version_id
            )

    def _save_record(self, latest: FormVersion, record: SyncRecord | None, state: RemoteState, mapping_version: int) -> None:
        self.store.save_sync_record(
            SyncRecord(
                server=self.server,
                form_id=latest.form_id,
                pushed_version=latest.version,
                remote_id=state.resource_id,
                remote_version_id=state.version_id,
                remote_last_updated=state.last_updated,
                pulled_version=record.pulled_version if record is not None else None,
                mapping_version=mapping_version,
            )
        )

    def _remote_states(self, form_ids: list[str]) -> dict[str, list[RemoteState]]:
        """The server's current Consents for these forms, by form id.

        One ``POST Consent/_search`` with the whole OR-list in the body (one request per batch); a server that
        refuses that form of search is asked by GET, one search per URL-sized chunk, for the rest of the run.
        """
        if self._post_search and form_ids:
            params = [("identifier", identifier_values(form_ids)), ("_count", str(lookup_page_size(len(form_ids))))]
            try:
                return states_by_form_id(self.client.search_post_pages("Consent", params), set(form_ids))
            except FhirError as exc:
                if not refuses_post_search(exc):
                    raise
                self._post_search = False
                log.warning("sync: the server refused POST Consent/_search (%s); identifier look-ups use GET for this run", exc.status)
        found: dict[str, list[RemoteState]] = {}
        for chunk in identifier_chunks(form_ids):
            params = [("identifier", identifier_values(chunk)), ("_count", str(lookup_page_size(len(chunk))))]
            for form_id, states in states_by_form_id(self.client.search_pages("Consent", params), set(chunk)).items():
                found.setdefault(form_id, []).extend(states)
        return found

    # ---------------------------------------------------------------- pull

    def _pull(self, summary: SyncSummary, dry_run: bool, *, from_start: bool) -> None:
        """Walk the server's Consents in ``_lastUpdated`` order, asking each page afresh from the cursor (keyset paging).

        Offset paging (the server's next links) shifts when a Consent earlier in the result changes mid-walk, and
        costs offset servers a scan of everything before the page; a query from the cursor does neither.  Its first
        page repeats the versions already handled at the cursor's instant, so when those fill a whole page (more
        Consents share one instant than a page holds) asking again would return the same page: the walk then takes
        the server's next link instead, until a page moves past that instant.
        """
        cursor = PullCursor() if from_start else PullCursor.parse(self.store.get_cursor(self.server, PULL_CURSOR))
        pages = self._pull_pages(cursor)
        while (bundle := next(pages, None)) is not None:
            page = [remote_state(r) for r in matched_resources(bundle)]
            check_sorted(page, cursor)
            self._renew_lease(dry_run, summary)
            fresh = [remote for remote in page if not cursor.already_seen(remote)]
            for remote in fresh:
                self._pull_one(remote, summary, dry_run)
            reached = cursor.advanced(page)
            if not dry_run and reached != cursor:
                self.store.set_cursor(self.server, PULL_CURSOR, reached.dump())
            self._report("pull", len(fresh))
            if next_link(bundle) is None:
                return
            if fresh and len(reached.seen) < len(page):  # asking from the new cursor brings at least one unseen entry
                pages = self._pull_pages(reached)
            cursor = reached

    def _pull_pages(self, cursor: PullCursor) -> Iterator[dict[str, Any]]:
        """The search pages from ``cursor`` on (the caller reads the first and follows next links only at one instant)."""
        params: list[tuple[str, str]] = [("identifier", f"{codes.ID_CONSENT_FORM}|")]
        if cursor.last_updated:
            params.append(("_lastUpdated", f"ge{cursor.last_updated}"))
        params += [("_sort", "_lastUpdated"), ("_count", str(self.page_size))]
        return self.client.search_pages("Consent", params)

    def _pull_one(self, remote: RemoteState, summary: SyncSummary, dry_run: bool) -> None:
        form_id = casus_form_id(remote.resource)
        record = (self.store.sync_record(self.server, form_id) or self._adopted(form_id, [remote])) if form_id else None
        if is_echo(remote, record):
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
            summary.mark_in_step(form_id)
            if not dry_run:
                self._save_record(latest, record, remote, written_mapping_version(remote.resource))
                self._solved(form_id, remote)
            return
        if latest is not None and has_unpushed_change(latest, record):
            reason = f"changed on the server (version {remote.version_id}) while local version {latest.version} has not been pushed"
            self._conflict(summary, latest, reason, remote=remote, dry_run=dry_run)
            return
        if dry_run:
            summary.pulled += 1
            return
        self._import(form, latest, record, remote, summary)

    def _import(self, form: ConsentForm, latest: FormVersion | None, record: SyncRecord | None, remote: RemoteState, summary: SyncSummary) -> None:
        try:
            if latest is None:
                stored = self.store.create_form(form, actor=ACTOR, source="remote")
            else:
                stored = self.store.update_form(form, expected_version=latest.version, actor=ACTOR, source="remote")
        except (VersionConflict, AlreadyExists):
            now = self._latest(form.form_id)
            if now is not None:
                self._conflict(summary, now, "changed locally while the server's version was being pulled", remote=remote)
            return
        self.store.save_sync_record(
            SyncRecord(
                server=self.server,
                form_id=form.form_id,
                pushed_version=stored.version,
                remote_id=remote.resource_id,
                remote_version_id=remote.version_id,
                remote_last_updated=remote.last_updated,
                pulled_version=stored.version,
                mapping_version=written_mapping_version(remote.resource),
            )
        )
        self._solved(form.form_id, remote)
        summary.pulled += 1
        log.debug("pulled Consent %s/_history/%s as form %s version %d", remote.resource_id, remote.version_id, form.form_id, stored.version)

    def _adopted(self, form_id: str, remotes: Sequence[RemoteState]) -> SyncRecord | None:
        """The record kept before sync state was per server, taken as this server's when the server holds the very
        Consent it names (same server id: ids are the server's own), so an upgrade does not turn every change
        the server made since the last sync into a conflict."""
        legacy = self.store.sync_record(LEGACY_SERVER, form_id)
        if legacy is None or legacy.remote_id is None or [r.resource_id for r in remotes] != [legacy.remote_id]:
            return None
        return replace(legacy, server=self.server)

    def _latest(self, form_id: str) -> FormVersion | None:
        try:
            return self.store.get(form_id)
        except FormNotFound:
            return None

    # ---------------------------------------------------------------- problems and reporting

    def _conflict(self, summary: SyncSummary, latest: FormVersion, reason: str, *, remote: RemoteState | None = None, dry_run: bool = False) -> None:
        if self._problem(
            summary,
            "conflict",
            latest.form_id,
            form_id=latest.form_id,
            remote=remote,
            local_version=latest.version,
            detail={"reason": reason},
            dry_run=dry_run,
        ):
            log.warning("sync conflict on form %s (local version %d)", latest.form_id, latest.version)
            if not dry_run:
                self._audit(latest, "sync.conflict", "conflict", {"version": latest.version, "server": self.server})

    def _reject(self, summary: SyncSummary, remote: RemoteState, form_id: str | None, issues: list[Issue], dry_run: bool) -> None:
        key = form_id or f"Consent/{remote.resource_id}"
        self._problem(
            summary,
            "rejected",
            key,
            form_id=form_id,
            remote=remote,
            local_version=None,
            detail={"outcome": operation_outcome(issues)},
            dry_run=dry_run,
        )
        log.warning("sync rejected Consent %s/_history/%s: %d issue(s)", remote.resource_id, remote.version_id, len(issues))
        if not dry_run:
            self.store.audit(
                actor=ACTOR,
                action="sync.rejected",
                resource=f"Consent/{remote.resource_id}",
                outcome="rejected",
                detail={"formId": form_id, "remoteVersionId": remote.version_id, "issueCount": len(issues), "server": self.server},
            )

    def _problem(
        self,
        summary: SyncSummary,
        kind: ProblemKind,
        key: str,
        *,
        form_id: str | None,
        remote: RemoteState | None,
        local_version: int | None,
        detail: dict[str, Any],
        dry_run: bool,
    ) -> bool:
        """Report a problem in this run and keep it outstanding until solved; False if this run already reported it."""
        problem = SyncProblem(
            kind=kind,
            key=key,
            form_id=form_id,
            remote_id=remote.resource_id if remote else None,
            remote_version_id=remote.version_id if remote else None,
            local_version=local_version,
            detail=detail,
        )
        if not summary.add_problem(problem):
            return False
        if not dry_run:
            self.store.sync_state.save_problem(self.server, problem)
            self._outstanding.add(problem.key)
        return True

    def _solved(self, form_id: str, remote: RemoteState | None = None) -> None:
        """The form is in step with the server: any problem outstanding for it (or its server Consent) is over."""
        state = self.store.sync_state
        for key in (form_id, f"Consent/{remote.resource_id}" if remote is not None else None):
            if key in self._outstanding and state.clear_problem(self.server, key):
                self._outstanding.discard(key)
                log.info("sync problem %s is solved", key)

    def _list_outstanding(self, summary: SyncSummary, dry_run: bool) -> None:
        """Every problem still outstanding with this server is reported by every run until it is solved.

        After a real run the stored list is the whole truth (with when each was first seen); a dry run adds
        the stored ones to what it found.
        """
        if not dry_run:
            summary.reset_problems()
        for problem in self.store.sync_state.problems(self.server):
            summary.add_problem(problem)

    def _audit(self, latest: FormVersion, action: str, outcome: str, detail: dict[str, Any]) -> None:
        self.store.audit(
            actor=ACTOR, action=action, resource=f"form/{latest.form_id}", outcome=outcome, detail=detail, subject=latest.form.young_person.nhs_number
        )

    # ---------------------------------------------------------------- resolving a problem by hand

    def resolve(self, form_id: str, keep: Literal["local", "server"], *, actor: str) -> dict[str, Any]:
        """Make both sides agree on one form, choosing which side wins; audited, version-checked on both sides.

        ``local`` writes the form's latest version over the server copy with ``If-Match`` on the server version
        just read; ``server`` stores the server copy as a new local version, expecting the local version just
        read.  Either side changing in between refuses the resolution (ResolveRefused) with nothing written.
        Holds the sync lease while it works, so no run interleaves.
        """
        latest = self._latest(form_id)
        if latest is None:
            raise ResolveRefused(f"no form {form_id} in the store")
        summary = SyncSummary(server=self.server)
        self._take_lease(summary, record_refusal=False)
        self._outstanding = {p.key for p in self.store.sync_state.problems(self.server)}
        try:
            remotes = self._remote_states([form_id]).get(form_id, [])
            if len(remotes) != 1:
                raise ResolveRefused(f"the server holds {len(remotes)} Consents for form {form_id}; exactly one is needed")
            remote = remotes[0]
            record = self.store.sync_record(self.server, form_id)
            if keep == "local":
                plan = PushPlan(latest, record, "update", remote)
                try:
                    state = self._send([plan])[0]
                except (PreconditionFailed, Conflict) as exc:
                    raise ResolveRefused("the server copy changed while resolving (412); look again and retry") from exc
                except InvalidResource as exc:
                    raise ResolveRefused(f"the server refused the local version ({exc.status})") from exc
                self._save_record(latest, record, state, MAPPING_VERSION)
                result = {"formId": form_id, "kept": "local", "localVersion": latest.version, "remoteVersionId": state.version_id}
            else:
                try:
                    form = r4_to_form(remote.resource)
                except InvalidInput as exc:
                    raise ResolveRefused(
                        f"the server copy is not a valid CASUS Consent ({len(exc.issues)} issue(s)); keep the local version instead"
                    ) from exc
                try:
                    stored = self.store.update_form(form, expected_version=latest.version, actor=actor, source="remote")
                except VersionConflict as exc:
                    raise ResolveRefused("the form changed locally while resolving; look again and retry") from exc
                self.store.save_sync_record(
                    SyncRecord(
                        server=self.server,
                        form_id=form_id,
                        pushed_version=stored.version,
                        remote_id=remote.resource_id,
                        remote_version_id=remote.version_id,
                        remote_last_updated=remote.last_updated,
                        pulled_version=stored.version,
                        mapping_version=written_mapping_version(remote.resource),
                    )
                )
                latest = stored
                result = {"formId": form_id, "kept": "server", "localVersion": stored.version, "remoteVersionId": remote.version_id}
            self._solved(form_id, remote)
            self.store.audit(
                actor=actor,
                action="sync.resolve",
                resource=f"form/{form_id}",
                outcome=f"kept-{keep}",
                detail={"server": self.server, "localVersion": result["localVersion"], "remoteVersionId": result["remoteVersionId"]},
                subject=latest.form.young_person.nhs_number,
            )
            return result
        finally:
            self.store.release_lock(LOCK_NAME, self.owner)


class ResolveRefused(SyncError):
    """A resolution that could not be made safely; nothing was written (the message says why, ids only)."""


def sync_status(store: Store, server: str) -> dict[str, Any]:
    """What an operator asks before anything else: the last run, what waits to go, who holds the lease, what is
    outstanding.  Reads the store only (no request to the FHIR server)."""
    state = store.sync_state
    last, success = state.last_run(server), state.last_run(server, outcome="in-step")
    holder = state.lock_holder(LOCK_NAME)
    problems = state.problems(server)
    return {
        "server": server,
        "lastRun": None
        if last is None
        else {
            "runId": last.run_id,
            "startedAt": last.started_at.isoformat(),
            "endedAt": last.ended_at.isoformat(),
            "exitCode": last.exit_code,
            "outcome": last.outcome,
            "failure": last.summary.get("failure"),
            "pushed": last.summary.get("pushed", 0),
            "pulled": last.summary.get("pulled", 0),
            "inStep": last.summary.get("inStep", 0),
        },
        "lastSuccessAt": success.ended_at.isoformat() if success is not None else None,
        "formsWaiting": state.forms_waiting(server),
        "lease": None
        if holder is None
        else {"holder": holder.owner, "expiresAt": holder.expires_at.isoformat(), "holderEnded": holder_is_dead(holder.owner)},
        "conflicts": [p.to_json() for p in problems if p.kind == "conflict"],
        "rejected": [p.to_json() for p in problems if p.kind == "rejected"],
    }
