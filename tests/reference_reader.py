"""A reference reader of FHIR Consent (R4 and R5), written from the specification alone.

It is test-suite code: an independent second opinion on what a Consent means to a reader that follows
the FHIR specification and nothing else, used to check that what the adapter writes means what the
young person chose. It reads plain JSON dicts and never imports the adapter.

What the specification says, element by element, and how this reader implements it:

R4 (v4.0.1)
- ``Consent.status`` — "Indicates the current state of this consent." Only ``active`` puts a consent
  in force; any other status answers ``not-in-force``.
- ``Consent.policyRule`` — "A reference to the specific base computable regulation or policy." Comment:
  "If the policyRule is absent, computable consent would need to be constructed from the elements of
  the Consent resource." The v3-ActCode codes OPTIN and OPTOUT (ActConsentDirective) name the base:
  opt-in is deny unless the consenter permits; opt-out is permit unless the consenter denies. Any other
  policy code does not state a computable base; the reader then evaluates both an assumed deny base and
  an assumed permit base (reported as separate readings).
- ``Consent.provision`` — "An exception to the base policy of this consent. An exception can be an
  addition or removal of access permissions." (short: "Constraints to the base Consent.policyRule").
- ``Consent.provision.type`` — "Action to take - permit or deny - when the rule conditions are met.
  Not permitted in root rule, required in all nested rules." A root provision that carries a type is
  non-conformant: the reader evaluates one reading that honours it (the root is a rule whose type
  applies when its conditions match) and one that ignores it. A nested provision without a type
  decides nothing itself; its own nested provisions are read against its parent's decision.
- ``Consent.provision.provision`` — "Rules which provide exceptions to the base rule or subrules."
  A nested provision is read only when its parent applies, and overrides the parent's decision.
- ``Consent.provision.actor`` — "Who or what is controlled by this rule." Any listed actor whose
  ``reference.reference`` equals the question's actor matches.
- ``Consent.provision.action`` — "Actions controlled by this Rule." Any coding equal (system and code)
  to the question's action matches.
- ``Consent.provision.purpose`` — "The context of the activities a user is taking - why the user is
  accessing the data - that are controlled by this rule." Any coding equal to the question's purpose.
- ``Consent.provision.code`` — "If this code is found in an instance, then the rule applies." Any
  coding of any listed CodeableConcept equal to one of the question's information-type codings.
- ``Consent.provision.period`` — "The timeframe in this rule is valid." The moment must fall inside it.
  A date bound (``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD``) covers the whole of that year, month or day,
  compared with the calendar date of the moment in its own offset; a dateTime bound is an instant.
- ``securityLabel``, ``class``, ``dataPeriod``, ``data`` — these describe the data itself, which the
  question does not carry. A provision that states one of them is treated as not matching, and the
  reader records the element it could not answer.

R5 (v5.0.0)
- ``Consent.status`` — as R4: only ``active`` is in force.
- ``Consent.period`` — "Effective period for this Consent Resource and all provisions unless specified
  in that provision." A moment outside it answers ``not-in-force``.
- ``Consent.decision`` — "Action to take - permit or deny - as default." Its binding reads: "Sets the
  base decision for Consent to be either permit or deny, with provisions assumed to be a negation of
  the previous level." The element is optional and the specification states no default when it is
  absent, so the reader then evaluates both an assumed deny base and an assumed permit base.
- ``Consent.provision`` — "An exception to the base policy of this consent. An exception can be an
  addition or removal of access permissions." ``Consent.provision.provision`` — "Provisions which
  provide exceptions to the base provision or subprovisions." Provisions have no ``type``.
- ``provision.actor/action/purpose/code/period`` read as in R4 ("... controlled by this provision",
  "If this code is found in an instance, then the provision applies", "Timeframe for this provision").
  ``securityLabel``, ``documentType``, ``resourceType``, ``dataPeriod``, ``data``, ``expression``
  cannot be answered by the question: stated, they make the provision not match (recorded).
- Two readings of nesting: *reversal* (each nested level decides the opposite of its parent, per the
  binding text) and *one level* (an engine that reads only the level directly below the base).

Where the specification leaves a choice open, every reading is evaluated:
- which of several matching sibling provisions wins: ``deny-wins``, ``permit-wins``,
  ``first-in-document-order`` (the specification does not say);
- R4: honour or ignore a typed root provision; an unstated base is assumed deny or permit;
- R5: ``reversal`` or ``one-level``; an absent ``decision`` is assumed deny or permit.

The result is the set of answers over all readings plus each reading's own answer and trail.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

ANSWERS = ("permit", "deny", "not-in-force")
Json = Mapping[str, Any]

V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
CONSENT_ACTION = "http://terminology.hl7.org/CodeSystem/consentaction"
SIBLING_RULES = ("deny-wins", "permit-wins", "first-in-document-order")
R5_NESTING = ("reversal", "one-level")

# Criteria the question answers, and data-describing criteria it cannot, per version.
_UNANSWERABLE_R4 = ("securityLabel", "class", "dataPeriod", "data")
_UNANSWERABLE_R5 = ("securityLabel", "documentType", "resourceType", "dataPeriod", "data", "expression")


@dataclass(frozen=True)
class Coding:
    """A code in a code system; equality is system and code, as for any FHIR coding comparison."""

    system: str
    code: str

    @classmethod
    def of(cls, doc: Json) -> Coding:
        return cls(str(doc.get("system", "")), str(doc.get("code", "")))


@dataclass(frozen=True)
class Question:
    """May ``actor`` perform ``action`` on data of ``information_type`` for ``purpose`` at ``moment``?

    ``information_type`` is a tuple of codings so one concept can be asked under several systems.
    """

    actor: str
    purpose: Coding
    information_type: tuple[Coding, ...]
    moment: datetime
    action: Coding = Coding(CONSENT_ACTION, "disclose")

    def __post_init__(self) -> None:
        if self.moment.tzinfo is None:
            raise ValueError("the moment must be an aware datetime")


@dataclass(frozen=True)
class Reading:
    """One way of reading the Consent, its single answer, and why."""

    name: str
    answer: str
    trail: tuple[str, ...] = ()


@dataclass(frozen=True)
class Result:
    """The answers over every reading; more than one answer means the Consent is ambiguous."""

    answers: frozenset[str]
    readings: tuple[Reading, ...]
    unanswerable: tuple[str, ...] = field(default=())

    @property
    def ambiguous(self) -> bool:
        return len(self.answers) > 1


# --- matching -----------------------------------------------------------------------------------


def _codings(concepts: Iterable[Any]) -> list[Coding]:
    """Every coding of a list of CodeableConcepts, tolerating malformed entries (they match nothing)."""
    out: list[Coding] = []
    for concept in concepts:
        if isinstance(concept, Mapping):
            out.extend(Coding.of(c) for c in concept.get("coding", []) or [] if isinstance(c, Mapping))
    return out


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def actor_matches(provision: Json, actor: str) -> bool:
    """Any listed actor whose reference is the question's actor."""
    for entry in _list(provision.get("actor")):
        ref = entry.get("reference") if isinstance(entry, Mapping) else None
        if isinstance(ref, Mapping) and ref.get("reference") == actor:
            return True
    return False


