"""Use cases of the facade and CLI: record, change, read and decide — each audited.

This is the seam HAPI FHIR calls a consent service: the store keeps versions,
the decision engine judges, and this module ties them together with the audit
trail so that no transport (Flask, CLI, CDS Hooks) can forget to audit.  Audit
records say who asked what and the verdict; they hold identifiers and codes,
never names or free text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from . import decision
from .disclosure import Disclosure
from .form import ConsentForm, Professional, Recorded
from .mappings import r4, r5
from .outcome import InvalidInput, error
from .store import Store
from .store.forms import FormVersion, NotFound

Clock = Callable[[], datetime]
#: How far ahead of the server's clock a form's recorded time may be: the clocks of the recording device and the server differ.
CLOCK_SKEW = timedelta(minutes=5)
#: A version recorded this long before it is stored is accepted and flagged in the audit (``CASUS_BACKDATED_DAYS``).
DEFAULT_BACKDATED_AFTER = timedelta(days=90)
#: The audit flag of a version entered long after the choice it records was made.
FLAG_BACKDATED = "backdated"
UK = ZoneInfo("Europe/London")  # review flags fall on UK calendar days, as the decision engine's do


def utc_now() -> datetime:
    return datetime.now(UTC)


class FormIdMismatch(ValueError):
    """The body names a different form than the URL."""


class RecordedInFuture(InvalidInput):
    """A version whose choice is dated after now: a choice cannot govern before it is made, so it is refused (422)."""


class NotADraft(ValueError):
    """Only a draft (a proposal) can be made active; the form's latest version is something else."""


@dataclass(frozen=True)
class ConsentOverview:
    """All a person reading one young person's consent needs at once: every version, what is in force, what waits."""

    nhs_number: str
    histories: tuple[tuple[FormVersion, ...], ...]  # per form, its versions oldest first
    in_force: FormVersion | None  # the version in force now (of any status), None when there is none
    summary: tuple[decision.RecipientSummary, ...]  # who may receive what now, as the decision engine says
    proposals: tuple[decision.Proposal, ...]  # drafts waiting to be agreed, with what they would change
    review_flags: tuple[str, ...]  # turned 16 under a parent's consent, turned 18


