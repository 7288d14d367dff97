"""Use cases of the facade and CLI: record, change, read and decide — each audited.

This is the seam HAPI FHIR calls a consent service: the store keeps versions,
the decision engine judges, and this module ties them together with the audit
trail so that no transport (Flask, CLI, CDS Hooks) can forget to audit.  Audit
records say who asked what and the verdict; they hold identifiers and codes,
never names or free text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from . import decision
from .disclosure import Disclosure
from .form import ConsentForm, Professional, Recorded
from .mappings import r4, r5
from .store import Store
from .store.forms import FormVersion, NotFound

Clock = Callable[[], datetime]
UK = ZoneInfo("Europe/London")  # review flags fall on UK calendar days, as the decision engine's do


def utc_now() -> datetime:
    return datetime.now(UTC)


class FormIdMismatch(ValueError):
    """The body names a different form than the URL."""


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
    def __init__(self, store: Store, clock: Clock = utc_now) -> None:
        self.store = store
        self.clock = clock

    # ------------------------------------------------------------------ writes

    def create(self, form: ConsentForm, *, actor: str) -> FormVersion:
        return self.store.create_form(form, actor=actor)  # the store audits every version it writes

    def update(self, form: ConsentForm, *, form_id: str, expected_version: int, actor: str) -> FormVersion:
        if form.form_id != form_id:
            raise FormIdMismatch(f"the body's formId does not match the form {form_id} being updated")
        return self.store.update_form(form, expected_version=expected_version, actor=actor)

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
        current = self.store.get(form_id)
        withdrawn = replace(current.form, status="withdrawn")
        return self.store.update_form(withdrawn, expected_version=expected_version, actor=actor)

    def activate(self, form_id: str, *, expected_version: int, by: str, actor: str) -> FormVersion:
        """Make a proposal (a draft) the consent in force: the young person agreed now, so it is recorded now, by ``by``."""
        current = self.store.get(form_id)
        agreed = replace(current.form, status="active", recorded=Recorded(self.clock().replace(microsecond=0), Professional(by)))
        return self.store.update_form(agreed, expected_version=expected_version, actor=actor)

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
        self.store.audit(actor=actor, action="form.history", resource=f"Consent/{form_id}", outcome="ok",
                         detail={"versions": len(versions)}, subject=_subject(versions[-1]))
        return versions

    def search(self, *, actor: str, form_id: str | None = None, limit: int = 20, offset: int = 0,
               **criteria: Any) -> tuple[list[FormVersion], int]:
        """Latest versions matching the criteria; ``form_id`` (a business identifier search) narrows to one form."""
        if form_id is not None:
            found, total = self._search_one(form_id, limit=limit, offset=offset, **criteria)
        else:
            found, total = self.store.search(limit=limit, offset=offset, **criteria)
        detail = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in criteria.items() if v is not None and k != "nhs_number"}
        self.store.audit(actor=actor, action="form.search", resource="Consent", outcome="ok",
                         detail={**detail, "total": total, "returned": len(found)}, subject=criteria.get("nhs_number"))
        return found, total

    def _search_one(self, form_id: str, *, limit: int, offset: int, nhs_number: str | None = None, status: str | None = None,
                    updated_since: datetime | None = None, updated_before: datetime | None = None) -> tuple[list[FormVersion], int]:
        try:
            latest = self.store.get(form_id)
        except NotFound:
            return [], 0
        keep = ((nhs_number is None or latest.form.young_person.nhs_number == nhs_number)
                and (status is None or latest.form.status == status)
                and (updated_since is None or latest.recorded_at >= updated_since)
                and (updated_before is None or latest.recorded_at < updated_before))
        matches = [latest] if keep else []
        return matches[offset:offset + limit], len(matches)

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
            summary=tuple(self.summary(nhs_number, at=at, actor=actor)) if versions else (),
            proposals=tuple(decision.pending_proposals(nhs_number, versions, at=at)),
            review_flags=decision.review_flags(in_force.form, at.astimezone(UK).date()) if in_force is not None else (),
        )

    def disclosures(self, nhs_number: str, *, actor: str) -> list[Disclosure]:
        found = self.store.disclosures(nhs_number)
        self.store.audit(actor=actor, action="disclosure.list", resource="Disclosure", outcome="ok",
                         detail={"count": len(found)}, subject=nhs_number)
        return found

    # ------------------------------------------------------------------ decisions

    def decide(self, request: decision.DecisionRequest, *, actor: str) -> decision.Verdict:
        """The engine's verdict, returned only once its audit record is committed (AuditWriteFailed otherwise).

        Raises ValueError, with nothing audited, for a question the engine rejects.
        """
        verdict = decision.decide(request, self.store.versions_for_patient(request.nhs_number), now=self.clock())
        self.store.audit(actor=actor, action="decision", resource=_verdict_ref(verdict), outcome=verdict.decision,
                         subject=request.nhs_number, detail=_decision_detail(request, verdict))
        return verdict

    def summary(self, nhs_number: str, *, at: datetime | None, actor: str) -> list[Any]:
        result = decision.summary(nhs_number, self.store.versions_for_patient(nhs_number), at=at or self.clock())
        self.store.audit(actor=actor, action="decision.summary", resource="Consent", outcome="ok", subject=nhs_number,
                         detail={"at": at.isoformat() if at else None, "recipients": len(result)})
        return result


def _subject(found: FormVersion) -> str:
    return found.form.young_person.nhs_number


def _ref(found: FormVersion) -> str:
    return f"Consent/{found.form_id}/_history/{found.version}"


def _verdict_ref(verdict: decision.Verdict) -> str | None:
    if verdict.form_id is None:
        return None
    return f"Consent/{verdict.form_id}/_history/{verdict.version}"


def _decision_detail(request: decision.DecisionRequest, verdict: decision.Verdict) -> dict[str, Any]:
    """What a decision's audit record says about the question and the answer (codes and ids, never names)."""
    return {
        "recipient": _recipient_detail(request.recipient),
        "informationTypes": list(request.information_types),
        "purpose": request.purpose,
        "at": request.at.isoformat() if request.at else None,
        "basis": verdict.basis,
        "provision": verdict.provision,
    }


def _recipient_detail(recipient: decision.Recipient) -> dict[str, Any]:
    return {k: v for k, v in vars(recipient).items() if v is not None}


def form_from_fhir(document: Any, version: str) -> ConsentForm:
    return (r5.r5_to_form if version == "r5" else r4.r4_to_form)(document)