def action_matches(provision: Json, action: Coding) -> bool:
    return action in _codings(_list(provision.get("action")))


def purpose_matches(provision: Json, purpose: Coding) -> bool:
    return purpose in [Coding.of(c) for c in _list(provision.get("purpose")) if isinstance(c, Mapping)]


def code_matches(provision: Json, info: Sequence[Coding]) -> bool:
    found = _codings(_list(provision.get("code")))
    return any(c in found for c in info)


_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


def _bound(value: Any, moment: datetime, *, start: bool) -> bool:
    """Is ``moment`` on the right side of one period bound? A date bound covers its whole year/month/day."""
    if not isinstance(value, str):
        return True
    m = _DATE.match(value)
    if m:
        bound = tuple(int(g) for g in m.groups() if g is not None)
        day = moment.date()
        mine = (day.year, day.month, day.day)[: len(bound)]
        return mine >= bound if start else mine <= bound
    try:
        instant = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return moment >= instant if start else moment <= instant


def period_contains(period: Any, moment: datetime) -> bool:
    """A period with neither bound, or no period at all, contains every moment; a malformed one none."""
    if period is None:
        return True
    if not isinstance(period, Mapping):
        return False
    return _bound(period.get("start"), moment, start=True) and _bound(period.get("end"), moment, start=False)