class ConsentService:
    def __init__(self, store: Store, clock: Clock = utc_now, *, backdated_after: timedelta = DEFAULT_BACKDATED_AFTER) -> None:
        self.store = store
        self.clock = clock
        self.backdated_after = backdated_after

    # ------------------------------------------------------------------ writes

    def create(self, form: ConsentForm, *, actor: str) -> FormVersion:
        flags = self._time_flags(form)
        return self.store.create_form(form, actor=actor, flags=flags)  # the store audits every version it writes

    def update(self, form: ConsentForm, *, form_id: str, expected_version: int, actor: str) -> FormVersion:
        if form.form_id != form_id:
            raise FormIdMismatch(f"the body's formId does not match the form {form_id} being updated")
        flags = self._time_flags(form)
        return self.store.update_form(form, expected_version=expected_version, actor=actor, flags=flags)

    def _time_flags(self, form: ConsentForm, field: str = "$.recorded.date") -> tuple[str, ...]:
        """Refuse a choice dated in the future; flag one entered long after it was made (the store audits the flag).

        A version governs from its recorded date, so a future date would make it decide before it exists, and a
        very late entry changes past answers: that is allowed (paper forms are typed in late) but must be visible.
        """
        now = self.clock()
        recorded = form.recorded.date
        if recorded > now + CLOCK_SKEW:
            raise RecordedInFuture(
                [
                    error(
                        "processing",
                        field,
                        "the form is recorded in the future; a choice takes effect from when it was made, so record it once it has been made",
                    )
                ]
            )
        return (FLAG_BACKDATED,) if now - recorded > self.backdated_after else ()

    def put(self, form: ConsentForm, *, expected_version: int | None, actor: str) -> tuple[FormVersion, bool]:
        """FHIR update-as-create: create when the form is new, else a version-checked update. True when created."""
        try:
            current = self.store.get(form.form_id)
        except NotFound:
            if expected_version is not None:
                raise
            return self.create(form, actor=actor), True
        if expected_version is None:
            expected_version = current.version
        return self.update(form, form_id=form.form_id, expected_version=expected_version, actor=actor), False

    def withdraw(self, form_id: str, *, expected_version: int, actor: str) -> FormVersion:
        """A withdrawal recorded now: it takes effect from its own moment, never back to when the consent was given."""
        current = self.store.get(form_id)
        withdrawn = replace(current.form, status="withdrawn", recorded=Recorded(self.clock(), current.form.recorded.by))
        return self.store.update_form(withdrawn, expected_version=expected_version, actor=actor)

    def activate(self, form_id: str, *, expected_version: int, actor: str, agreed_at: datetime | None = None, by: str | None = None) -> FormVersion:
        """Make the draft the active version: the young person (or the decider) agreed to the proposal at ``agreed_at``.

        The agreement is the choice, so the new version is recorded at it (default now; earlier when it was agreed
        on paper and entered later) and governs from then.  Raises NotADraft when the latest version is not a
        draft, and InvalidInput naming ``$.agreedAt`` when the agreement would precede the proposal or lie in the
        future; nothing is stored then.  The agreement is audited beside the stored version, naming the draft.
        """
        current = self.store.get(form_id)
        if current.form.status != "draft":
            raise NotADraft(f"version {current.version} of the form is {current.form.status}, not a draft; only a proposal can be made active")
        agreed = agreed_at or self.clock()
        if agreed < current.form.recorded.date:
            raise InvalidInput([error("processing", "$.agreedAt", "the agreement cannot precede the proposal it agrees to")])
        recorder = Professional(by) if by else current.form.recorded.by  # who recorded the agreement, when known
        active = replace(current.form, status="active", recorded=Recorded(agreed, recorder))
        flags = self._time_flags(active, "$.agreedAt")
        saved = self.store.update_form(active, expected_version=expected_version, actor=actor, flags=flags)
        self.store.audit(
            actor=actor,
            action="form.activate",
            resource=_ref(saved),
            outcome="ok",
            subject=_subject(saved),
            detail={"proposal": _ref(current), "governsFrom": agreed.isoformat()},
        )
        return saved

    def record_disclosure(self, disclosure: Disclosure, *, actor: str) -> Disclosure:
        return self.store.record_disclosure(disclosure, actor=actor)

    # ------------------------------------------------------------------ reads (audited: they reveal consent content)

    def read(self, form_id: str, version: int | None = None, *, actor: str) -> FormVersion:
        try:
            found = self.store.get(form_id, version)
        except NotFound:
            self.store.audit(actor=actor, action="form.read", resource=f"Consent/{form_id}", outcome="not-found")
            raise
        self.store.audit(actor=actor, action="form.read", resource=_ref(found), outcome="ok", subject=_subject(found))
        return found

    def history(self, form_id: str, *, actor: str) -> list[FormVersion]:
        try:
            versions = self.store.history(form_id)
        except NotFound:
            self.store.audit(actor=actor, action="form.history", resource=f"Consent/{form_id}", outcome="not-found")
            raise
        self.store.audit(
            actor=actor,
            action="form.history",
            resource=f"Consent/{form_id}",
            outcome="ok",
            detail={"versions": len(versions)},
            subject=_subject(versions[-1]),
        )
        return versions

    def search(self, *, actor: str, form_id: str | None = None, limit: int = 20, offset: int = 0, **criteria: Any) -> tuple[list[FormVersion], int]:
        """Latest versions matching the criteria; ``form_id`` (a business identifier search) narrows to one form."""
        if form_id is not None:
            found, total = self._search_one(form_id, limit=limit, offset=offset, **criteria)
        else:
            found, total = self.store.search(limit=limit, offset=offset, **criteria)
        detail = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in criteria.items() if v is not None and k != "nhs_number"}
        self.store.audit(
            actor=actor,
            action="form.search",
            resource="Consent",
            outcome="ok",
            detail={**detail, "total": total, "returned": len(found)},
            subject=criteria.get("nhs_number"),
        )
        return found, total

    def _search_one(
        self,
        form_id: str,
        *,
        limit: int,
        offset: int,
        nhs_number: str | None = None,
        status: str | None = None,
        updated_since: datetime | None = None,
        updated_before: datetime | None = None,
    ) -> tuple[list[FormVersion], int]:
        try:
            latest = self.store.get(form_id)
        except NotFound:
            return [], 0
        keep = (
            (nhs_number is None or latest.form.young_person.nhs_number == nhs_number)
            and (status is None or latest.form.status == status)
            and (updated_since is None or latest.stored_at >= updated_since)
            and (updated_before is None or latest.stored_at < updated_before)
        )
        matches = [latest] if keep else []
        return matches[offset : offset + limit], len(matches)

    def record_session(self, *, actor: str, action: str, outcome: str) -> None:
        """Sign-ins (refused ones too) and sign-outs of the consent pages, in the same audit trail as every read."""
        self.store.audit(actor=actor, action=action, resource=None, outcome=outcome)

    def overview(self, nhs_number: str, *, actor: str) -> ConsentOverview:
        """Every form of the young person with its history, and the engine's view of now; each read audited."""
        at = self.clock()
        found, _ = self.search(actor=actor, nhs_number=nhs_number, limit=50)
        histories = tuple(tuple(self.history(f.form_id, actor=actor)) for f in found)
        versions = [v for history in histories for v in history]
        chosen = decision.version_in_force(nhs_number, versions, at)
        in_force = next((v for v in versions if chosen is not None and (v.form_id, v.version) == (chosen.form_id, chosen.version)), None)
        return ConsentOverview(
            nhs_number=nhs_number,
            histories=histories,
            in_force=in_force,
            summary=tuple(self.summary(nhs_number, at=at, actor=actor).recipients) if versions else (),
            proposals=tuple(decision.pending_proposals(nhs_number, versions, at=at)),
            review_flags=decision.review_flags(in_force.form, at.astimezone(UK).date()) if in_force is not None else (),
        )

    def disclosures(self, nhs_number: str, *, actor: str) -> list[Disclosure]:
        found = self.store.disclosures(nhs_number)
        self.store.audit(actor=actor, action="disclosure.list", resource="Disclosure", outcome="ok", detail={"count": len(found)}, subject=nhs_number)
        return found

    # ------------------------------------------------------------------ decisions

    def decide(self, request: decision.DecisionRequest, *, actor: str) -> decision.Verdict:
        """The engine's verdict, returned only once its audit record is committed (AuditWriteFailed otherwise).

        The audit keeps the question's two times as answered (``at`` and ``known-at``, now when not asked) and the
        deciding version's two times, so a past answer can be explained and replayed.  Raises decision.InvalidQuestion, with
        nothing audited, for a question the engine rejects.

        A patient whose versions are cached is decided from the cache at once, and the audit record is committed
        only if nothing has been stored since the cache was read: that commit is the check, so the common case
        costs no read of the change marker.  If something was stored, no record is written and the question is
        decided again from freshly read versions, so every answer reflects every version committed before its
        audit record.
        """
        now = self.clock()
        # What dataclasses.replace does, without inspecting the fields on every call: every decision passes here.
        asked = decision.DecisionRequest(**{**vars(request), "at": request.at or now, "known_at": request.known_at or now})
        cached = self.store.cached_versions_for_patient(request.nhs_number)
        if cached is not None:
            versions, marker = cached
            verdict = decision.decide(asked, versions, now=now)
            if self._audit_decision(asked, verdict, versions, actor, unless_changed_since=marker):
                return verdict
        versions = self.store.versions_for_patient(request.nhs_number)
        verdict = decision.decide(asked, versions, now=now)
        self._audit_decision(asked, verdict, versions, actor)
        return verdict

    def _audit_decision(
        self,
        asked: decision.DecisionRequest,
        verdict: decision.Verdict,
        versions: tuple[FormVersion, ...],
        actor: str,
        *,
        unless_changed_since: int | None = None,
    ) -> bool:
        return self.store.audit(
            actor=actor,
            action="decision",
            resource=_verdict_ref(verdict),
            outcome=verdict.decision,
            subject=asked.nhs_number,
            detail=_decision_detail(asked, verdict, versions, self.backdated_after),
            unless_changed_since=unless_changed_since,
        )

    def summary(self, nhs_number: str, *, at: datetime | None, known_at: datetime | None = None, actor: str) -> Summary:
        """Who may receive what under the version in force, and the pending proposals with what each would change."""
        now = self.clock()
        versions = self.store.versions_for_patient(nhs_number)
        moment, known = at or now, known_at or now
        result = decision.summary(nhs_number, versions, at=moment, known_at=known)
        proposals = decision.pending_proposals(nhs_number, versions, at=moment, known_at=known)
        in_force = next((v for v in versions if result and (v.form_id, v.version) == (result[0].form_id, result[0].version)), None)
        self.store.audit(
            actor=actor,
            action="decision.summary",
            resource=_ref(in_force) if in_force else "Consent",
            outcome="ok",
            subject=nhs_number,
            detail={"at": moment.isoformat(), "knownAt": known.isoformat(), "recipients": len(result), "proposals": len(proposals)},
        )
        return Summary(result, proposals, in_force)


