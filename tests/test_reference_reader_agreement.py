"""What the adapter writes to FHIR means, to a reader that follows only the specification, what its engine decides.

For generated forms and every question about them — each person on the form, each CASUS information type,
care, non-care and exception purposes, moments inside and outside each person's period — the reference
reader evaluates the R4 and the R5 Consent under every reading the specification leaves open, and each
reading must give the engine's answer. A consent that is not active is in force for no reader; then the
engine may permit only through an exception that the law forces whatever the consent says.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from hypothesis import HealthCheck, given, settings

from fhir_adapter.decision import DecisionRequest, Recipient, StoredVersion, decide
from fhir_adapter.form import ConsentForm, Person
from fhir_adapter.mappings import codes
from fhir_adapter.mappings.r4 import form_to_r4
from fhir_adapter.mappings.r5 import form_to_r5
from tests.reference_reader import V3_ACT_REASON, Coding, Question, Result, evaluate_r4, evaluate_r5
from tests.strategies import consent_forms

CARE = ("TREAT", "COC")
NON_CARE = ("HMARKT", "HOPERAT")
EXCEPTIONS = ("THREAT", "HLEGAL")
PURPOSES = CARE + NON_CARE + EXCEPTIONS
EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def noon(day: date) -> datetime:
    """Noon UTC: the same calendar date in every offset a period bound could be read in."""
    return datetime.combine(day, time(12), UTC)


def moments(form: ConsentForm, person: Person) -> list[datetime]:
    """Days inside and just outside the person's period, none before the form was recorded."""
    first = form.recorded.date.astimezone(UTC).date() + timedelta(days=1)
    days = {first, first + timedelta(days=400)}
    if person.period is not None:
        if person.period.start is not None:
            days |= {person.period.start, person.period.start - timedelta(days=1)}
        if person.period.end is not None:
            days |= {person.period.end, person.period.end + timedelta(days=1)}
    return [noon(d) for d in sorted(days) if d >= first]


@dataclass(frozen=True)
class Case:
    """One question, the engine's verdict on it, and what the reader makes of both FHIR versions."""

    person: Person
    info_type: str
    purpose: str
    moment: datetime
    decision: str
    basis: str
    r4: Result
    r5: Result

    def describe(self) -> str:
        p = self.person
        split = [f"{r.name}={r.answer} via {' > '.join(r.trail)}" for r in (*self.r4.readings, *self.r5.readings)]
        return (
            f"person #{p.id} role={p.role} sharing={p.sharing} types={p.information_types} period={p.period}; "
            f"asked {self.info_type} for {self.purpose} at {self.moment.isoformat()}; "
            f"engine {self.decision} ({self.basis}); R4 reader {sorted(self.r4.answers)}; R5 reader {sorted(self.r5.answers)}\n"
            + "\n".join(split[:24])
        )


Writer = Callable[[ConsentForm], dict[str, object]]


def cases(form: ConsentForm, to_r4: Writer = form_to_r4, to_r5: Writer = form_to_r5) -> Iterator[Case]:
    r4_doc, r5_doc = to_r4(form), to_r5(form)
    version = StoredVersion(form_id=form.form_id, version=1, form=form, stored_at=form.recorded.date)
    for person in form.people:
        for info_type in codes.INFORMATION_TYPES.values():
            coding = Coding.of(codes.INFORMATION_TYPES.to_coding(info_type))
            for purpose in PURPOSES:
                for moment in moments(form, person):
                    request = DecisionRequest(
                        nhs_number=form.young_person.nhs_number,
                        recipient=Recipient(person_id=person.id),
                        information_types=(info_type,),
                        purpose=purpose,
                        at=moment,
                    )
                    verdict = decide(request, [version], now=moment)
                    question = Question(actor=f"#{person.id}", purpose=Coding(V3_ACT_REASON, purpose), information_type=(coding,), moment=moment)
                    yield Case(
                        person,
                        info_type,
                        purpose,
                        moment,
                        str(verdict.decision),
                        str(verdict.basis),
                        evaluate_r4(r4_doc, question),
                        evaluate_r5(r5_doc, question),
                    )


@EXAMPLES
@given(consent_forms().filter(lambda f: f.status == "active"))
def test_every_reading_of_an_active_consent_gives_the_engines_answer(form: ConsentForm) -> None:
    for case in cases(form):
        assert case.r4.answers == {case.decision} and case.r5.answers == {case.decision}, case.describe()


@EXAMPLES
@given(consent_forms().filter(lambda f: f.status != "active"))
def test_consent_not_in_force_lets_the_engine_permit_only_a_forced_exception(form: ConsentForm) -> None:
    for case in cases(form):
        assert case.r4.answers == {"not-in-force"} and case.r5.answers == {"not-in-force"}, case.describe()
        if case.decision == "permit":
            assert case.basis == "policy-exception" and case.purpose in EXCEPTIONS, case.describe()


# --- the target shape: what a Consent must look like for the property above to hold ---------------

V3_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
CARE_CODINGS = [{"system": V3_ACT_REASON, "code": c} for c in ("TREAT", "ETREAT", "COC", "CAREMGT")]
DISCLOSE = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "disclose"}]}]
EXCEPTION_PURPOSE = {"risk-of-significant-harm": "THREAT", "court-order": "HLEGAL"}


def _choice(person: Person) -> dict[str, object]:
    """One self-contained provision per person: everything the choice depends on is on it."""
    provision: dict[str, object] = {
        "type": "permit" if person.sharing == "share" else "deny",
        "actor": [{"role": {"coding": [{"system": V3_PARTICIPATION, "code": "IRCP"}]}, "reference": {"reference": f"#{person.id}"}}],
        "action": DISCLOSE,
        "purpose": CARE_CODINGS,
    }
    if person.sharing == "share":
        provision["code"] = [{"coding": [codes.INFORMATION_TYPES.to_coding(t)]} for t in person.information_types]
    if person.period is not None:
        provision["period"] = {k: v.isoformat() for k, v in (("start", person.period.start), ("end", person.period.end)) if v}
    return provision


def target_r4(form: ConsentForm) -> dict[str, object]:
    """OPTIN, an untyped root, and top-level choices and exceptions that never both match one question."""
    exceptions = [
        {"type": "permit", "action": DISCLOSE, "purpose": [{"system": V3_ACT_REASON, "code": EXCEPTION_PURPOSE[e]}]}
        for e in form.exceptions.provisions
    ]
    status = {"active": "active", "draft": "draft", "withdrawn": "inactive", "entered-in-error": "entered-in-error"}[form.status]
    return {
        "resourceType": "Consent",
        "status": status,
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": {"provision": [_choice(p) for p in form.people] + exceptions},
    }


def target_r5(form: ConsentForm) -> dict[str, object]:
    """decision deny and only the permits, each at the top level (no nesting for any engine to misread)."""
    r4_doc = target_r4(form)
    permits = [{k: v for k, v in p.items() if k != "type"} for p in r4_doc["provision"]["provision"] if p["type"] == "permit"]  # type: ignore[index]
    return {"resourceType": "Consent", "status": r4_doc["status"], "decision": "deny", "provision": permits}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(consent_forms())
def test_engine_answers_what_every_reading_of_the_target_shape_says(form: ConsentForm) -> None:
    """The engine's semantics fit a spec-clean Consent: the shape the mappings must write for the tests above."""
    for case in cases(form, target_r4, target_r5):
        expected = {case.decision} if form.status == "active" else {"not-in-force"}
        assert case.r4.answers == expected and case.r5.answers == expected, case.describe()