def applies(provision: Json, q: Question, unanswerable: Sequence[str], notes: list[str]) -> bool:
    """A provision applies only when every criterion it states matches the question."""
    for element in unanswerable:
        if provision.get(element) not in (None, [], {}):
            notes.append(f"{_label(provision)}: states {element}, which the question cannot answer")
            return False
    checks = (
        ("actor", lambda: actor_matches(provision, q.actor)),
        ("action", lambda: action_matches(provision, q.action)),
        ("purpose", lambda: purpose_matches(provision, q.purpose)),
        ("code", lambda: code_matches(provision, q.information_type)),
        ("period", lambda: period_contains(provision.get("period"), q.moment)),
    )
    return all(check() for element, check in checks if provision.get(element) not in (None, [], {}))


def _label(provision: Json) -> str:
    return str(provision.get("id") or provision.get("type") or "provision")


# --- evaluation ---------------------------------------------------------------------------------


def _opposite(decision: str) -> str:
    return "permit" if decision == "deny" else "deny"


def _choose(outcomes: Sequence[tuple[str, tuple[str, ...]]], rule: str) -> tuple[str, tuple[str, ...]]:
    """Pick among the outcomes of matching siblings (in document order) under one sibling rule."""
    if rule == "first-in-document-order":
        return outcomes[0]
    preferred = "deny" if rule == "deny-wins" else "permit"
    for outcome in outcomes:
        if outcome[0] == preferred:
            return outcome
    return outcomes[0]


@dataclass(frozen=True)
class _Level:
    """How one reading turns a matching provision into a decision."""

    sibling_rule: str
    r5_nesting: str | None = None  # None: R4, each provision has its own type


def _decide(
    provisions: Sequence[Any], inherited: str, q: Question, how: _Level, depth: int, unanswerable: Sequence[str], notes: list[str]
) -> tuple[str, tuple[str, ...]]:
    """The decision of a level: the inherited one unless a matching provision (an exception) overrides it."""
    outcomes: list[tuple[str, tuple[str, ...]]] = []
    for p in provisions:
        if not isinstance(p, Mapping) or not applies(p, q, unanswerable, notes):
            continue
        if how.r5_nesting is None:
            own = p.get("type") if p.get("type") in ("permit", "deny") else None
            if own is None:
                notes.append(f"{_label(p)}: nested provision without type; read as grouping its exceptions")
            decision = own or inherited
            deeper = _list(p.get("provision"))
        else:
            decision = _opposite(inherited)
            deeper = _list(p.get("provision")) if how.r5_nesting == "reversal" else []
        sub, trail = _decide(deeper, decision, q, how, depth + 1, unanswerable, notes)
        outcomes.append((sub, (f"{_label(p)}@{depth}:{decision}", *trail)))
    if not outcomes:
        return inherited, ()
    return _choose(outcomes, how.sibling_rule)


def _bases(stated: str | None, name: str) -> list[tuple[str, str]]:
    """A stated base, or both assumptions when the resource does not state one."""
    if stated in ("permit", "deny"):
        return [(name, stated)]
    return [(f"{name}-unstated-assumed-deny", "deny"), (f"{name}-unstated-assumed-permit", "permit")]


def r4_policy_base(consent: Json) -> str | None:
    """OPTIN: deny unless permitted. OPTOUT: permit unless denied. Anything else states no base."""
    codes = {c.code for c in _codings([consent.get("policyRule")]) if c.system == V3_ACT_CODE}
    if codes == {"OPTIN"}:
        return "deny"
    if codes == {"OPTOUT"}:
        return "permit"
    return None


