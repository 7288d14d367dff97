"""The version in force depends on when choices were made and what was stored by known-at -- never on entry order.

A young person's history here is a handful of versions of one form, each a choice made at a distinct moment
(active, withdrawn, entered in error or a draft, with the mother sharing or not), typed in in some order.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_adapter.decision import DecisionRequest, Recipient, StoredVersion, Verdict, decide
from fhir_adapter.form import ConsentForm, parse_form
from fhir_adapter.mappings import codes
from tests.support.facade import example_form

BASE: ConsentForm = parse_form(example_form())
NHS = BASE.young_person.nhs_number
NOW = datetime(2031, 1, 1, tzinfo=UTC)
moments = st.datetimes(min_value=datetime(2026, 11, 1), max_value=datetime(2028, 1, 1), timezones=st.just(UTC))

Choice = tuple[datetime, str, str]  # when made, status, the mother's sharing


@st.composite
def choices(draw: st.DrawFn) -> list[Choice]:
    made = draw(st.lists(moments, min_size=1, max_size=5, unique=True))
    statuses = st.sampled_from(["active", "active", "withdrawn", "entered-in-error", "draft"])
    return [(at, draw(statuses), draw(st.sampled_from(["share", "do-not-share"]))) for at in made]


def form_for(choice: Choice) -> ConsentForm:
    made, status, sharing = choice
    mum = BASE.people[0]
    mum = replace(mum, sharing=sharing, information_types=mum.information_types if sharing == "share" else ())
    return replace(BASE, status=status, recorded=replace(BASE.recorded, date=made), people=(mum, *BASE.people[1:]))  # type: ignore[arg-type]


def entered(history: list[Choice], order: list[int], first_entry: datetime) -> tuple[StoredVersion, ...]:
    """The choices typed in in ``order``, one a day from ``first_entry``; versions are numbered as they are stored."""
    return tuple(StoredVersion(BASE.form_id, n + 1, form_for(history[i]), first_entry + timedelta(days=n)) for n, i in enumerate(order))


@st.composite
def questions(draw: st.DrawFn) -> DecisionRequest:
    return DecisionRequest(
        nhs_number=NHS,
        recipient=Recipient(role=draw(st.sampled_from(["mother", "parent", "father", "gp", "court"]))),
        information_types=tuple(draw(st.lists(st.sampled_from(codes.INFORMATION_TYPES.values()), min_size=1, max_size=2, unique=True))),
        purpose=draw(st.sampled_from(["TREAT", "THREAT"])),
        at=draw(moments),
    )


def meaning(verdict: Verdict, versions: tuple[StoredVersion, ...]) -> tuple[Any, ...]:
    """The verdict with the cited version named by when its choice was made (version numbers follow entry order)."""
    cited = next((v.form.recorded.date for v in versions if v.version == verdict.version), None)
    return (
        verdict.decision,
        verdict.basis,
        verdict.provision,
        cited,
        verdict.per_type,
        verdict.per_type_provisions,
        verdict.obligations,
        verdict.flags,
        verdict.matched_people,
    )


@settings(max_examples=200, deadline=None)
@given(history=choices(), data=st.data(), question=questions(), first_entry=moments)
def test_entry_order_never_changes_the_answer_once_everything_is_known(
    history: list[Choice], data: st.DataObject, question: DecisionRequest, first_entry: datetime
) -> None:
    one = entered(history, data.draw(st.permutations(range(len(history)))), first_entry)
    other = entered(history, data.draw(st.permutations(range(len(history)))), first_entry)
    assert meaning(decide(question, one, now=NOW), one) == meaning(decide(question, other, now=NOW), other)


@settings(max_examples=200, deadline=None)
@given(history=choices(), data=st.data(), question=questions(), first_entry=moments, known_after=st.integers(-1, 5))
def test_known_at_answers_from_exactly_the_versions_stored_by_then(
    history: list[Choice], data: st.DataObject, question: DecisionRequest, first_entry: datetime, known_after: int
) -> None:
    versions = entered(history, data.draw(st.permutations(range(len(history)))), first_entry)
    known_at = first_entry + timedelta(days=known_after, hours=12)
    stored_by_then = tuple(v for v in versions if v.stored_at <= known_at)
    as_known = decide(replace(question, known_at=known_at), versions, now=NOW)
    assert as_known == decide(question, stored_by_then, now=NOW)