@dataclass(frozen=True)
class Summary:
    """The summary's parts: the people on the version in force (None when no active consent is) and pending proposals."""

    recipients: list[decision.RecipientSummary]
    proposals: list[decision.Proposal]
    in_force: FormVersion | None


def _subject(found: FormVersion) -> str:
    return found.form.young_person.nhs_number


def _ref(found: FormVersion) -> str:
    return f"Consent/{found.form_id}/_history/{found.version}"


def _verdict_ref(verdict: decision.Verdict) -> str | None:
    if verdict.form_id is None:
        return None
    return f"Consent/{verdict.form_id}/_history/{verdict.version}"


def _decision_detail(
    request: decision.DecisionRequest, verdict: decision.Verdict, versions: Sequence[FormVersion], backdated_after: timedelta
) -> dict[str, Any]:
    """What a decision's audit record says about the question and the answer (codes and ids, never names)."""
    detail: dict[str, Any] = {
        **_recipient_detail(request.recipient),
        "informationTypes": list(request.information_types),
        "purpose": request.purpose,
        "at": request.at.isoformat() if request.at else None,
        "knownAt": request.known_at.isoformat() if request.known_at else None,
        "basis": verdict.basis,
        "provision": verdict.provision,
    }
    deciding = next((v for v in versions if (v.form_id, v.version) == (verdict.form_id, verdict.version)), None)
    if deciding is not None:
        detail["consentGovernsFrom"] = deciding.form.recorded.date.isoformat()
        detail["consentStoredAt"] = deciding.stored_at.isoformat()
        if deciding.stored_at - deciding.form.recorded.date > backdated_after:
            detail["flags"] = [FLAG_BACKDATED]
    return detail


def _recipient_detail(recipient: decision.Recipient) -> dict[str, Any]:
    """The recipient as asked, by role and by identifier; a person id may be made up from a name, so only its presence."""
    detail: dict[str, Any] = {}
    if recipient.role is not None:
        detail["recipientRole"] = recipient.role
    if recipient.identifier_system is not None and recipient.identifier_value is not None:
        detail["recipientIdentifier"] = {"system": recipient.identifier_system, "value": recipient.identifier_value}
    if recipient.person_id is not None:
        detail["recipientPersonGiven"] = True
    return detail


def form_from_fhir(document: Any, version: str) -> ConsentForm:
    return (r5.r5_to_form if version == "r5" else r4.r4_to_form)(document)