def _not_a_consent(consent: Any) -> Result | None:
    """Anything but a JSON object with resourceType Consent puts nothing in force."""
    if isinstance(consent, Mapping) and consent.get("resourceType", "Consent") == "Consent":
        return None
    return Result(frozenset({"not-in-force"}), (Reading("not-a-consent", "not-in-force"),))


def evaluate_r4(consent: Json, q: Question) -> Result:
    """Every reading of an R4 Consent for one question."""
    if (refused := _not_a_consent(consent)) is not None:
        return refused
    if consent.get("status") != "active":
        return Result(frozenset({"not-in-force"}), (Reading("status", "not-in-force", (f"status={consent.get('status')}",)),))
    notes: list[str] = []
    root = consent.get("provision")
    if not isinstance(root, Mapping):
        if root is not None:
            notes.append("Consent.provision is not a single object (R4 allows 0..1); read as absent")
        root = {}
    root_type = root.get("type") if root.get("type") in ("permit", "deny") else None
    readings: list[Reading] = []
    modes = ["honour-root-type", "ignore-root-type"] if root_type else ["root-untyped"]
    for mode in modes:
        for base_name, base in _bases(r4_policy_base(consent), "policyRule"):
            for rule in SIBLING_RULES:
                how = _Level(rule)
                trail: tuple[str, ...] = (f"base={base}",)
                if not applies(root, q, _UNANSWERABLE_R4, notes):
                    answer = base
                    trail += ("root does not apply",)
                else:
                    level = root_type if mode == "honour-root-type" and root_type else base
                    answer, sub = _decide(_list(root.get("provision")), level, q, how, 1, _UNANSWERABLE_R4, notes)
                    trail += (f"root@0:{level}", *sub)
                readings.append(Reading(f"R4/{mode}/{base_name}/{rule}", answer, trail))
    return Result(frozenset(r.answer for r in readings), tuple(readings), tuple(dict.fromkeys(notes)))


def evaluate_r5(consent: Json, q: Question) -> Result:
    """Every reading of an R5 Consent for one question."""
    if (refused := _not_a_consent(consent)) is not None:
        return refused
    if consent.get("status") != "active":
        return Result(frozenset({"not-in-force"}), (Reading("status", "not-in-force", (f"status={consent.get('status')}",)),))
    if not period_contains(consent.get("period"), q.moment):
        return Result(frozenset({"not-in-force"}), (Reading("period", "not-in-force", ("outside Consent.period",)),))
    stated = consent.get("decision") if consent.get("decision") in ("permit", "deny") else None
    notes: list[str] = []
    readings: list[Reading] = []
    for nesting in R5_NESTING:
        for base_name, base in _bases(stated, "decision"):
            for rule in SIBLING_RULES:
                answer, sub = _decide(_list(consent.get("provision")), base, q, _Level(rule, nesting), 1, _UNANSWERABLE_R5, notes)
                readings.append(Reading(f"R5/{nesting}/{base_name}/{rule}", answer, (f"base={base}", *sub)))
    return Result(frozenset(r.answer for r in readings), tuple(readings), tuple(dict.fromkeys(notes)))


def fhir_version(consent: Json) -> str:
    """R5 Consents carry ``decision``/``grantor``/``subject``/array provisions; R4 ones ``scope``/``patient``."""
    r5_only = ("decision", "grantor", "grantee", "controller", "manager", "subject", "regulatoryBasis", "policyBasis", "policyText", "date")
    if any(k in consent for k in r5_only) or isinstance(consent.get("provision"), list):
        return "R5"
    return "R4"


def evaluate(consent: Json, q: Question, version: str | None = None) -> Result:
    """Evaluate under the given FHIR version, or the one the resource's shape shows."""
    return evaluate_r5(consent, q) if (version or fhir_version(consent)) == "R5" else evaluate_r4(consent, q)
