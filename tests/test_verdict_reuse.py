"""Reusing a verdict is safe: equal ``decision.reuse_key`` for the same versions means the same answer."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_adapter.decision import DecisionRequest, Recipient, StoredVersion, decide, reuse_key
from tests.strategies import ALL_ROLES, INFO_TYPES, consent_forms

UK = ZoneInfo("Europe/London")
PURPOSES = ("TREAT", "COC", "THREAT", "HLEGAL", "HMARKT")
moments = st.datetimes(min_value=datetime(2019, 1, 1), max_value=datetime(2032, 1, 1), timezones=st.just(UTC))


@st.composite
def histories(draw: st.DrawFn) -> tuple[StoredVersion, ...]:
    """One to three versions of a form, possibly with different statuses and people, recorded over time."""
    form = draw(consent_forms())
    recorded = sorted(draw(st.lists(moments, min_size=1, max_size=3)))
    return tuple(StoredVersion(form.form_id, n + 1, replace(form, status=draw(st.sampled_from(["active", "withdrawn", "draft"]))), at)
                 for n, at in enumerate(recorded))


@st.composite
def questions(draw: st.DrawFn, nhs_number: str) -> DecisionRequest:
    return DecisionRequest(
        nhs_number=nhs_number,
        recipient=Recipient(role=draw(st.sampled_from(ALL_ROLES))),
        information_types=tuple(draw(st.lists(st.sampled_from(INFO_TYPES), min_size=1, max_size=3, unique=True))),
        purpose=draw(st.sampled_from(PURPOSES)),
        at=draw(st.one_of(st.none(), moments)),
    )


@settings(max_examples=300, deadline=None)
@given(data=st.data(), versions=histories(), now=moments, later_by=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=2)))
def test_the_same_reuse_key_means_the_same_verdict(data: st.DataObject, versions: tuple[StoredVersion, ...],
                                                     now: datetime, later_by: timedelta) -> None:
    question = data.draw(questions(versions[0].form.young_person.nhs_number))
    later = now + later_by
    first, second = reuse_key(question, versions, now=now), reuse_key(question, versions, now=later)
    if first is not None and first == second:
        assert decide(question, versions, now=now) == decide(question, versions, now=later)


@settings(max_examples=100, deadline=None)
@given(versions=histories(), now=moments, data=st.data())
def test_a_question_about_now_gets_a_new_key_when_the_uk_day_turns(versions: tuple[StoredVersion, ...], now: datetime,
                                                                  data: st.DataObject) -> None:
    question = replace(data.draw(questions(versions[0].form.young_person.nhs_number)), at=None)
    today = now.astimezone(UK).date()
    next_uk_midnight = datetime.combine(today + timedelta(days=1), datetime.min.time(), UK)
    keys = reuse_key(question, versions, now=now), reuse_key(question, versions, now=next_uk_midnight.astimezone(UTC))
    assert keys[0] is None or keys[0] != keys[1]


def test_a_version_recorded_after_now_makes_the_verdict_not_reusable() -> None:
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    question = DecisionRequest("9434765919", Recipient(role="mother"), ("attendance",), "TREAT")

    class Ahead:  # a version written by a process whose clock runs ahead
        form_id, version, form, recorded_at = "f", 1, None, now + timedelta(seconds=5)

    assert reuse_key(question, [Ahead()], now=now) is None


def test_a_question_built_with_lists_is_answered_but_not_reused() -> None:
    question = DecisionRequest("9434765919", Recipient(role="mother"), ["attendance"], "TREAT")  # type: ignore[arg-type]
    assert reuse_key(question, [], now=datetime(2026, 6, 1, tzinfo=UTC)) is None
