"""Consents written in the mapping version 1 shape still read into the same form; mixtures of shapes do not."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from fhir_adapter.form import parse_form
from fhir_adapter.mappings import codes
from fhir_adapter.mappings.cross_version import r4_to_r5, r5_to_r4
from fhir_adapter.mappings.r4 import form_to_r4, r4_to_form
from fhir_adapter.mappings.r5 import form_to_r5, r5_to_form
from fhir_adapter.outcome import InvalidInput

from .strategies import consent_forms
from .support.legacy_shape import OVRTPS, legacy_r4, legacy_r5

FIXTURES = Path(__file__).parent / "fixtures" / "legacy-shape"
EXAMPLES = Path(__file__).resolve().parent.parent / "profiles" / "examples"
NAMES = sorted(p.stem.removeprefix("form-") for p in EXAMPLES.glob("form-*.json"))
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _form(name: str):
    return parse_form(_load(EXAMPLES / f"form-{name}.json"))


def _issues(read, consent: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(InvalidInput) as caught:
        read(consent)
    return [(i.expression, i.diagnostics) for i in caught.value.issues]


def _at(issues: list[tuple[str, str]], expression: str) -> list[str]:
    return [why for where, why in issues if where == expression]


# --------------------------------------------------------------------------- captured version 1 documents


def test_fixtures_cover_every_example_form_in_both_versions():
    assert NAMES and sorted(p.name for p in FIXTURES.glob("*.json")) == sorted(f"{v}-{n}.json" for v in ("r4", "r5") for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_version_1_r4_fixture_reads_as_the_form_the_new_shape_reads_as(name):
    assert r4_to_form(_load(FIXTURES / f"r4-{name}.json")) == r4_to_form(form_to_r4(_form(name))) == _form(name)


@pytest.mark.parametrize("name", NAMES)
def test_version_1_r5_fixture_reads_as_the_form_the_new_shape_reads_as(name):
    assert r5_to_form(_load(FIXTURES / f"r5-{name}.json")) == r5_to_form(form_to_r5(_form(name))) == _form(name)


def test_the_version_1_fixtures_are_the_old_shape():
    r4 = _load(FIXTURES / "r4-competent-under-16.json")
    assert r4["provision"]["type"] == "deny" and "policyRule" not in r4
    r5 = _load(FIXTURES / "r5-competent-under-16.json")
    assert any("provision" in p for p in r5["provision"])
    assert any(OVRTPS["code"] in {c["code"] for c in p.get("purpose", [])} for p in r5["provision"])


@SETTINGS
@given(consent_forms())
def test_any_version_1_r4_consent_reads_as_its_form(form):
    assert r4_to_form(json.loads(json.dumps(legacy_r4(form)))) == form


@SETTINGS
@given(consent_forms())
def test_any_version_1_r5_consent_reads_as_its_form(form):
    assert r5_to_form(json.loads(json.dumps(legacy_r5(form)))) == form


# --------------------------------------------------------------------------- the new shape is read strictly

BASE = "competent-under-16"  # people: mum (share), gp (share), dad (do-not-share); then THREAT, HLEGAL


def _r4() -> dict[str, Any]:
    return copy.deepcopy(form_to_r4(_form(BASE)))


def _r5() -> dict[str, Any]:
    return copy.deepcopy(form_to_r5(_form(BASE)))


def test_r4_share_permit_without_care_purposes_is_rejected_at_its_purpose():
    consent = _r4()
    del consent["provision"]["provision"][0]["purpose"]
    assert _at(_issues(r4_to_form, consent), "Consent.provision.provision[0].purpose")


def test_r4_person_purpose_beyond_care_is_rejected():
    consent = _r4()
    consent["provision"]["provision"][0]["purpose"].append({"system": codes.V3_ACT_REASON, "code": "HMARKT"})
    assert _at(_issues(r4_to_form, consent), "Consent.provision.provision[0].purpose")


def test_r4_share_permit_with_a_nested_provision_is_rejected_at_the_nesting():
    consent = _r4()
    consent["provision"]["provision"][0]["provision"] = [{"type": "deny", "code": consent["provision"]["provision"][0]["code"][:1]}]
    assert any("never nests" in why for why in _at(_issues(r4_to_form, consent), "Consent.provision.provision[0].provision"))


def test_r4_do_not_share_deny_listing_codes_is_rejected():
    consent = _r4()
    consent["provision"]["provision"][2]["code"] = consent["provision"]["provision"][0]["code"]
    assert _at(_issues(r4_to_form, consent), "Consent.provision.provision[2].code")


def test_r4_share_permit_without_codes_is_rejected():
    consent = _r4()
    del consent["provision"]["provision"][0]["code"]
    assert _at(_issues(r4_to_form, consent), "Consent.provision.provision[0].code")


def test_r4_exception_with_ovrtps_beside_threat_is_rejected_in_the_new_shape():
    consent = _r4()
    consent["provision"]["provision"][3]["purpose"].append(OVRTPS)
    assert _at(_issues(r4_to_form, consent), "Consent.provision.provision[3].purpose")


def test_r4_new_shape_without_policy_rule_is_rejected():
    consent = _r4()
    del consent["policyRule"]
    assert _at(_issues(r4_to_form, consent), "Consent.policyRule")


def test_r4_root_type_with_new_style_person_provisions_is_rejected():
    consent = _r4()
    consent["provision"]["type"] = "deny"
    del consent["policyRule"]
    assert _at(_issues(r4_to_form, consent), "Consent.provision.provision[0].purpose")


def test_r4_version_1_shape_with_threat_alone_is_rejected():
    consent = legacy_r4(_form(BASE))
    consent["provision"]["provision"][3]["purpose"] = [codes.EXCEPTIONS.to_coding("risk-of-significant-harm")]
    assert _at(_issues(r4_to_form, consent), "Consent.provision.provision[3].purpose")


def test_r5_share_permit_without_care_purposes_is_rejected_at_its_purpose():
    consent = _r5()
    del consent["provision"][0]["purpose"]
    assert _at(_issues(r5_to_form, consent), "Consent.provision[0].purpose")


def test_r5_share_permit_with_a_nested_provision_is_rejected_at_the_nesting():
    consent = _r5()
    consent["provision"][0]["provision"] = [{"action": consent["provision"][0]["action"]}]
    assert _at(_issues(r5_to_form, consent), "Consent.provision[0].provision")


def test_r5_provision_without_codes_is_rejected_pointing_at_the_do_not_share_extension():
    consent = _r5()
    del consent["provision"][0]["code"]
    assert any(codes.EXT_DO_NOT_SHARE in why for why in _at(_issues(r5_to_form, consent), "Consent.provision[0].code"))


def test_r5_do_not_share_extension_without_recipient_is_rejected():
    consent = _r5()
    index = next(n for n, e in enumerate(consent["extension"]) if e["url"] == codes.EXT_DO_NOT_SHARE)
    consent["extension"][index]["extension"] = []
    assert _at(_issues(r5_to_form, consent), f"Consent.extension[{index}].extension('recipient')")


def test_r5_do_not_share_extension_with_an_unknown_part_is_rejected():
    consent = _r5()
    index = next(n for n, e in enumerate(consent["extension"]) if e["url"] == codes.EXT_DO_NOT_SHARE)
    consent["extension"][index]["extension"].append({"url": "purpose", "valueCode": "TREAT"})
    assert _at(_issues(r5_to_form, consent), f"Consent.extension[{index}].extension[1]")


def test_r5_mixing_the_extension_with_a_version_1_revocation_is_rejected():
    consent = _r5()
    legacy = legacy_r5(_form(BASE))
    consent["provision"].append(legacy["provision"][2])  # dad as a version 1 revoked provision, beside his extension
    issues = _issues(r5_to_form, consent)
    assert _at(issues, "Consent.provision[4].provision")
    assert _at(issues, "Consent.provision[4].purpose")


def test_r5_exception_with_ovrtps_beside_threat_is_rejected_in_the_new_shape():
    consent = _r5()
    consent["provision"][2]["purpose"].append(OVRTPS)
    assert _at(_issues(r5_to_form, consent), "Consent.provision[2].purpose")


def test_r5_people_come_back_in_contained_order_whatever_the_provision_order():
    consent = _r5()
    consent["provision"][0], consent["provision"][1] = consent["provision"][1], consent["provision"][0]
    assert [p.id for p in r5_to_form(consent).people] == [p.id for p in _form(BASE).people]


# --------------------------------------------------------------------------- what the writers guarantee any reader


def _provisions(consent: dict[str, Any]) -> list[dict[str, Any]]:
    root = consent["provision"]
    return root["provision"] if isinstance(root, dict) else root


@SETTINGS
@given(consent_forms())
def test_written_provisions_never_nest_and_always_state_action_and_purpose(form):
    for consent in (form_to_r4(form), form_to_r5(form)):
        for prov in _provisions(consent):
            assert "provision" not in prov
            assert prov["action"] and prov["purpose"]
            if "actor" in prov and prov.get("type", "permit") == "permit":
                assert prov["code"]
    assert "type" not in form_to_r4(form)["provision"]


@pytest.mark.parametrize("name", NAMES)
def test_a_version_1_r4_consent_converts_to_the_version_2_r5_consent(name):
    legacy = _load(FIXTURES / f"r4-{name}.json")
    expected = {k: v for k, v in form_to_r5(_form(name)).items() if k != "resourceType"}
    assert r4_to_r5(legacy) == {"resourceType": "Consent", "id": legacy["id"], **expected}
    assert r5_to_r4(_load(FIXTURES / f"r5-{name}.json"))["provision"] == form_to_r4(_form(name))["provision"]


def test_r4_person_provision_without_actor_is_rejected_at_its_actor():
    consent = _r4()
    del consent["provision"]["provision"][0]["actor"]
    assert any("recipient" in why for why in _at(_issues(r4_to_form, consent), "Consent.provision.provision[0].actor"))


def test_r5_exception_naming_a_recipient_is_read_as_a_person_and_rejected_at_its_purpose():
    consent = _r5()
    consent["provision"][2]["actor"] = consent["provision"][0]["actor"]
    assert _at(_issues(r5_to_form, consent), "Consent.provision[2].purpose")
