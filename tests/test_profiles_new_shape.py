"""The profiles of the published shape (mapping version 2), checked against hand-made Consents of that shape.

The fixtures in ``tests/fixtures/new-shape/`` are the example forms written by hand in the new shape: R4 with
policyRule OPTIN and flat person provisions that carry their purposes and codes; R5 with permissions only and the
do-not-share people in ``casus-do-not-share``.  Each R5 profile rule, and each rule of the profiles applied to
contained people, has a broken copy that fails it at its element.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fhir_adapter.form import parse_form
from fhir_adapter.mappings import codes
from fhir_adapter.mappings.r4 import form_to_r4
from fhir_adapter.mappings.r5 import form_to_r5
from fhir_adapter.outcome import Issue
from fhir_adapter.profile_artifacts import EXAMPLES_DIR, example_forms
from fhir_adapter.validation import (
    CODE_RULES,
    CONSENT_PROFILES,
    PROFILE_CONSENT_R5,
    Scope,
    artefacts,
    conformance_issues,
    rule_ids,
    validate_consent,
)

from .test_profiles import BAD_CHECK_DIGIT, OTHER_CATEGORY, _append, _both, _drop, _duplicate, _ext, _keep, _set

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "new-shape"
R4_FIXTURES = sorted(FIXTURES.glob("Consent-r4-*.json"))
R5_FIXTURES = sorted(FIXTURES.glob("Consent-r5-*.json"))
R5_BASE = FIXTURES / "Consent-r5-competent-under-16.json"
R4_BASE = FIXTURES / "Consent-r4-competent-under-16.json"
SD = f"{codes.CASUS_BASE}/StructureDefinition"
EXT_RECORDED_AT = f"{SD}/casus-recorded-at"
EXT_DO_NOT_SHARE = f"{SD}/casus-do-not-share"


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _profile_errors(consent: dict[str, Any], version: str) -> list[Issue]:
    """The profile stage and the code rules only, so each broken copy is judged by the profile alone."""
    issues = conformance_issues(Scope(consent, "Consent", consent), CONSENT_PROFILES[version])  # type: ignore[index]
    issues += [i for rule in CODE_RULES.values() for i in rule(consent)]
    return [i for i in issues if i.severity in ("error", "fatal")]


# --------------------------------------------------------------------------- the hand-made new-shape Consents


@pytest.mark.parametrize("path", R5_FIXTURES, ids=lambda p: p.name)
def test_new_shape_r5_consent_conforms_to_the_r5_profile(path):
    assert _profile_errors(_load(path), "r5") == []


@pytest.mark.parametrize("path", R4_FIXTURES, ids=lambda p: p.name)
def test_new_shape_r4_consent_conforms_to_the_r4_profile(path):
    assert _profile_errors(_load(path), "r4") == []


def test_r5_fixture_claims_the_r5_profile_so_the_validator_applies_it():
    consent = _load(R5_BASE)
    consent["decision"] = "permit"
    assert any(i.diagnostics.startswith("Consent.decision|fixed") for i in validate_consent(consent, "r5"))


def test_r5_consent_claiming_the_r4_profile_is_warned_and_checked_against_the_r5_profile():
    consent = _load(R5_BASE)
    consent["meta"]["profile"] = [codes.PROFILE_CONSENT]
    consent["decision"] = "permit"
    issues = validate_consent(consent, "r5")
    assert any(i.severity == "warning" and i.expression == "Consent.meta.profile" for i in issues)
    assert any(i.diagnostics.startswith("Consent.decision|fixed") for i in issues)


def test_asking_for_the_r4_profile_on_an_r5_consent_is_not_supported():
    issues = validate_consent(_load(R5_BASE), "r5", profile=codes.PROFILE_CONSENT)
    assert any(i.code == "not-supported" and i.expression == "Consent.meta.profile" for i in issues)


# --------------------------------------------------------------------------- every extension has a definition


def _extension_urls(node: Any) -> Iterator[str]:
    """The url of every extension that is not a sub-extension (sub-extensions are named by their parent's definition)."""
    if isinstance(node, dict):
        for ext in node.get("extension") or []:
            if isinstance(ext, dict) and "://" in str(ext.get("url")):
                yield ext["url"]
        for key, value in node.items():
            if key != "extension":
                yield from _extension_urls(value)
    elif isinstance(node, list):
        for item in node:
            yield from _extension_urls(item)


def _published_consents() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, form_document in example_forms().items():
        form = parse_form(form_document)
        yield f"r4 {name}", form_to_r4(form)
        yield f"r5 {name}", form_to_r5(form)
    for path in R4_FIXTURES + R5_FIXTURES:
        yield path.name, _load(path)


def test_every_extension_the_mappings_write_has_a_structure_definition():
    seen: set[str] = set()
    for label, consent in _published_consents():
        for url in _extension_urls(consent):
            sd = artefacts().structure_definitions.get(url)
            assert sd is not None and sd["type"] == "Extension", f"{label}: extension {url} has no StructureDefinition"
            fixed = next(e["fixedUri"] for e in sd["differential"]["element"] if e["id"] == "Extension.url")
            assert fixed == url
            seen.add(url)
    assert {EXT_RECORDED_AT, EXT_DO_NOT_SHARE, codes.EXT_RECORDED_BY} <= seen


def test_extensions_used_only_in_r5_are_r5_structure_definitions():
    for url in (EXT_RECORDED_AT, EXT_DO_NOT_SHARE):
        sd = artefacts().structure_definitions[url]
        assert (sd["fhirVersion"], sd["context"]) == ("5.0.0", [{"type": "element", "expression": "Consent"}])


# --------------------------------------------------------------------------- every R5 rule has a failing example


ATTENDANCE = codes.INFORMATION_TYPES.to_coding("attendance")
OVRTPS = {"system": codes.V3_ACT_REASON, "code": "OVRTPS"}

# The R5 base fixture: extension[0] recorded-by, [1] recorded-at, [2] decision-basis, [3] competence, [4] exceptions
# explained, [5] do-not-share (dad); provision[0] mum, [1] gp, [2] THREAT, [3] HLEGAL; contained[3] mum, [4] gp;
# category[0] LOINC, [1] IDSCL, [2] patient-privacy.
R5_MUTATIONS: dict[str, tuple[Callable[[dict], None], str, str]] = {
    "casus-2": (_set("provision.0.actor.0.role.coding.0.code", "PRCP"), "Consent.provision[0]", "invariant"),
    "casus-5": (_drop("provision.3"), "Consent", "invariant"),
    "casus-6": (_set("subject.identifier.value", "943476591"), "Consent.subject", "invariant"),
    "casus-6|modulus-11": (
        _both(_set("subject.identifier.value", BAD_CHECK_DIGIT), _set("contained.0.identifier.0.value", BAD_CHECK_DIGIT)),
        "Consent.subject.identifier.value",
        "value",
    ),
    "casus-7": (_set("grantor", [{"reference": "#mum"}]), "Consent", "invariant"),
    "casus-8": (_drop("extension.3"), "Consent", "invariant"),
    "casus-9": (_set("extension.5.extension.0.valueReference.reference", "#mum"), "Consent", "invariant"),
    "casus-10": (_set("date", "2026-11-21"), "Consent", "invariant"),
    "casus-11": (_drop("provision.0.purpose.1"), "Consent.provision[0]", "invariant"),
    "casus-12": (_append("provision.2.purpose", OVRTPS), "Consent.provision[2]", "invariant"),
    "Consent.meta|min": (_drop("meta"), "Consent.meta", "required"),
    "Consent.meta.profile|min": (_drop("meta.profile"), "Consent.meta.profile", "required"),
    "Consent.extension|min": (_keep("extension", 0, 1, 2), "Consent.extension", "required"),
    "Consent.extension:recordedBy|min": (_drop("extension.0"), _ext(codes.EXT_RECORDED_BY), "required"),
    "Consent.extension:recordedBy|max": (_duplicate("extension", 0), _ext(codes.EXT_RECORDED_BY), "structure"),
    "Consent.extension:recordedAt|min": (_drop("extension.1"), _ext(EXT_RECORDED_AT), "required"),
    "Consent.extension:recordedAt|max": (_duplicate("extension", 1), _ext(EXT_RECORDED_AT), "structure"),
    "Consent.extension:decisionBasis|min": (_drop("extension.2"), _ext(codes.EXT_DECISION_BASIS), "required"),
    "Consent.extension:decisionBasis|max": (_duplicate("extension", 2), _ext(codes.EXT_DECISION_BASIS), "structure"),
    "Consent.extension:competenceAssessment|max": (_duplicate("extension", 3), _ext(codes.EXT_COMPETENCE), "structure"),
    "Consent.extension:exceptionsExplained|min": (_drop("extension.4"), _ext(codes.EXT_EXCEPTIONS_EXPLAINED), "required"),
    "Consent.extension:exceptionsExplained|max": (_duplicate("extension", 4), _ext(codes.EXT_EXCEPTIONS_EXPLAINED), "structure"),
    "Consent.identifier|min": (_drop("identifier"), "Consent.identifier", "required"),
    "Consent.identifier|max": (_append("identifier", {"system": "urn:example:other", "value": "1"}), "Consent.identifier", "structure"),
    "Consent.identifier.system|min": (_drop("identifier.0.system"), "Consent.identifier[0].system", "required"),
    "Consent.identifier.system|fixed": (_set("identifier.0.system", "urn:example:other"), "Consent.identifier[0].system", "value"),
    "Consent.identifier.value|min": (_drop("identifier.0.value"), "Consent.identifier[0].value", "required"),
    "Consent.status|binding": (_set("status", "unknown"), "Consent.status", "code-invalid"),
    "Consent.category|min": (_keep("category", 0, 1), "Consent.category", "required"),
    "Consent.category:patientConsent|min": (_set("category.0", OTHER_CATEGORY), "Consent.category", "required"),
    "Consent.category:patientConsent|max": (_duplicate("category", 0), "Consent.category", "structure"),
    "Consent.category:informationDisclosure|min": (_set("category.1", OTHER_CATEGORY), "Consent.category", "required"),
    "Consent.category:informationDisclosure|max": (_duplicate("category", 1), "Consent.category", "structure"),
    "Consent.category:patientPrivacy|min": (_set("category.2", OTHER_CATEGORY), "Consent.category", "required"),
    "Consent.category:patientPrivacy|max": (_duplicate("category", 2), "Consent.category", "structure"),
    "Consent.subject|min": (_drop("subject"), "Consent.subject", "required"),
    "Consent.subject|target": (_set("subject.reference", "#mum"), "Consent.subject", "value"),
    "Consent.subject.identifier|min": (_drop("subject.identifier"), "Consent.subject.identifier", "required"),
    "Consent.subject.identifier.system|min": (_drop("subject.identifier.system"), "Consent.subject.identifier.system", "required"),
    "Consent.subject.identifier.system|fixed": (_set("subject.identifier.system", "urn:example:other"), "Consent.subject.identifier.system", "value"),
    "Consent.subject.identifier.value|min": (_drop("subject.identifier.value"), "Consent.subject.identifier.value", "required"),
    "Consent.date|min": (_drop("date"), "Consent.date", "required"),
    "Consent.grantor|min": (_drop("grantor"), "Consent.grantor", "required"),
    "Consent.grantor|max": (_duplicate("grantor"), "Consent.grantor", "structure"),
    "Consent.grantor|target": (_set("grantor.0.reference", "#recorded-by"), "Consent.grantor[0]", "value"),
    "Consent.controller|min": (_drop("controller"), "Consent.controller", "required"),
    "Consent.controller|max": (_duplicate("controller"), "Consent.controller", "structure"),
    "Consent.controller|pattern": (_set("controller.0.identifier.value", "RT2"), "Consent.controller[0]", "value"),
    "Consent.policyBasis|min": (_drop("policyBasis"), "Consent.policyBasis", "required"),
    "Consent.policyBasis.url|min": (_set("policyBasis", {"reference": {"display": "a policy"}}), "Consent.policyBasis.url", "required"),
    "Consent.policyBasis.url|fixed": (_set("policyBasis.url", "https://example.org/other-policy"), "Consent.policyBasis.url", "value"),
    "Consent.decision|min": (_drop("decision"), "Consent.decision", "required"),
    "Consent.decision|fixed": (_set("decision", "permit"), "Consent.decision", "value"),
    "Consent.provision|min": (_keep("provision", 0), "Consent.provision", "required"),
    "Consent.provision.actor|max": (_duplicate("provision.0.actor"), "Consent.provision[0].actor", "structure"),
    "Consent.provision.actor.role|min": (_drop("provision.0.actor.0.role"), "Consent.provision[0].actor[0].role", "required"),
    "Consent.provision.actor.role|pattern": (_set("provision.0.actor.0.role.coding.0.code", "PRCP"), "Consent.provision[0].actor[0].role", "value"),
    "Consent.provision.actor.reference|min": (_drop("provision.0.actor.0.reference"), "Consent.provision[0].actor[0].reference", "required"),
    "Consent.provision.actor.reference|target": (
        _set("provision.0.actor.0.reference.reference", "#recorded-by"),
        "Consent.provision[0].actor[0].reference",
        "value",
    ),
    "Consent.provision.action|min": (_drop("provision.0.action"), "Consent.provision[0].action", "required"),
    "Consent.provision.action|max": (_duplicate("provision.0.action"), "Consent.provision[0].action", "structure"),
    "Consent.provision.action|pattern": (_set("provision.0.action.0.coding.0.code", "access"), "Consent.provision[0].action[0]", "value"),
    "Consent.provision.purpose|min": (_drop("provision.2.purpose"), "Consent.provision[2].purpose", "required"),
    "Consent.provision.code|binding": (_set("provision.0.code.0.coding.0.code", "bank-details"), "Consent.provision[0].code[0]", "code-invalid"),
    "Consent.provision.provision|max": (
        _set("provision.0.provision", [{"action": [{"coding": [codes.ACTION_CODING]}]}]),
        "Consent.provision[0].provision",
        "structure",
    ),
}


def test_every_r5_profile_rule_has_a_failing_example():
    assert sorted(R5_MUTATIONS) == sorted(rule_ids(PROFILE_CONSENT_R5))


def _reported(issues: list[Issue], rule_id: str, expression: str, code: str) -> list[Issue]:
    prefix = rule_id.split("|modulus")[0]
    return [i for i in issues if i.expression == expression and i.code == code and i.diagnostics.startswith(prefix)]


@pytest.mark.parametrize("rule_id", sorted(R5_MUTATIONS))
def test_breaking_one_r5_rule_reports_it_at_its_element(rule_id):
    mutate, expression, code = R5_MUTATIONS[rule_id]
    consent = _load(R5_BASE)
    mutate(consent)
    issues = validate_consent(consent, "r5", profile=PROFILE_CONSENT_R5)
    matching = _reported(issues, rule_id, expression, code)
    assert matching, f"expected {code} at {expression} for {rule_id}; got {[(i.code, i.expression, i.diagnostics[:60]) for i in issues]}"
    assert all(i.severity == "error" for i in matching)


# --------------------------------------------------------------------------- the broken copies the shape forbids


def _r5_errors(mutate: Callable[[dict], None]) -> list[Issue]:
    consent = _load(R5_BASE)
    mutate(consent)
    return _profile_errors(consent, "r5")


def test_nested_r5_provision_is_invalid_as_nesting_and_held_to_the_provision_rules():
    issues = _r5_errors(_set("provision.1.provision", [{"action": [{"coding": [codes.ACTION_CODING]}]}]))
    assert sorted((i.expression, i.diagnostics.split(":")[0]) for i in issues) == [
        ("Consent.provision[1].provision", "Consent.provision.provision|max"),
        ("Consent.provision[1].provision[0]", "casus-12"),
        ("Consent.provision[1].provision[0].purpose", "Consent.provision.purpose|min"),
    ]


def test_r5_permit_to_a_person_without_purpose_is_invalid_for_its_purposes():
    issues = _r5_errors(_drop("provision.1.purpose"))
    assert {i.diagnostics.split(":")[0] for i in issues} == {"Consent.provision.purpose|min", "casus-11"}
    assert {i.expression for i in issues} == {"Consent.provision[1]", "Consent.provision[1].purpose"}


def test_r5_unknown_information_type_is_invalid_at_its_code():
    issues = _r5_errors(_set("provision.1.code.0.coding.0.code", "bank-details"))
    assert [(i.expression, i.code) for i in issues] == [("Consent.provision[1].code[0]", "code-invalid")]


def test_r5_exception_still_carrying_ovrtps_is_invalid():
    issues = _r5_errors(_append("provision.2.purpose", OVRTPS))
    assert [(i.expression, i.diagnostics.split(":")[0]) for i in issues] == [("Consent.provision[2]", "casus-12")]


def test_r4_unknown_information_type_is_invalid_at_its_code():
    consent = _load(R4_BASE)
    consent["provision"]["provision"][0]["code"][1]["coding"][0]["code"] = "bank-details"
    issues = _profile_errors(consent, "r4")
    assert [(i.expression, i.code) for i in issues] == [("Consent.provision.provision[0].code[1]", "code-invalid")]


# --------------------------------------------------------------------------- the do-not-share and recorded-at extensions


def _dns_errors(mutate: Callable[[dict], None]) -> list[tuple[str, str]]:
    return [(i.expression, i.code) for i in _r5_errors(mutate) if not i.diagnostics.startswith("casus-")]


def test_do_not_share_with_a_period_is_valid():
    assert _r5_errors(_append("extension.5.extension", {"url": "period", "valuePeriod": {"start": "2026-11-20"}})) == []


def test_do_not_share_without_a_recipient_names_the_missing_sub_extension():
    assert ("Consent.extension[5].extension('recipient')", "required") in _dns_errors(
        _set("extension.5.extension", [{"url": "period", "valuePeriod": {"start": "2026-11-20"}}])
    )


def test_do_not_share_recipient_must_be_a_contained_person():
    assert ("Consent.extension[5].extension[0].valueReference", "value") in _dns_errors(
        _set("extension.5.extension.0.valueReference.reference", "#recorded-by")
    )


def test_do_not_share_period_must_be_a_period():
    assert ("Consent.extension[5].extension[1].valueDateTime", "structure") in _dns_errors(
        _append("extension.5.extension", {"url": "period", "valueDateTime": "2026-11-20T10:00:00Z"})
    )


def test_do_not_share_rejects_an_unknown_sub_extension():
    assert ("Consent.extension[5].extension[1]", "structure") in _dns_errors(
        _append("extension.5.extension", {"url": "reason", "valueString": "family conflict"})
    )


def test_recorded_at_must_be_a_date_time():
    assert ("Consent.extension[1].valueDate", "structure") in _dns_errors(
        lambda c: c["extension"].__setitem__(1, {"url": EXT_RECORDED_AT, "valueDate": "2026-11-20"})
    )


# --------------------------------------------------------------------------- contained people: role bindings


CONTAINED_CASES = {
    # case -> (path to change, new value or None to drop it, expected expression, expected code)
    "related-person-role-outside-the-value-set": (
        "contained.3.relationship.0.coding.0.code",
        "UNCLE",
        "Consent.contained[3].relationship[0]",
        "code-invalid",
    ),
    "related-person-without-relationship": ("contained.3.relationship", None, "Consent.contained[3].relationship", "required"),
    "practitioner-role-code-outside-the-value-set": ("contained.4.code.0.coding.0.code", "plumber", "Consent.contained[4].code[0]", "code-invalid"),
    "practitioner-role-without-code": ("contained.4.code", None, "Consent.contained[4].code", "required"),
}


@pytest.mark.parametrize("version", ["r4", "r5"])
@pytest.mark.parametrize("case", sorted(CONTAINED_CASES))
def test_contained_person_role_is_checked_at_its_element(version, case):
    path, value, expression, code = CONTAINED_CASES[case]
    consent = _load(R4_BASE if version == "r4" else R5_BASE)
    (_drop(path) if value is None else _set(path, value))(consent)
    issues = _profile_errors(consent, version)
    assert any(i.expression == expression and i.code == code for i in issues), [(i.expression, i.code) for i in issues]


def test_contained_profiles_of_both_versions_bind_the_person_role_value_set():
    bound = {}
    for sd in artefacts().structure_definitions.values():
        if sd["type"] in ("RelatedPerson", "PractitionerRole"):
            element = next(e for e in sd["differential"]["element"] if "binding" in e)
            bound[(sd["type"], sd["fhirVersion"])] = element["binding"]
    assert set(bound) == {(t, v) for t in ("RelatedPerson", "PractitionerRole") for v in ("4.0.1", "5.0.0")}
    assert all(b == {"strength": "required", "valueSet": f"{codes.CASUS_BASE}/ValueSet/casus-person-role"} for b in bound.values())


def test_fixtures_are_the_example_forms_people_in_form_order():
    """The hand-made Consents say what the example forms say (so they are the shape, not an invention)."""
    for path in R5_FIXTURES:
        form = parse_form(_load(EXAMPLES_DIR / f"form-{path.stem.removeprefix('Consent-r5-')}.json"))
        consent = _load(path)
        shared = [p.id for p in form.people if p.sharing == "share"]
        refused = [p.id for p in form.people if p.sharing == "do-not-share"]
        assert [p["actor"][0]["reference"]["reference"][1:] for p in consent["provision"] if "actor" in p] == shared
        assert [e["extension"][0]["valueReference"]["reference"][1:] for e in consent["extension"] if e["url"] == EXT_DO_NOT_SHARE] == refused
    for path in R4_FIXTURES:
        form = parse_form(_load(EXAMPLES_DIR / f"form-{path.stem.removeprefix('Consent-r4-')}.json"))
        people = [p for p in _load(path)["provision"]["provision"] if "actor" in p]
        assert [(p["actor"][0]["reference"]["reference"][1:], p["type"]) for p in people] == [
            (p.id, codes.SHARING_R4.row(p.sharing).code) for p in form.people
        ]
