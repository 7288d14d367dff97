"""The decision engine: may CASUS information go to this recipient, for this purpose, at this time?

Pure: no I/O, no Flask, no database, no clock (the caller passes ``now``).  The
store hands in the stored versions of a patient's forms; the facade renders the
``Verdict`` with ``to_parameters`` (FHIR Parameters) or ``to_json``.

Precedence, applied in this order and restated in every answer's ``reason``:

1. **The request must make sense.**  Unknown information types or identifier
   systems, a role that is neither a form role nor an exception recipient
   (``codes.EXCEPTION_RECIPIENT_ROLES``), a recipient with no criterion, a
   malformed NHS number or a time without a zone raise ``InvalidQuestion`` (the
   facade answers 400).  Nothing about the patient has been looked at yet.
2. **Policy exceptions, for their own purpose only.**  Purpose ``THREAT`` (risk
   of significant harm) or ``HLEGAL`` (court order) permits every information
   type to any recipient -- on the form or not: a court, the police, children's
   social care, anyone named by a role or an identifier -- whatever the young
   person chose and even with no, draft or withdrawn consent: the law forces
   it.  It always carries the obligations ``record-disclosure`` and
   ``inform-young-person``.  An exception never permits for any other purpose
   (not even its override reason codes such as OVRTPS), so a recipient only an
   exception reaches gets nothing for care.
3. **Only care purposes are covered by a choice.**  The young person agreed to
   share with people who help and support them, so a choice permits only
   ``CARE_PURPOSES`` (TREAT, ETREAT, COC, CAREMGT).  Anything else (HOPERAT,
   HMARKT, HRESCH, HPAYMT, PUBHLTH, BTG, ...) is denied whoever the patient is,
   so no consent is consulted or cited.  HOPERAT is excluded on purpose: it
   covers administration, training, fraud and legal work that the young person
   never agreed to, and HLEGAL is one of its children.
4. **The version in force at t, as known at k.**  A choice takes effect from
   when it was made: a version governs from its form's ``recorded.date``, not
   from when the adapter stored it (``stored_at``), so a paper form signed in
   September and typed in in November answers about October.  Among the
   patient's versions stored at or before k (*known at*, default now: what we
   knew then), the one with the latest ``recorded.date`` at or before t is in
   force; storage order breaks ties (later stored wins), so an older paper form
   entered after a newer choice does not override it.  Drafts are proposals
   and are never in force: the active version keeps deciding until a newer
   version is active, withdrawn or entered in error.  No version in force and
   an unknown patient give the *same* verdict, word for word.
5. **Only an active consent permits.**  Draft, withdrawn and entered-in-error
   versions permit nothing; the verdict cites the version and its status code.
6. **The young person's choice overrides the default.**  The recipient matches
   the people on the form by every criterion given (person id, identifier, role)
   -- giving more criteria narrows the match and never widens it, so an unknown
   GMC number is not rescued by a matching role.  A role matches every person
   whose role falls under it (``codes.ROLE_FAMILIES``: ``parent`` covers the
   mother, the father, a step-parent and a foster parent); the verdict lists
   the people matched.  A person's choice applies only
   on the UK calendar days of its period.  For each information type asked: if
   any applicable matched person is ``do-not-share``, or any does not list the
   type, it is denied (at the same level deny beats permit); otherwise it is
   permitted by the person's permit, citing the type's code on it.  Several types are permitted only if
   every one is.
7. **Default deny.**  Nothing matched, or every matched choice is outside its
   period: the base rule decides (``Consent.policyRule``, opt-in: nothing is
   disclosed unless a provision permits it).

Callers who may only ask for decisions get ``for_decision_only_caller(verdict,
request)``: every deny reads the same (unknown patient, no consent, not on the
form, refused), and no answer cites a consent, provision or person.

Ages move (on the UK calendar date of t): a consent given by a person with
parental responsibility is flagged ``review-due-turned-16`` once the young
person is 16, and every consent ``review-due-turned-18`` once they are 18.  The
answer is still given, with a ``review-consent`` obligation.

Reasons carry codes, FHIRPaths, dates of t and of provision periods, and
Consent references -- never names, NHS numbers, dates of birth, person ids
(which a clinician may have made up from a name) or free text.

Provision paths are those of the R4 Consent produced by
``fhir_adapter.mappings.r4.form_to_r4`` (mapping version 2, where every
provision holds everything its answer depends on): person i is
``Consent.provision.provision[i]``, the code of their information type j is
``Consent.provision.provision[i].code[j]``, exception k is
``Consent.provision.provision[len(people) + k]``, and the default is
``Consent.policyRule``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo

from . import nhs_number as nhs
from .form import ConsentForm, Period, Person
from .mappings import codes

Decision = Literal["permit", "deny"]
BasisCode = Literal["choice", "policy-exception", "default"]

ROOT_PROVISION = "Consent.provision"
#: Where the default (deny unless permitted) is stated: R4 policyRule OPTIN.
DEFAULT_RULE = "Consent.policyRule"
#: Purposes of use (v3 ActReason) that a young person's choice covers: care by the people who support them.  The same
#: table supplies every person provision's purpose, so what a FHIR reader sees and what the engine answers agree.
CARE_PURPOSES: frozenset[str] = frozenset(codes.CARE_PURPOSES.values())
#: Purpose of use -> the form's exception kind, from the same table the mappings use (THREAT, HLEGAL).
EXCEPTION_PURPOSES: dict[str, str] = {row.code: row.value for row in codes.EXCEPTIONS}
_EXCEPTION_LABELS = {"risk-of-significant-harm": "risk of significant harm", "court-order": "court order"}
#: ODS organisation code systems accepted from callers: the UK Core URI, the older HL7 UK URI some senders still use, and the alias.
ODS_SYSTEMS: frozenset[str] = frozenset({codes.ODS_ORGANIZATION, "https://fhir.hl7.org.uk/Id/ods-organization-code", "ods"})
_ODS = "ods"

FLAG_TURNED_16 = "review-due-turned-16"
FLAG_TURNED_18 = "review-due-turned-18"


@lru_cache(maxsize=1)
def _uk() -> ZoneInfo:
    """Provision periods and birthdays are UK calendar dates, so t is read on the UK clock."""
    return ZoneInfo("Europe/London")


# --------------------------------------------------------------------------- public types


class VersionLike(Protocol):
    """What the engine needs from a stored form version (the store's FormVersion satisfies it).

    Two times: ``form.recorded.date`` is when the young person (or the decider) made the choice and decides from
    when the version governs; ``stored_at`` is when the adapter stored the version and decides only what was
    known at a moment (*known at*) and, for equal choice times, which came later.
    """

    @property
    def form_id(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def form(self) -> ConsentForm: ...
    @property
    def stored_at(self) -> datetime: ...


@dataclass(frozen=True)
class StoredVersion:
    """A stored form version; ``stored_at`` is when the store kept it (UTC), not when the choice was made."""

    form_id: str
    version: int
    form: ConsentForm
    stored_at: datetime


@dataclass(frozen=True)
class Recipient:
    """Who would receive the information: by form person id, by identifier and/or by role; all given must match."""

    identifier_system: str | None = None
    identifier_value: str | None = None
    role: str | None = None
    person_id: str | None = None


@dataclass(frozen=True)
class DecisionRequest:
    """The question.  ``at``: the moment it is about; ``known_at``: answer with what was stored then (both default now)."""

    nhs_number: str
    recipient: Recipient
    information_types: tuple[str, ...]
    purpose: str
    at: datetime | None = None
    known_at: datetime | None = None


@dataclass(frozen=True)
class Obligation:
    code: str
    text: str


@dataclass(frozen=True)
class Verdict:
    """The answer and why.  ``per_type_provisions`` gives the deciding provision for each type asked.

    ``matched_people`` are the ids of the people on the form the recipient matched; ids may be made up from
    names, so they are for callers who may read consents (``for_decision_only_caller`` drops them).
    """

    decision: Decision
    reason: str
    form_id: str | None
    version: int | None
    provision: str | None
    basis: BasisCode
    obligations: tuple[Obligation, ...] = ()
    per_type: tuple[tuple[str, Decision], ...] = ()
    flags: tuple[str, ...] = ()
    per_type_provisions: tuple[tuple[str, str | None], ...] = ()
    matched_people: tuple[str, ...] = ()

    @property
    def consent_reference(self) -> str | None:
        """The versioned Consent that decided, as a FHIR relative reference."""
        if self.form_id is None or self.version is None:
            return None
        return f"Consent/{self.form_id}/_history/{self.version}"


@dataclass(frozen=True)
class RecipientSummary:
    """One person on the form in force: what they may receive at the summary time (care purposes only)."""

    form_id: str
    version: int
    person_id: str
    role: str
    sharing: str
    in_period: bool
    may_receive: tuple[str, ...]
    provision: str
    period: Period | None = None
    identifiers: tuple[tuple[str, str], ...] = ()  # (system URI, value), ODS code included, for matching in the EHR


RECORD_DISCLOSURE = Obligation(
    "record-disclosure",
    "Record this disclosure in the young person's CASUS record: what was shared, with whom, when, and under which exception.",
)
INFORM_YOUNG_PERSON = Obligation(
    "inform-young-person",
    "Wherever possible tell the young person what will be shared, with whom, and what might happen as a result, "
    "unless telling them would increase the risk of harm.",
)
REVIEW_CONSENT = Obligation(
    "review-consent",
    "Review this consent with the young person: they have reached an age at which their confidentiality choices must be confirmed.",
)

NO_CONSENT_REASON = (
    "deny (default): no active consent to share CASUS information is on file for this patient at the time asked; "
    f"nothing leaves CASUS without the young person's permission ({codes.POLICY_URI})."
)


# --------------------------------------------------------------------------- provision paths


def person_provision_path(person_index: int) -> str:
    """FHIRPath of person i's choice in the R4 Consent (``form_to_r4`` lists people first, in form order)."""
    return f"{ROOT_PROVISION}.provision[{person_index}]"


def information_type_provision_path(person_index: int, type_index: int) -> str:
    """FHIRPath of person i's j-th listed information type: a code on their own permit."""
    return f"{person_provision_path(person_index)}.code[{type_index}]"


def exception_provision_path(form: ConsentForm, kind: str) -> str | None:
    """FHIRPath of an exception provision: after all the people, in the form's exception order."""
    if kind not in form.exceptions.provisions:
        return None
    return person_provision_path(len(form.people) + form.exceptions.provisions.index(kind))


# --------------------------------------------------------------------------- request checking


class InvalidQuestion(ValueError):
    """A question that makes no sense (precedence 1), naming the part of the ``DecisionRequest`` at fault.

    ``part`` is one of ``nhs_number``, ``recipient.identifier``, ``recipient.role``, ``recipient``,
    ``information_types``, ``purpose``, ``at``, ``known_at``, so a transport can name its own field.
    """

    def __init__(self, part: str, message: str) -> None:
        super().__init__(message)
        self.part = part


@dataclass(frozen=True)
class _Criteria:
    person_id: str | None
    identifier: tuple[str, str] | None  # (alias or "ods", value)
    role: str | None


def _aware(moment: datetime, name: str, part: str = "at") -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidQuestion(part, f"{name} must carry a time zone")
    return moment


def _information_types(asked: Iterable[str]) -> tuple[str, ...]:
    types = tuple(dict.fromkeys(asked))
    if not types:
        raise InvalidQuestion("information_types", "at least one information type is required")
    valid = codes.INFORMATION_TYPES.values()
    unknown = [t for t in types if t not in valid]
    if unknown:
        raise InvalidQuestion("information_types", f"unknown information type(s) {', '.join(map(repr, unknown))}; valid codes: {', '.join(valid)}")
    return types


def _identifier_kind(system: str) -> str:
    if system in ODS_SYSTEMS:
        return _ODS
    if system in codes.IDENTIFIER_SYSTEMS.values():
        return system
    alias = codes.identifier_alias(system)
    if alias is None:
        raise InvalidQuestion("recipient.identifier", f"unknown identifier system {system!r}")
    return alias


def _criteria(recipient: Recipient) -> _Criteria:
    identifier = None
    if (recipient.identifier_system is None) != (recipient.identifier_value is None):
        raise InvalidQuestion("recipient.identifier", "a recipient identifier needs both a system and a value")
    if recipient.identifier_system is not None and recipient.identifier_value is not None:
        value = recipient.identifier_value.strip()
        if not value:
            raise InvalidQuestion("recipient.identifier", "the recipient identifier value is empty")
        kind = _identifier_kind(recipient.identifier_system)
        identifier = (kind, value.upper() if kind == _ODS else value)
    if recipient.role is not None and recipient.role not in codes.EXCEPTION_RECIPIENT_ROLES.values():
        valid = ", ".join(codes.EXCEPTION_RECIPIENT_ROLES.values())
        raise InvalidQuestion("recipient.role", f"unknown recipient role {recipient.role!r}; valid roles: {valid}")
    criteria = _Criteria(recipient.person_id or None, identifier, recipient.role)
    if criteria.person_id is None and criteria.identifier is None and criteria.role is None:
        raise InvalidQuestion("recipient", "the recipient needs a person id, an identifier or a role")
    return criteria


def _nhs_number(value: str) -> str:
    compact = value.replace(" ", "") if isinstance(value, str) else ""
    if not nhs.is_valid(compact):
        raise InvalidQuestion("nhs_number", "the NHS number is not valid (ten digits with a Modulus 11 check digit)")
    return compact


def _purpose(value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidQuestion("purpose", "a purpose of use is required")
    return value.strip()


# --------------------------------------------------------------------------- the version in force


def _in_force_order(v: VersionLike) -> tuple[datetime, datetime, int, str]:
    """Latest choice first; for equal choice times the later stored (then, for equal store times, a total order)."""
    return v.form.recorded.date, v.stored_at, v.version, v.form_id


def _known(v: VersionLike, nhs_number: str, known_at: datetime | None) -> bool:
    return v.form.young_person.nhs_number == nhs_number and (known_at is None or v.stored_at <= known_at)


def version_in_force(nhs_number: str, versions: Iterable[VersionLike], at: datetime, known_at: datetime | None = None) -> VersionLike | None:
    """The patient's version in force at ``at`` with what was stored by ``known_at`` (rule 4; None: all given).

    Across all the patient's forms and versions alike: a choice recorded later replaces an earlier one whichever
    form holds it.  Drafts are skipped: a proposal never changes what is in force.
    """
    candidates = [v for v in versions if _known(v, nhs_number, known_at) and v.form.status != "draft" and v.form.recorded.date <= at]
    return max(candidates, key=_in_force_order, default=None)


def _ref(v: VersionLike) -> str:
    return f"Consent/{v.form_id}/_history/{v.version}"


# --------------------------------------------------------------------------- ages


def review_flags(form: ConsentForm, day: date) -> tuple[str, ...]:
    """Review flags due on ``day``: parental consent once 16, every consent once 18."""
    age = form.young_person.age_on(day)
    flags = []
    if form.decision_maker.basis == "parental-responsibility" and age >= 16:
        flags.append(FLAG_TURNED_16)
    if age >= 18:
        flags.append(FLAG_TURNED_18)
    return tuple(flags)


def _review_note(flags: tuple[str, ...]) -> str:
    return f" Review due ({', '.join(flags)}): the answer stands until the consent is reviewed." if flags else ""


# --------------------------------------------------------------------------- matching


def _matches(form: ConsentForm, criteria: _Criteria) -> list[tuple[int, Person]]:
    """People on the form who satisfy every criterion given, with their index (their provision position).

    A role stands for its family: asking about a parent matches the mother and the father too.
    """
    roles = codes.roles_covered_by(criteria.role) if criteria.role is not None else None
    out = []
    for i, p in enumerate(form.people):
        if criteria.person_id is not None and p.id != criteria.person_id:
            continue
        if roles is not None and p.role not in roles:
            continue
        if criteria.identifier is not None and not _has_identifier(p, *criteria.identifier):
            continue
        out.append((i, p))
    return out


def _has_identifier(person: Person, kind: str, value: str) -> bool:
    if kind == _ODS:
        ods = person.organisation.ods_code if person.organisation else None
        return ods is not None and ods.strip().upper() == value
    return any(i.system == kind and i.value.strip() == value for i in person.identifiers)


def _period_text(period: Period | None) -> str:
    if period is None:
        return "no period"
    start = period.start.isoformat() if period.start else "the start"
    end = period.end.isoformat() if period.end else "no end"
    return f"from {start} to {end}"


# --------------------------------------------------------------------------- per-type outcome


@dataclass(frozen=True)
class _TypeOutcome:
    information_type: str
    decision: Decision
    provision: str
    why: str


def _chooser(form: ConsentForm) -> str:
    """Who made the choices: the young person, or for a non-competent under-16 the person with parental responsibility."""
    return "the person with parental responsibility" if form.decision_maker.basis == "parental-responsibility" else "the young person"


def _type_outcome(information_type: str, applicable: list[tuple[int, Person]], chooser: str) -> _TypeOutcome:
    """Deny beats permit among the matched people: any do-not-share, then any not listing the type, denies."""
    for i, p in applicable:
        if p.sharing == "do-not-share":
            return _TypeOutcome(information_type, "deny", person_provision_path(i), f"role {p.role}: {chooser} chose not to share")
    for i, p in applicable:
        if information_type not in p.information_types:
            return _TypeOutcome(
                information_type, "deny", person_provision_path(i), f"role {p.role}: {chooser} agreed to share only {', '.join(p.information_types)}"
            )
    i, p = applicable[0]
    path = information_type_provision_path(i, p.information_types.index(information_type))
    return _TypeOutcome(information_type, "permit", path, f"role {p.role}: {chooser} agreed to share it")


def _deciding_provision(outcomes: Sequence[_TypeOutcome], decision: Decision) -> str:
    """One path for the whole answer: the first denied type's provision; for a permit, the common person provision."""
    if decision == "deny":
        return next(o.provision for o in outcomes if o.decision == "deny")
    if len(outcomes) == 1:
        return outcomes[0].provision
    parents = {o.provision.rsplit(".code[", 1)[0] for o in outcomes}
    return parents.pop() if len(parents) == 1 else outcomes[0].provision


# --------------------------------------------------------------------------- the decision


def decide(request: DecisionRequest, versions: Sequence[VersionLike], *, now: datetime) -> Verdict:
    """Answer one request against a patient's stored form versions (see the module docstring for precedence).

    Raises InvalidQuestion (a ValueError) for a request that does not make sense (the facade's 400).
    """
    at = _aware(request.at if request.at is not None else now, "the decision time")
    known_at = _aware(request.known_at if request.known_at is not None else now, "the known-at time", "known_at")
    types = _information_types(request.information_types)
    criteria = _criteria(request.recipient)
    patient = _nhs_number(request.nhs_number)
    purpose = _purpose(request.purpose)
    day = at.astimezone(_uk()).date()

    if purpose in EXCEPTION_PURPOSES:
        return _exception_verdict(purpose, types, version_in_force(patient, versions, at, known_at), day)
    if purpose not in CARE_PURPOSES:
        return _verdict(
            "deny",
            types,
            None,
            None,
            "default",
            (
                f"deny (default): purpose {purpose} is not one a young person's choice covers "
                f"(care purposes: {', '.join(sorted(CARE_PURPOSES))}) and is not a policy exception (THREAT, HLEGAL); "
                f"CASUS does not disclose for it ({codes.POLICY_URI})."
            ),
        )
    v = version_in_force(patient, versions, at, known_at)
    if v is None:
        return _verdict("deny", types, None, None, "default", NO_CONSENT_REASON)
    if v.form.status != "active":
        return _verdict(
            "deny",
            types,
            v,
            None,
            "default",
            (
                f"deny (default): the consent version in force on {day.isoformat()} ({_ref(v)}, the latest choice made by then) "
                f"has status {v.form.status}; only an active consent permits disclosure."
            ),
        )
    return _choice_verdict(v, criteria, types, purpose, day)


def _verdict(
    decision: Decision,
    types: tuple[str, ...],
    v: VersionLike | None,
    provision: str | None,
    basis: BasisCode,
    reason: str,
    obligations: tuple[Obligation, ...] = (),
    flags: tuple[str, ...] = (),
) -> Verdict:
    """A verdict in which every type asked shares the overall answer and provision."""
    return Verdict(
        decision=decision,
        reason=reason,
        form_id=v.form_id if v else None,
        version=v.version if v else None,
        provision=provision,
        basis=basis,
        obligations=obligations,
        flags=flags,
        per_type=tuple((t, decision) for t in types),
        per_type_provisions=tuple((t, provision) for t in types),
    )


def _exception_verdict(purpose: str, types: tuple[str, ...], v: VersionLike | None, day: date) -> Verdict:
    kind = EXCEPTION_PURPOSES[purpose]
    active = v is not None and v.form.status == "active"
    path = exception_provision_path(v.form, kind) if v is not None and active else None
    flags = review_flags(v.form, day) if v is not None and active else ()
    obligations = (RECORD_DISCLOSURE, INFORM_YOUNG_PERSON) + ((REVIEW_CONSENT,) if flags else ())
    where = f"the exception provision {path} of {_ref(v)}" if v is not None and path else f"the CASUS confidentiality policy ({codes.POLICY_URI})"
    reason = (
        f"permit (policy exception): purpose {purpose} ({_EXCEPTION_LABELS[kind]}) is an exception under {where}; "
        "the law requires disclosure to this recipient, on the form or not, whatever the young person chose, "
        "and it overrides a choice only for this purpose. "
        "The disclosure must be recorded and the young person told what, to whom and the likely consequences, "
        "unless that would increase the risk." + _review_note(flags)
    )
    return _verdict("permit", types, v if path else None, path, "policy-exception", reason, obligations, flags)


def _choice_verdict(v: VersionLike, criteria: _Criteria, types: tuple[str, ...], purpose: str, day: date) -> Verdict:
    form = v.form
    flags = review_flags(form, day)
    obligations = (REVIEW_CONSENT,) if flags else ()
    in_force = f"active consent {_ref(v)} is the version in force on {day.isoformat()}"
    matched = _matches(form, criteria)
    return _with_matched(_choice_answer(v, matched, types, purpose, day, flags, obligations, in_force), matched)


def _with_matched(verdict: Verdict, matched: list[tuple[int, Person]]) -> Verdict:
    # What dataclasses.replace does, without inspecting the fields on every call: every decision passes here.
    return Verdict(**{**vars(verdict), "matched_people": tuple(p.id for _, p in matched)})


def _choice_answer(
    v: VersionLike,
    matched: list[tuple[int, Person]],
    types: tuple[str, ...],
    purpose: str,
    day: date,
    flags: tuple[str, ...],
    obligations: tuple[Obligation, ...],
    in_force: str,
) -> Verdict:
    form = v.form
    if not matched:
        return _verdict(
            "deny",
            types,
            v,
            DEFAULT_RULE,
            "default",
            (
                f"deny (default): {in_force}, but no person on it matches the recipient, "
                f"so its base rule {DEFAULT_RULE} (opt-in: nothing is disclosed unless a provision permits) applies." + _review_note(flags)
            ),
            obligations,
            flags,
        )
    applicable = [(i, p) for i, p in matched if p.period is None or p.period.covers(day)]
    if not applicable:
        lapsed = "; ".join(f"{person_provision_path(i)} (role {p.role}) applies {_period_text(p.period)}" for i, p in matched)
        return _verdict(
            "deny",
            types,
            v,
            DEFAULT_RULE,
            "default",
            (
                f"deny (default): {in_force}; the matching choice is not in force on {day.isoformat()} ({lapsed}), "
                f"so the base rule {DEFAULT_RULE} (opt-in: nothing is disclosed unless a provision permits) applies." + _review_note(flags)
            ),
            obligations,
            flags,
        )
    outcomes = [_type_outcome(t, applicable, _chooser(form)) for t in types]
    decision: Decision = "permit" if all(o.decision == "permit" for o in outcomes) else "deny"
    several = (
        f"{len(applicable)} people on it match the recipient (roles {', '.join(sorted({p.role for _, p in applicable}))}) "
        "and at the same level deny beats permit; "
        if len(applicable) > 1
        else ""
    )
    detail = "; ".join(f"{o.information_type}: {o.decision} by {o.provision} ({o.why})" for o in outcomes)
    scope = "permit only if every type asked is permitted; " if len(outcomes) > 1 else ""
    reason = f"{decision} (choice): {in_force}; purpose {purpose} is a care purpose the choices cover; {several}{scope}{detail}." + _review_note(
        flags
    )
    return Verdict(
        decision=decision,
        reason=reason,
        form_id=v.form_id,
        version=v.version,
        provision=_deciding_provision(outcomes, decision),
        basis="choice",
        obligations=obligations,
        flags=flags,
        per_type=tuple((o.information_type, o.decision) for o in outcomes),
        per_type_provisions=tuple((o.information_type, o.provision) for o in outcomes),
    )


# --------------------------------------------------------------------------- summary


def summary(nhs_number: str, versions: Sequence[VersionLike], *, at: datetime, known_at: datetime | None = None) -> list[RecipientSummary]:
    """Who may receive which information types (care purposes) under the form in force at ``at``.

    Empty when no active consent is in force -- the same for an unknown patient,
    no consent, only drafts, and a withdrawn or entered-in-error version, so the
    summary reveals no more than a decision does.  Names are left out: the
    EHR matches on identifiers and role.  ``known_at`` as for a decision (None:
    every version given).
    """
    at = _aware(at, "the summary time")
    known = _aware(known_at, "the known-at time", "known_at") if known_at is not None else None
    v = version_in_force(_nhs_number(nhs_number), versions, at, known)
    if v is None or v.form.status != "active":
        return []
    day = at.astimezone(_uk()).date()
    out = []
    for i, p in enumerate(v.form.people):
        in_period = p.period is None or p.period.covers(day)
        ids = tuple((codes.identifier_uri(ident.system), ident.value) for ident in p.identifiers)
        if p.organisation and p.organisation.ods_code:
            ids += ((codes.ODS_ORGANIZATION, p.organisation.ods_code),)
        out.append(
            RecipientSummary(
                form_id=v.form_id,
                version=v.version,
                person_id=p.id,
                role=p.role,
                sharing=p.sharing,
                in_period=in_period,
                may_receive=p.information_types if in_period and p.sharing == "share" else (),
                provision=person_provision_path(i),
                period=p.period,
                identifiers=ids,
            )
        )
    return out


def summary_to_json(entries: Sequence[RecipientSummary]) -> list[dict[str, Any]]:
    """The summary as plain JSON for the facade."""
    out = []
    for e in entries:
        doc: dict[str, Any] = {
            "consent": f"Consent/{e.form_id}/_history/{e.version}",
            "personId": e.person_id,
            "role": e.role,
            "sharing": e.sharing,
            "inPeriod": e.in_period,
            "mayReceive": list(e.may_receive),
            "provision": e.provision,
            "identifiers": [{"system": s, "value": val} for s, val in e.identifiers],
        }
        if e.period is not None:
            doc["period"] = _period_json(e.period)
        out.append(doc)
    return out


# --------------------------------------------------------------------------- proposals


@dataclass(frozen=True)
class PersonChange:
    """How one person's choice would change if a proposal were agreed (``gains``/``losses``: care-purpose types)."""

    person_id: str
    role: str
    change: Literal["added", "removed", "changed"]
    sharing_before: str | None
    sharing_after: str | None
    gains: tuple[str, ...]
    losses: tuple[str, ...]
    period_before: Period | None = None
    period_after: Period | None = None


@dataclass(frozen=True)
class Proposal:
    """A draft waiting for the young person (or the decider) to agree, against the version in force it would replace."""

    form_id: str
    version: int
    proposed_at: datetime  # the draft's recorded.date
    in_force: tuple[str, int] | None  # (form id, version) in force now, or None
    changes: tuple[PersonChange, ...]

    @property
    def reference(self) -> str:
        return f"Consent/{self.form_id}/_history/{self.version}"


def pending_proposals(nhs_number: str, versions: Sequence[VersionLike], *, at: datetime, known_at: datetime | None = None) -> list[Proposal]:
    """Drafts still pending at ``at`` (as known at ``known_at``), each with what it would change.

    A draft is pending while it is the newest version of its form that was stored by ``known_at``
    and proposed (``recorded.date``) by ``at``; a later active, withdrawn or entered-in-error version of
    the form settles it.  Changes are against the version in force at ``at``; a version in force that is
    not active permits nothing, so against it every proposed person is ``added``.
    """
    at = _aware(at, "the summary time")
    known = _aware(known_at, "the known-at time", "known_at") if known_at is not None else None
    patient = _nhs_number(nhs_number)
    newest: dict[str, VersionLike] = {}
    for v in versions:
        if _known(v, patient, known) and (v.form_id not in newest or v.version > newest[v.form_id].version):
            newest[v.form_id] = v
    drafts = sorted((v for v in newest.values() if v.form.status == "draft" and v.form.recorded.date <= at), key=_in_force_order)
    if not drafts:
        return []
    current = version_in_force(patient, versions, at, known)
    before = current.form.people if current is not None and current.form.status == "active" else ()
    return [
        Proposal(
            d.form_id,
            d.version,
            d.form.recorded.date,
            None if current is None else (current.form_id, current.version),
            person_changes(before, d.form.people),
        )
        for d in drafts
    ]


def _may_receive(person: Person | None) -> tuple[str, ...]:
    return person.information_types if person is not None and person.sharing == "share" else ()


def person_changes(before: Sequence[Person], after: Sequence[Person]) -> tuple[PersonChange, ...]:
    """Per person (by id, in the proposal's order, then removed people): what would change; unchanged people omitted."""
    old = {p.id: p for p in before}
    new_ids = {p.id for p in after}
    out = []
    for p in (*after, *(q for q in before if q.id not in new_ids)):
        was, will = old.get(p.id), (p if p.id in new_ids else None)
        if (
            was is not None
            and will is not None
            and (was.role, was.sharing, was.information_types, was.period) == (will.role, will.sharing, will.information_types, will.period)
        ):
            continue
        gains = tuple(t for t in _may_receive(will) if t not in _may_receive(was))
        losses = tuple(t for t in _may_receive(was) if t not in _may_receive(will))
        out.append(
            PersonChange(
                person_id=p.id,
                role=p.role,
                change="added" if was is None else "removed" if will is None else "changed",
                sharing_before=was.sharing if was else None,
                sharing_after=will.sharing if will else None,
                gains=gains,
                losses=losses,
                period_before=was.period if was else None,
                period_after=will.period if will else None,
            )
        )
    return tuple(out)


def _period_json(period: Period | None) -> dict[str, str] | None:
    if period is None:
        return None
    return {k: d.isoformat() for k, d in (("start", period.start), ("end", period.end)) if d is not None}


def proposals_to_json(proposals: Sequence[Proposal]) -> list[dict[str, Any]]:
    """Pending proposals as plain JSON for the summary: marked as proposals, never as what is in force."""
    return [
        {
            "status": "proposed",
            "consent": p.reference,
            "proposedAt": p.proposed_at.isoformat(),
            "inForce": None if p.in_force is None else f"Consent/{p.in_force[0]}/_history/{p.in_force[1]}",
            "changes": [
                {
                    "personId": c.person_id,
                    "role": c.role,
                    "change": c.change,
                    "sharing": {"before": c.sharing_before, "after": c.sharing_after},
                    "wouldReceive": list(c.gains),
                    "wouldNoLongerReceive": list(c.losses),
                    "period": {"before": _period_json(c.period_before), "after": _period_json(c.period_after)},
                }
                for c in p.changes
            ],
        }
        for p in proposals
    ]


# --------------------------------------------------------------------------- callers who may only ask for decisions

#: The one reason every deny gives a caller who may not read consents: it must not hint whether CASUS knows the patient.
UNDISCLOSED_DENY_REASON = (
    f"deny (default): CASUS information of the types asked may not go to this recipient for this purpose at the time asked ({codes.POLICY_URI})."
)


def for_decision_only_caller(verdict: Verdict, request: DecisionRequest) -> Verdict:
    """The answer as a caller allowed only to ask for decisions may see it.

    Every deny becomes the same body whatever its cause -- unknown patient, no consent, recipient not on the
    form, refused, outside a period, a purpose no choice covers -- so that only the echo of the question
    (the information types asked) differs.  A permit keeps what the EHR must act on: the decision, the basis and
    the obligations.  No answer cites a consent, version, provision or person; an exception permit reads the
    same with and without a consent on file (so it drops a review obligation, which only a consent could raise).
    """
    types = tuple(dict.fromkeys(request.information_types))
    if verdict.decision == "deny":
        return Verdict(
            decision="deny",
            reason=UNDISCLOSED_DENY_REASON,
            form_id=None,
            version=None,
            provision=None,
            basis="default",
            per_type=tuple((t, "deny") for t in types),
            per_type_provisions=tuple((t, None) for t in types),
        )
    if verdict.basis == "policy-exception":
        purpose = request.purpose.strip()
        reason = (
            f"permit (policy exception): purpose {purpose} ({_EXCEPTION_LABELS[EXCEPTION_PURPOSES[purpose]]}) is an exception under "
            f"the CASUS confidentiality policy ({codes.POLICY_URI}); the disclosure must be recorded and the young person "
            "told what, to whom and the likely consequences, unless that would increase the risk."
        )
        obligations: tuple[Obligation, ...] = (RECORD_DISCLOSURE, INFORM_YOUNG_PERSON)
        flags: tuple[str, ...] = ()
    else:
        reason = "permit (choice): the choice on the consent in force permits every type asked for this recipient and purpose."
        obligations, flags = verdict.obligations, verdict.flags
    return Verdict(
        decision="permit",
        reason=reason + _review_note(flags),
        form_id=None,
        version=None,
        provision=None,
        basis=verdict.basis,
        obligations=obligations,
        flags=flags,
        per_type=tuple((t, "permit") for t in types),
        per_type_provisions=tuple((t, None) for t in types),
    )


# --------------------------------------------------------------------------- rendering


def to_json(verdict: Verdict) -> dict[str, Any]:
    """The verdict as plain JSON (camelCase, like the CASUS form)."""
    provisions = dict(verdict.per_type_provisions)
    return {
        "decision": verdict.decision,
        "reason": verdict.reason,
        "consent": None
        if verdict.consent_reference is None
        else {"reference": verdict.consent_reference, "formId": verdict.form_id, "version": verdict.version},
        "provision": verdict.provision,
        "basis": verdict.basis,
        "obligations": [{"code": o.code, "text": o.text} for o in verdict.obligations],
        "perType": [{"informationType": t, "decision": d, "provision": provisions.get(t)} for t, d in verdict.per_type],
        "flags": list(verdict.flags),
        "matchedPeople": list(verdict.matched_people),
    }


def _part(name: str, kind: str, value: Any) -> dict[str, Any]:
    return {"name": name, f"value{kind}": value}


def to_parameters(verdict: Verdict) -> dict[str, Any]:
    """The verdict as a FHIR Parameters resource (R4 and R5 alike)."""
    params = [_part("decision", "Code", verdict.decision), _part("reason", "String", verdict.reason)]
    if verdict.consent_reference is not None:
        params.append(_part("consent", "Reference", {"reference": verdict.consent_reference}))
    if verdict.provision is not None:
        params.append(_part("provision", "String", verdict.provision))
    params.append(_part("basis", "Code", verdict.basis))
    params += [{"name": "obligation", "part": [_part("code", "Code", o.code), _part("text", "String", o.text)]} for o in verdict.obligations]
    provisions = dict(verdict.per_type_provisions)
    for t, d in verdict.per_type:
        parts = [_part("code", "Coding", codes.INFORMATION_TYPES.to_coding(t)), _part("decision", "Code", d)]
        if provisions.get(t) is not None:
            parts.append(_part("provision", "String", provisions[t]))
        params.append({"name": "informationType", "part": parts})
    params += [_part("flag", "Code", f) for f in verdict.flags]
    params += [_part("matchedPerson", "String", person_id) for person_id in verdict.matched_people]
    return {"resourceType": "Parameters", "parameter": params}
