"""The reference reader of FHIR Consent itself: each rule it takes from the specification, one by one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from tests.reference_reader import (
    CONSENT_ACTION,
    V3_ACT_CODE,
    V3_ACT_REASON,
    Coding,
    Question,
    evaluate_r4,
    evaluate_r5,
    period_contains,
)

TYPES = "https://example.org/info-type"
NOON = datetime(2025, 6, 15, 12, tzinfo=UTC)
CARE = [{"system": V3_ACT_REASON, "code": c} for c in ("TREAT", "ETREAT", "COC", "CAREMGT")]
DISCLOSE = [{"coding": [{"system": CONSENT_ACTION, "code": "disclose"}]}]


def ask(actor: str = "#mum", purpose: str = "TREAT", info: str = "attendance", moment: datetime = NOON) -> Question:
    return Question(actor=actor, purpose=Coding(V3_ACT_REASON, purpose), information_type=(Coding(TYPES, info),), moment=moment)


def actor(ref: str) -> list[dict[str, Any]]:
    role = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]}
    return [{"role": role, "reference": {"reference": ref}}]


def code(*infos: str) -> list[dict[str, Any]]:
    return [{"coding": [{"system": TYPES, "code": i}]} for i in infos]


def share(ref: str = "#mum", *infos: str, period: dict[str, str] | None = None, kind: str | None = "permit") -> dict[str, Any]:
    p: dict[str, Any] = {"actor": actor(ref), "action": DISCLOSE, "purpose": CARE, "code": code(*(infos or ("attendance",)))}
    if kind:
        p["type"] = kind
    if period:
        p["period"] = period
    return p


def r4(*provisions: dict[str, Any], rule: str | None = "OPTIN", status: str = "active", root: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"resourceType": "Consent", "status": status, "provision": {**(root or {}), "provision": list(provisions)}}
    if rule:
        doc["policyRule"] = {"coding": [{"system": V3_ACT_CODE, "code": rule}]}
    return doc


def r5(*provisions: dict[str, Any], decision: str | None = "deny", status: str = "active") -> dict[str, Any]:
    doc: dict[str, Any] = {"resourceType": "Consent", "status": status, "provision": list(provisions)}
    if decision:
        doc["decision"] = decision
    return doc


def untyped(p: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in p.items() if k != "type"}


# --- status ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["draft", "proposed", "rejected", "inactive", "entered-in-error"])
def test_r4_consent_not_active_is_not_in_force(status: str) -> None:
    assert evaluate_r4(r4(share(), status=status), ask()).answers == {"not-in-force"}


@pytest.mark.parametrize("status", ["draft", "inactive", "not-done", "entered-in-error", "unknown"])
def test_r5_consent_not_active_is_not_in_force(status: str) -> None:
    assert evaluate_r5(r5(untyped(share()), status=status), ask()).answers == {"not-in-force"}


def test_r5_moment_outside_consent_period_is_not_in_force() -> None:
    doc = {**r5(untyped(share())), "period": {"end": "2025-06-14"}}
    assert evaluate_r5(doc, ask()).answers == {"not-in-force"}


# --- base rule ---------------------------------------------------------------------------------


def test_r4_optin_without_matching_provision_denies() -> None:
    assert evaluate_r4(r4(rule="OPTIN"), ask()).answers == {"deny"}


def test_r4_optout_without_matching_provision_permits() -> None:
    assert evaluate_r4(r4(rule="OPTOUT"), ask()).answers == {"permit"}


def test_r4_base_not_stated_by_policy_rule_is_ambiguous() -> None:
    result = evaluate_r4(r4(rule=None), ask())
    assert result.answers == {"permit", "deny"}


def test_r4_typed_root_is_read_both_honoured_and_ignored() -> None:
    result = evaluate_r4(r4(rule="OPTOUT", root={"type": "deny"}), ask())
    assert result.answers == {"permit", "deny"}
    assert {r.answer for r in result.readings if "/honour-root-type/" in r.name} == {"deny"}
    assert {r.answer for r in result.readings if "/ignore-root-type/" in r.name} == {"permit"}


def test_r4_root_that_does_not_apply_leaves_the_base() -> None:
    doc = r4(share(), rule="OPTIN", root={"actor": actor("#dad")})
    assert evaluate_r4(doc, ask()).answers == {"deny"}


def test_r5_decision_deny_without_matching_provision_denies() -> None:
    assert evaluate_r5(r5(decision="deny"), ask()).answers == {"deny"}


def test_r5_decision_permit_without_matching_provision_permits() -> None:
    assert evaluate_r5(r5(decision="permit"), ask()).answers == {"permit"}


def test_r5_absent_decision_is_ambiguous() -> None:
    assert evaluate_r5(r5(decision=None), ask()).answers == {"permit", "deny"}


# --- provisions as exceptions --------------------------------------------------------------------


def test_r4_matching_permit_under_optin_permits() -> None:
    assert evaluate_r4(r4(share()), ask()).answers == {"permit"}


def test_r4_matching_deny_under_optout_denies() -> None:
    assert evaluate_r4(r4(share(kind="deny"), rule="OPTOUT"), ask()).answers == {"deny"}


def test_r4_nested_deny_is_an_exception_to_its_permit() -> None:
    outer = {**share(), "provision": [{"type": "deny", "purpose": [{"system": V3_ACT_REASON, "code": "TREAT"}]}]}
    assert evaluate_r4(r4(outer), ask(purpose="TREAT")).answers == {"deny"}
    assert evaluate_r4(r4(outer), ask(purpose="COC")).answers == {"permit"}


def test_r4_nested_exception_is_not_read_when_its_parent_does_not_apply() -> None:
    outer = {"type": "permit", "actor": actor("#dad"), "provision": [{"type": "permit", "purpose": CARE}]}
    assert evaluate_r4(r4(outer, rule="OPTIN"), ask(actor="#mum")).answers == {"deny"}


def test_r4_permit_nested_under_permit_does_not_narrow_it() -> None:
    outer = {"type": "permit", "actor": actor("#mum"), "action": DISCLOSE, "provision": [share("#mum", "medication")]}
    assert evaluate_r4(r4(outer), ask(info="attendance")).answers == {"permit"}


def test_r5_reversal_and_one_level_disagree_on_nested_provision() -> None:
    outer = {"actor": actor("#mum"), "action": DISCLOSE, "provision": [{"purpose": [{"system": V3_ACT_REASON, "code": "TREAT"}]}]}
    result = evaluate_r5(r5(outer), ask(purpose="TREAT"))
    assert result.answers == {"permit", "deny"}
    assert {r.answer for r in result.readings if "/reversal/" in r.name} == {"deny"}
    assert {r.answer for r in result.readings if "/one-level/" in r.name} == {"permit"}


def test_r5_top_level_provision_is_the_opposite_of_the_decision() -> None:
    assert evaluate_r5(r5(untyped(share())), ask()).answers == {"permit"}


# --- criteria ----------------------------------------------------------------------------------


def test_actor_is_matched_on_its_reference() -> None:
    assert evaluate_r4(r4(share("#dad")), ask(actor="#mum")).answers == {"deny"}


def test_actor_is_any_of_the_listed_actors() -> None:
    p = {**share("#dad"), "actor": actor("#dad") + actor("#mum")}
    assert evaluate_r4(r4(p), ask(actor="#mum")).answers == {"permit"}


def test_action_must_match() -> None:
    p = {**share(), "action": [{"coding": [{"system": CONSENT_ACTION, "code": "access"}]}]}
    assert evaluate_r4(r4(p), ask()).answers == {"deny"}


def test_purpose_must_match_with_its_system() -> None:
    p = {**share(), "purpose": [{"system": "http://example.org/other", "code": "TREAT"}]}
    assert evaluate_r4(r4(p), ask(purpose="TREAT")).answers == {"deny"}


def test_purpose_outside_the_listed_ones_does_not_match() -> None:
    assert evaluate_r4(r4(share()), ask(purpose="HMARKT")).answers == {"deny"}


def test_code_is_any_of_the_listed_codes() -> None:
    doc = r4(share("#mum", "medication", "attendance"))
    assert evaluate_r4(doc, ask(info="attendance")).answers == {"permit"}
    assert evaluate_r4(doc, ask(info="risk-safety")).answers == {"deny"}


def test_unstated_criterion_matches_everything() -> None:
    assert evaluate_r4(r4({"type": "permit"}), ask(actor="#anyone", purpose="HMARKT")).answers == {"permit"}


@pytest.mark.parametrize("element", ["securityLabel", "class", "dataPeriod"])
def test_criterion_the_question_cannot_answer_does_not_match_and_is_recorded(element: str) -> None:
    value: Any = {"start": "2020-01-01"} if element == "dataPeriod" else [{"system": "http://example.org", "code": "x"}]
    result = evaluate_r4(r4({**share(), element: value}), ask())
    assert result.answers == {"deny"}
    assert any(element in note for note in result.unanswerable)


# --- period edges ------------------------------------------------------------------------------


def test_date_end_covers_the_whole_of_that_day() -> None:
    assert period_contains({"end": "2025-06-15"}, datetime(2025, 6, 15, 23, 59, tzinfo=UTC))


def test_date_end_excludes_the_next_day() -> None:
    assert not period_contains({"end": "2025-06-14"}, NOON)


def test_date_start_covers_the_whole_of_that_day() -> None:
    assert period_contains({"start": "2025-06-15"}, datetime(2025, 6, 15, 0, 0, tzinfo=UTC))


def test_date_bound_compares_the_calendar_date_of_the_moment_as_given() -> None:
    late_evening_west = datetime(2025, 6, 15, 22, tzinfo=timezone(timedelta(hours=-5)))  # already the 16th in UTC
    assert period_contains({"end": "2025-06-15"}, late_evening_west)


def test_datetime_bound_is_an_instant() -> None:
    assert not period_contains({"end": "2025-06-15T11:59:59Z"}, NOON)
    assert period_contains({"start": "2025-06-15T12:00:00+00:00"}, NOON)


def test_partial_date_bound_covers_its_month() -> None:
    assert period_contains({"start": "2025-06", "end": "2025-06"}, NOON)
    assert not period_contains({"end": "2025-05"}, NOON)


def test_provision_outside_its_period_does_not_apply() -> None:
    doc = r4(share(period={"start": "2025-07-01"}))
    assert evaluate_r4(doc, ask()).answers == {"deny"}


# --- sibling ambiguity -------------------------------------------------------------------------


def test_matching_siblings_that_disagree_are_ambiguous() -> None:
    doc = r4(share(), share(kind="deny"))
    result = evaluate_r4(doc, ask())
    assert result.answers == {"permit", "deny"}
    by_rule = {r.name.rsplit("/", 1)[1]: r.answer for r in result.readings}
    assert by_rule == {"deny-wins": "deny", "permit-wins": "permit", "first-in-document-order": "permit"}


def test_matching_siblings_that_agree_are_not_ambiguous() -> None:
    assert evaluate_r4(r4(share(), share("#mum", "attendance", "medication")), ask()).answers == {"permit"}


# --- the shape a CASUS Consent should have -----------------------------------------------------


def exception(purpose: str) -> dict[str, Any]:
    return {"type": "permit", "action": DISCLOSE, "purpose": [{"system": V3_ACT_REASON, "code": purpose}]}


def casus_r4() -> dict[str, Any]:
    refuse = {"type": "deny", "actor": actor("#dad"), "action": DISCLOSE, "purpose": CARE}
    return r4(
        share("#mum", "attendance", "medication", period={"start": "2025-01-01", "end": "2025-12-31"}),
        refuse,
        exception("THREAT"),
        exception("HLEGAL"),
        rule="OPTIN",
    )


def casus_r5() -> dict[str, Any]:
    return r5(*(untyped(p) for p in casus_r4()["provision"]["provision"] if p["type"] == "permit"), decision="deny")


QUESTIONS = [
    (ask("#mum", "TREAT", "attendance"), "permit"),
    (ask("#mum", "COC", "medication"), "permit"),
    (ask("#mum", "TREAT", "risk-safety"), "deny"),
    (ask("#mum", "HMARKT", "attendance"), "deny"),
    (ask("#mum", "TREAT", "attendance", datetime(2026, 1, 1, 12, tzinfo=UTC)), "deny"),
    (ask("#dad", "TREAT", "attendance"), "deny"),
    (ask("#dad", "THREAT", "attendance"), "permit"),
    (ask("#dad", "HLEGAL", "medication"), "permit"),
    (ask("#police", "THREAT", "risk-safety"), "permit"),
    (ask("#police", "HOPERAT", "risk-safety"), "deny"),
]


@pytest.mark.parametrize(("question", "expected"), QUESTIONS)
def test_casus_shaped_r4_consent_has_one_answer_under_every_reading(question: Question, expected: str) -> None:
    assert evaluate_r4(casus_r4(), question).answers == {expected}


@pytest.mark.parametrize(("question", "expected"), QUESTIONS)
def test_casus_shaped_r5_consent_has_one_answer_under_every_reading(question: Question, expected: str) -> None:
    assert evaluate_r5(casus_r5(), question).answers == {expected}
