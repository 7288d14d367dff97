"""The decision engine: may CASUS information go to this recipient, for this purpose, at this time?

Pure: no I/O, no Flask, no database, no clock (the caller passes ``now``).  The
store hands in the stored versions of a patient's forms; the facade renders the
``Verdict`` with ``to_parameters`` (FHIR Parameters) or ``to_json``.

Precedence, applied in this order and restated in every answer's ``reason``:

1. **The request must make sense.**  Unknown information types, roles or
   identifier systems, a recipient with no criterion, a malformed NHS number or
   a time without a zone raise ``ValueError`` (the facade answers 400).  Nothing
   about the patient has been looked at yet.
2. **Policy exceptions, for their own purpose only.**  Purpose ``THREAT`` (risk
   of significant harm) or ``HLEGAL`` (court order) permits every information
   type to any recipient, whatever the young person chose and even with no,
   draft or withdrawn consent: the law forces it.  It always carries the
   obligations ``record-disclosure`` and ``inform-young-person``.  An exception
   never permits for any other purpose (not even its override reason codes
   such as OVRTPS).
3. **Only care purposes are covered by a choice.**  The young person agreed to
   share with people who help and support them, so a choice permits only
   ``CARE_PURPOSES`` (TREAT, ETREAT, COC, CAREMGT).  Anything else (HOPERAT,
   HMARKT, HRESCH, HPAYMT, PUBHLTH, BTG, ...) is denied whoever the patient is,
   so no consent is consulted or cited.  HOPERAT is excluded on purpose: it
   covers administration, training, fraud and legal work that the young person
   never agreed to, and HLEGAL is one of its children.
4. **The version in force at t.**  For each form of the patient, the highest
   version recorded (``recorded_at``) at or before t; if several forms, the one
   whose version in force was recorded last (ties: the larger form id, so the
   answer never depends on input order).  Versions recorded after t do not
   exist yet.  No version in force and an unknown patient give the *same*
   verdict, word for word: answers never reveal whether a young person is known
   to CASUS.
5. **Only an active consent permits.**  Draft, withdrawn and entered-in-error
   versions permit nothing; the verdict cites the version and its status code.
6. **The young person's choice overrides the default.**  The recipient matches
   the people on the form by every criterion given (person id, identifier, role)
   -- giving more criteria narrows the match and never widens it, so an unknown
   GMC number is not rescued by a matching role.  A person's choice applies only
   on the UK calendar days of its period.  For each information type asked: if
   any applicable matched person is ``do-not-share``, or any does not list the
   type, it is denied (at the same level deny beats permit); otherwise it is
   permitted by the nested type provision.  Several types are permitted only if
   every one is.
7. **Default deny.**  Nothing matched, or every matched choice is outside its
   period: the root provision (``Consent.provision``, type deny) decides.

Ages move (on the UK calendar date of t): a consent given by a person with
parental responsibility is flagged ``review-due-turned-16`` once the young
person is 16, and every consent ``review-due-turned-18`` once they are 18.  The
answer is still given, with a ``review-consent`` obligation.

Reasons carry codes, FHIRPaths, dates of t and of provision periods, and
Consent references -- never names, NHS numbers, dates of birth, person ids
(which a clinician may have made up from a name) or free text.

Provision paths are those of the R4 Consent produced by
``fhir_adapter.mappings.r4.form_to_r4``: person i is
``Consent.provision.provision[i]``, their information type j is
``Consent.provision.provision[i].provision[j]``, and exception k is
``Consent.provision.provision[len(people) + k]``.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
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
#: Purposes of use (v3 ActReason) that a young person's choice covers: care by the people who support them.
CARE_PURPOSES: frozenset[str] = frozenset({"TREAT", "ETREAT", "COC", "CAREMGT"})
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
    """What the engine needs from a stored form version (the store's FormVersion satisfies it)."""

    @property
    def form_id(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def form(self) -> ConsentForm: ...
    @property
    def recorded_at(self) -> datetime: ...


@dataclass(frozen=True)
class StoredVersion:
    """A stored form version; ``recorded_at`` is when the store kept it (UTC), which decides what was in force."""

    form_id: str
    version: int
    form: ConsentForm
    recorded_at: datetime


@dataclass(frozen=True)
class Recipient:
    """Who would receive the information: by form person id, by identifier and/or by role; all given must match."""

    identifier_system: str | None = None
    identifier_value: str | None = None
    role: str | None = None
    person_id: str | None = None


@dataclass(frozen=True)
class DecisionRequest:
    nhs_number: str
    recipient: Recipient
    information_types: tuple[str, ...]
    purpose: str
    at: datetime | None = None


@dataclass(frozen=True)
class Obligation:
    code: str
    text: str


@dataclass(frozen=True)
class Verdict:
    """The answer and why.  ``per_type_provisions`` gives the deciding provision for each type asked."""

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
    """FHIRPath of the nested permit for person i's j-th listed information type."""
    return f"{person_provision_path(person_index)}.provision[{type_index}]"


def exception_provision_path(form: ConsentForm, kind: str) -> str | None:
    """FHIRPath of an exception provision: after all the people, in the form's exception order."""
    if kind not in form.exceptions.provisions:
        return None
    return person_provision_path(len(form.people) + form.exceptions.provisions.index(kind))


# --------------------------------------------------------------------------- request checking


@dataclass(frozen=True)
class _Criteria:
    person_id: str | None
    identifier: tuple[str, str] | None  # (alias or "ods", value)
    role: str | None


def _aware(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must carry a time zone")
    return moment


def _information_types(asked: Iterable[str]) -> tuple[str, ...]:
    types = tuple(dict.fromkeys(asked))
    if not types:
        raise ValueError("at least one information type is required")
    valid = codes.INFORMATION_TYPES.values()
    unknown = [t for t in types if t not in valid]
    if unknown:
        raise ValueError(f"unknown information type(s) {', '.join(map(repr, unknown))}; valid codes: {', '.join(valid)}")
    return types


def _identifier_kind(system: str) -> str:
    if system in ODS_SYSTEMS:
        return _ODS
    if system in codes.IDENTIFIER_SYSTEMS.values():
        return system
    alias = codes.identifier_alias(system)
    if alias is None:
        raise ValueError(f"unknown identifier system {system!r}")
    return alias


def _criteria(recipient: Recipient) -> _Criteria:
    identifier = None
    if (recipient.identifier_system is None) != (recipient.identifier_value is None):
        raise ValueError("a recipient identifier needs both a system and a value")
    if recipient.identifier_system is not None and recipient.identifier_value is not None:
        value = recipient.identifier_value.strip()
        if not value:
            raise ValueError("the recipient identifier value is empty")
        kind = _identifier_kind(recipient.identifier_system)
        identifier = (kind, value.upper() if kind == _ODS else value)
    if recipient.role is not None and recipient.role not in codes.PERSON_ROLES.values():
        raise ValueError(f"unknown recipient role {recipient.role!r}; valid roles: {', '.join(codes.PERSON_ROLES.values())}")
    criteria = _Criteria(recipient.person_id or None, identifier, recipient.role)
    if criteria.person_id is None and criteria.identifier is None and criteria.role is None:
        raise ValueError("the recipient needs a person id, an identifier or a role")
    return criteria


def _nhs_number(value: str) -> str:
    compact = value.replace(" ", "") if isinstance(value, str) else ""
    if not nhs.is_valid(compact):
        raise ValueError("the NHS number is not valid (ten digits with a Modulus 11 check digit)")
    return compact


def _purpose(value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("a purpose of use is required")
    return value.strip()


# --------------------------------------------------------------------------- the version in force


def version_in_force(nhs_number: str, versions: Iterable[VersionLike], at: datetime) -> VersionLike | None:
    """The patient's form version in force at ``at`` (rule 4 of the module docstring), in one pass."""
    latest: dict[str, VersionLike] = {}
    for v in versions:
        if v.recorded_at > at or v.form.young_person.nhs_number != nhs_number:
            continue
        held = latest.get(v.form_id)
        if held is None or v.version > held.version:
            latest[v.form_id] = v
    if not latest:
        return None
    return max(latest.values(), key=lambda v: (v.recorded_at, v.form_id))


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
    """People on the form who satisfy every criterion given, with their index (their provision position)."""
    out = []
    for i, p in enumerate(form.people):
        if criteria.person_id is not None and p.id != criteria.person_id:
            continue
        if criteria.role is not None and p.role != criteria.role:
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
            return _TypeOutcome(information_type, "deny", person_provision_path(i),
                                f"role {p.role}: {chooser} agreed to share only {', '.join(p.information_types)}")
    i, p = applicable[0]
    path = information_type_provision_path(i, p.information_types.index(information_type))
    return _TypeOutcome(information_type, "permit", path, f"role {p.role}: {chooser} agreed to share it")


def _deciding_provision(outcomes: Sequence[_TypeOutcome], decision: Decision) -> str:
    """One path for the whole answer: the first denied type's provision; for a permit, the common person provision."""
    if decision == "deny":
        return next(o.provision for o in outcomes if o.decision == "deny")
    if len(outcomes) == 1:
        return outcomes[0].provision
    parents = {o.provision.rsplit(".provision[", 1)[0] for o in outcomes}
    return parents.pop() if len(parents) == 1 else outcomes[0].provision


# --------------------------------------------------------------------------- the decision


def decide(request: DecisionRequest, versions: Sequence[VersionLike], *, now: datetime) -> Verdict:
    """Answer one request against a patient's stored form versions (see the module docstring for precedence).

    Raises ValueError for a request that does not make sense (the facade's 400).
    """
    at = _aware(request.at if request.at is not None else now, "the decision time")
    types = _information_types(request.information_types)
    criteria = _criteria(request.recipient)
    patient = _nhs_number(request.nhs_number)
    purpose = _purpose(request.purpose)
    day = at.astimezone(_uk()).date()

    if purpose in EXCEPTION_PURPOSES:
        return _exception_verdict(purpose, types, version_in_force(patient, versions, at), day)
    if purpose not in CARE_PURPOSES:
        return _verdict("deny", types, None, None, "default", (
            f"deny (default): purpose {purpose} is not one a young person's choice covers "
            f"(care purposes: {', '.join(sorted(CARE_PURPOSES))}) and is not a policy exception (THREAT, HLEGAL); "
            f"CASUS does not disclose for it ({codes.POLICY_URI})."
        ))
    v = version_in_force(patient, versions, at)
    if v is None:
        return _verdict("deny", types, None, None, "default", NO_CONSENT_REASON)
    if v.form.status != "active":
        return _verdict("deny", types, v, None, "default", (
            f"deny (default): the consent version in force on {day.isoformat()} ({_ref(v)}, the newest recorded by then) "
            f"has status {v.form.status}; only an active consent permits disclosure."
        ))
    return _choice_verdict(v, criteria, types, purpose, day)


def reuse_key(request: DecisionRequest, versions: Sequence[VersionLike], *, now: datetime) -> Hashable | None:
    """What ``decide``'s answer depends on besides ``versions``; None when it may not be reused.

    ``decide`` reads t only to pick the versions recorded at or before it and to date the answer
    (periods, ages and the reason's text all go by UK calendar day).  So for the same versions, the same
    request asked about the same UK day gets the same answer -- with t given, always; with t = now, as
    long as no version was recorded after ``now`` (writers' clocks out of step), since such a version
    would come into force later in the day without the versions changing.

    >>> from datetime import UTC
    >>> asked = DecisionRequest("9434765919", Recipient(role="mother"), ("attendance",), "TREAT")
    >>> morning, evening = datetime(2026, 5, 1, 8, tzinfo=UTC), datetime(2026, 5, 1, 20, tzinfo=UTC)
    >>> reuse_key(asked, [], now=morning) == reuse_key(asked, [], now=evening)
    True
    >>> reuse_key(asked, [], now=morning) == reuse_key(asked, [], now=datetime(2026, 5, 1, 23, 30, tzinfo=UTC))
    False
    """
    at = request.at if request.at is not None else now
    if at.tzinfo is None or at.utcoffset() is None:
        return None  # decide raises for it
    if request.at is None and any(v.recorded_at > now for v in versions):
        return None
    try:
        hash(request)
    except TypeError:  # built with lists by a caller: still answerable, just not reusable
        return None
    return request, at.astimezone(_uk()).date()


def _verdict(decision: Decision, types: tuple[str, ...], v: VersionLike | None, provision: str | None, basis: BasisCode,
             reason: str, obligations: tuple[Obligation, ...] = (), flags: tuple[str, ...] = ()) -> Verdict:
    """A verdict in which every type asked shares the overall answer and provision."""
    return Verdict(
        decision=decision, reason=reason, form_id=v.form_id if v else None, version=v.version if v else None,
        provision=provision, basis=basis, obligations=obligations, flags=flags,
        per_type=tuple((t, decision) for t in types), per_type_provisions=tuple((t, provision) for t in types),
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
        "the law requires disclosure whatever the young person chose, and it overrides a choice only for this purpose. "
        "The disclosure must be recorded and the young person told what, to whom and the likely consequences, "
        "unless that would increase the risk." + _review_note(flags)
    )
    return _verdict("permit", types, v if path else None, path, "policy-exception", reason, obligations, flags)


def _choice_verdict(v: VersionLike, criteria: _Criteria, types: tuple[str, ...], purpose: str, day: date) -> Verdict:
    form = v.form
    flags = review_flags(form, day)
    obligations = (REVIEW_CONSENT,) if flags else ()
    in_force = f"active consent {_ref(v)} is the newest version in force on {day.isoformat()}"
    matched = _matches(form, criteria)
    if not matched:
        return _verdict("deny", types, v, ROOT_PROVISION, "default", (
            f"deny (default): {in_force}, but no person on it matches the recipient, "
            f"so its base provision {ROOT_PROVISION} (deny) applies." + _review_note(flags)
        ), obligations, flags)
    applicable = [(i, p) for i, p in matched if p.period is None or p.period.covers(day)]
    if not applicable:
        lapsed = "; ".join(f"{person_provision_path(i)} (role {p.role}) applies {_period_text(p.period)}" for i, p in matched)
        return _verdict("deny", types, v, ROOT_PROVISION, "default", (
            f"deny (default): {in_force}; the matching choice is not in force on {day.isoformat()} ({lapsed}), "
            f"so the base provision {ROOT_PROVISION} (deny) applies." + _review_note(flags)
        ), obligations, flags)
    outcomes = [_type_outcome(t, applicable, _chooser(form)) for t in types]
    decision: Decision = "permit" if all(o.decision == "permit" for o in outcomes) else "deny"
    several = (f"{len(applicable)} people on it match the recipient (roles {', '.join(sorted({p.role for _, p in applicable}))}) "
               "and at the same level deny beats permit; " if len(applicable) > 1 else "")
    detail = "; ".join(f"{o.information_type}: {o.decision} by {o.provision} ({o.why})" for o in outcomes)
    scope = ("permit only if every type asked is permitted; " if len(outcomes) > 1 else "")
    reason = (f"{decision} (choice): {in_force}; purpose {purpose} is a care purpose the choices cover; "
              f"{several}{scope}{detail}." + _review_note(flags))
    return Verdict(
        decision=decision, reason=reason, form_id=v.form_id, version=v.version,
        provision=_deciding_provision(outcomes, decision), basis="choice", obligations=obligations, flags=flags,
        per_type=tuple((o.information_type, o.decision) for o in outcomes),
        per_type_provisions=tuple((o.information_type, o.provision) for o in outcomes),
    )


# --------------------------------------------------------------------------- summary


def summary(nhs_number: str, versions: Sequence[VersionLike], *, at: datetime) -> list[RecipientSummary]:
    """Who may receive which information types (care purposes) under the form in force at ``at``.

    Empty when no active consent is in force -- the same for an unknown patient,
    no consent, and a draft, withdrawn or entered-in-error version, so the
    summary reveals no more than a decision does.  Names are left out: the
    EHR matches on identifiers and role.
    """
    at = _aware(at, "the summary time")
    v = version_in_force(_nhs_number(nhs_number), versions, at)
    if v is None or v.form.status != "active":
        return []
    day = at.astimezone(_uk()).date()
    out = []
    for i, p in enumerate(v.form.people):
        in_period = p.period is None or p.period.covers(day)
        ids = tuple((codes.identifier_uri(ident.system), ident.value) for ident in p.identifiers)
        if p.organisation and p.organisation.ods_code:
            ids += ((codes.ODS_ORGANIZATION, p.organisation.ods_code),)
        out.append(RecipientSummary(
            form_id=v.form_id, version=v.version, person_id=p.id, role=p.role, sharing=p.sharing, in_period=in_period,
            may_receive=p.information_types if in_period and p.sharing == "share" else (),
            provision=person_provision_path(i), period=p.period, identifiers=ids,
        ))
    return out


def summary_to_json(entries: Sequence[RecipientSummary]) -> list[dict[str, Any]]:
    """The summary as plain JSON for the facade."""
    out = []
    for e in entries:
        doc: dict[str, Any] = {
            "consent": f"Consent/{e.form_id}/_history/{e.version}", "personId": e.person_id, "role": e.role,
            "sharing": e.sharing, "inPeriod": e.in_period, "mayReceive": list(e.may_receive), "provision": e.provision,
            "identifiers": [{"system": s, "value": val} for s, val in e.identifiers],
        }
        if e.period is not None:
            doc["period"] = {k: d.isoformat() for k, d in (("start", e.period.start), ("end", e.period.end)) if d is not None}
        out.append(doc)
    return out


# --------------------------------------------------------------------------- rendering


def to_json(verdict: Verdict) -> dict[str, Any]:
    """The verdict as plain JSON (camelCase, like the CASUS form)."""
    provisions = dict(verdict.per_type_provisions)
    return {
        "decision": verdict.decision,
        "reason": verdict.reason,
        "consent": None if verdict.consent_reference is None else {
            "reference": verdict.consent_reference, "formId": verdict.form_id, "version": verdict.version},
        "provision": verdict.provision,
        "basis": verdict.basis,
        "obligations": [{"code": o.code, "text": o.text} for o in verdict.obligations],
        "perType": [{"informationType": t, "decision": d, "provision": provisions.get(t)} for t, d in verdict.per_type],
        "flags": list(verdict.flags),
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
    params += [{"name": "obligation", "part": [_part("code", "Code", o.code), _part("text", "String", o.text)]}
               for o in verdict.obligations]
    provisions = dict(verdict.per_type_provisions)
    for t, d in verdict.per_type:
        parts = [_part("code", "Coding", codes.INFORMATION_TYPES.to_coding(t)), _part("decision", "Code", d)]
        if provisions.get(t) is not None:
            parts.append(_part("provision", "String", provisions[t]))
        params.append({"name": "informationType", "part": parts})
    params += [_part("flag", "Code", f) for f in verdict.flags]
    return {"resourceType": "Parameters", "parameter": params}
