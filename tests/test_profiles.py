"""The CASUS profile artefacts: current, parseable, consistent with the code tables, and every rule enforced."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fhir.resources import get_fhir_model_class as r5_model_class
from fhir.resources.R4B import get_fhir_model_class

from fhir_adapter import profile_artifacts
from fhir_adapter.mappings import codes
from fhir_adapter.validation import artefacts, rule_ids, validate_consent

PROFILES = Path(profile_artifacts.PROFILES_DIR)
ARTEFACT_FILES = sorted(p for p in PROFILES.glob("*.json") if p.name.split("-", 1)[0] in ("StructureDefinition", "CodeSystem", "ValueSet"))
EXAMPLE_FILES = sorted((PROFILES / "examples").glob("Consent-*.json"))
BASE_EXAMPLE = PROFILES / "examples" / "Consent-casus-example-competent-under-16.json"


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _errors(issues: list) -> list:
    return [i for i in issues if i.severity in ("error", "fatal")]


# --------------------------------------------------------------------------- artefacts


def test_generated_artefacts_are_current():
    assert profile_artifacts.stale_files() == [], "run: python -m fhir_adapter.profile_artifacts --write"
    assert profile_artifacts.orphan_examples() == []


def test_check_entry_point_passes_on_the_committed_artefacts(capsys):
    assert profile_artifacts.main(["--check"]) == 0


def test_profiles_hold_every_kind_of_artefact():
    kinds = {p.name.split("-", 1)[0] for p in ARTEFACT_FILES}
    assert kinds == {"StructureDefinition", "CodeSystem", "ValueSet"}
    assert len(EXAMPLE_FILES) >= 4


@pytest.mark.parametrize("path", ARTEFACT_FILES + EXAMPLE_FILES, ids=lambda p: p.name)
def test_artefact_parses_with_fhir_resources_of_its_fhir_version(path):
    resource = _load(path)
    model_class = r5_model_class if resource.get("fhirVersion") == "5.0.0" else get_fhir_model_class
    model_class(resource["resourceType"]).model_validate(resource)


@pytest.mark.parametrize("path", ARTEFACT_FILES, ids=lambda p: p.name)
def test_artefact_file_is_named_for_its_type_and_id_under_the_casus_base(path):
    resource = _load(path)
    assert path.name == f"{resource['resourceType']}-{resource['id']}.json"
    assert resource["url"] == f"{codes.CASUS_BASE}/{resource['resourceType']}/{resource['id']}"


R5_ONLY = {"casus-consent-r5", "casus-related-person-r5", "casus-practitioner-role-r5", "casus-recorded-at", "casus-do-not-share"}


def test_structure_definitions_are_constraints_on_r4_except_the_r5_only_ones():
    for sd in artefacts().structure_definitions.values():
        expected = "5.0.0" if sd["id"] in R5_ONLY else "4.0.1"
        assert (sd["id"], sd["fhirVersion"], sd["derivation"]) == (sd["id"], expected, "constraint")
        assert sd["differential"]["element"]


def test_consent_profile_is_the_url_the_mapping_claims():
    assert codes.PROFILE_CONSENT in artefacts().structure_definitions
    assert artefacts().structure_definitions[codes.PROFILE_CONSENT]["baseDefinition"] == "http://hl7.org/fhir/StructureDefinition/Consent"


def test_extension_profiles_are_the_urls_the_mapping_writes():
    for url in (codes.EXT_RECORDED_BY, codes.EXT_DECISION_BASIS, codes.EXT_COMPETENCE, codes.EXT_EXCEPTIONS_EXPLAINED):
        sd = artefacts().structure_definitions[url]
        assert sd["type"] == "Extension"
        fixed_url = next(e["fixedUri"] for e in sd["differential"]["element"] if e["id"] == "Extension.url")
        assert fixed_url == url


def _element(element_id: str) -> dict[str, Any]:
    sd = artefacts().structure_definitions[codes.PROFILE_CONSENT]
    return next(e for e in sd["differential"]["element"] if e["id"] == element_id)


def test_profile_fixed_values_are_the_code_table_values():
    """The hand-authored StructureDefinition says what codes.py says (so the profile and the mapping agree)."""
    assert _element("Consent.identifier.system")["fixedUri"] == codes.ID_CONSENT_FORM
    assert _element("Consent.patient.identifier.system")["fixedUri"] == codes.NHS_NUMBER
    assert _element("Consent.policy.uri")["fixedUri"] == codes.POLICY_URI
    assert _element("Consent.scope")["patternCodeableConcept"]["coding"][0]["code"] == codes.SCOPE_CODING["code"]
    categories = [_element(f"Consent.category:{s}")["patternCodeableConcept"]["coding"][0] for s in ("patientConsent", "informationDisclosure")]
    assert [(c["system"], c["code"]) for c in categories] == [(c["system"], c["code"]) for c in codes.CATEGORY_CODINGS]
    assert _element("Consent.organization")["patternReference"]["identifier"] == {"system": codes.ODS_ORGANIZATION, "value": codes.TRUST_ODS_CODE}


def test_status_value_set_holds_exactly_the_codes_the_mapping_uses():
    vs = _load(PROFILES / "ValueSet-casus-consent-status.json")
    assert [c["code"] for c in vs["compose"]["include"][0]["concept"]] == [r.code for r in codes.STATUS_R4]


def test_person_role_value_set_includes_the_v3_role_codes_and_the_casus_code_system():
    vs = _load(PROFILES / "ValueSet-casus-person-role.json")
    includes = {i["system"]: i for i in vs["compose"]["include"]}
    assert {c["code"] for c in includes[codes.V3_ROLE_CODE]["concept"]} == {r.code for r in codes.PERSON_ROLES if r.system == codes.V3_ROLE_CODE}
    assert "concept" not in includes[codes.CS_PERSON_ROLE]


def test_code_systems_hold_only_their_own_rows():
    cs = _load(PROFILES / "CodeSystem-casus-person-role.json")
    assert [c["code"] for c in cs["concept"]] == [r.code for r in codes.PERSON_ROLES if r.system == codes.CS_PERSON_ROLE]
    assert cs["count"] == len(cs["concept"])


def test_drifted_code_system_is_reported_stale(tmp_path, monkeypatch):
    monkeypatch.setattr(profile_artifacts, "PROFILES_DIR", tmp_path)
    monkeypatch.setattr(profile_artifacts, "EXAMPLES_DIR", tmp_path / "examples")
    profile_artifacts.write()
    target = tmp_path / "CodeSystem-casus-information-type.json"
    target.write_text(target.read_text(encoding="utf-8").replace('"Attendance"', '"Attendence"'), encoding="utf-8")
    assert profile_artifacts.stale_files() == [target]
    assert profile_artifacts.main(["--check"]) == 1


# --------------------------------------------------------------------------- examples


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_validates_without_errors(path):
    assert _errors(validate_consent(_load(path), "r4")) == []


def test_examples_cover_the_four_decision_scenarios():
    by_name = {p.stem.removeprefix("Consent-casus-example-"): _load(p) for p in EXAMPLE_FILES}
    bases = {name: next(e["valueCoding"]["code"] for e in c["extension"] if e["url"] == codes.EXT_DECISION_BASIS) for name, c in by_name.items()}
    assert {"competent-under-16", "aged-16-17", "parental-responsibility"} <= set(bases.values())
    assert any(c["status"] == "inactive" for c in by_name.values())
    mixed = by_name["competent-under-16"]["provision"]["provision"]
    assert {p.get("type") for p in mixed if "actor" in p} == {"permit", "deny"}


# --------------------------------------------------------------------------- every rule has a failing example


def _get(c: dict, path: str) -> Any:
    """The node at a dotted path ("provision.provision.0.type"); digits index lists."""
    node: Any = c
    for part in path.split(".") if path else ():
        node = node[int(part)] if part.isdigit() else node[part]
    return node


def _parent_and_key(c: dict, path: str) -> tuple[Any, Any]:
    parent, _, last = path.rpartition(".")
    return _get(c, parent), int(last) if last.isdigit() else last


def _drop(path: str) -> Callable[[dict], None]:
    def mutate(c: dict) -> None:
        node, key = _parent_and_key(c, path)
        del node[key]

    return mutate


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def mutate(c: dict) -> None:
        node, key = _parent_and_key(c, path)
        node[key] = value

    return mutate


def _duplicate(path: str, index: int = 0) -> Callable[[dict], None]:
    return lambda c: _get(c, path).append(copy.deepcopy(_get(c, path)[index]))


def _append(path: str, value: Any) -> Callable[[dict], None]:
    return lambda c: _get(c, path).append(value)


def _keep(path: str, *indexes: int) -> Callable[[dict], None]:
    def mutate(c: dict) -> None:
        _set(path, [c_item for n, c_item in enumerate(_get(c, path)) if n in indexes])(c)

    return mutate


def _both(*mutations: Callable[[dict], None]) -> Callable[[dict], None]:
    def mutate(c: dict) -> None:
        for m in mutations:
            m(c)

    return mutate


def _ext(url: str) -> str:
    return f"Consent.extension('{url}')"


OTHER_CATEGORY = {"coding": [{"system": "http://loinc.org", "code": "57016-8"}]}
BAD_CHECK_DIGIT = "9434765918"
ATTENDANCE = codes.INFORMATION_TYPES.to_coding("attendance")

# The base example's layout: extension[0] recorded-by, [1] decision-basis, [2] competence, [3] exceptions-explained;
# provision.provision[0] mum (permit), [1] gp (permit), [2] dad (deny), [3] THREAT, [4] HLEGAL.
MUTATIONS: dict[str, tuple[Callable[[dict], None], str, str]] = {
    "casus-1": (_drop("patient"), "Consent", "invariant"),
    "casus-2": (_set("provision.provision.0.actor.0.role.coding.0.code", "PRCP"), "Consent.provision", "invariant"),
    "casus-3": (_set("provision.provision.2.provision", [{"type": "permit", "code": [{"coding": [ATTENDANCE]}]}]), "Consent.provision", "invariant"),
    "casus-4": (_set("provision.provision.3.type", "deny"), "Consent.provision", "invariant"),
    "casus-5": (_drop("provision.provision.4"), "Consent", "invariant"),
    "casus-6": (_set("patient.identifier.value", "943476591"), "Consent.patient", "invariant"),
    "casus-6|modulus-11": (
        _both(_set("patient.identifier.value", BAD_CHECK_DIGIT), _set("contained.0.identifier.0.value", BAD_CHECK_DIGIT)),
        "Consent.patient.identifier.value",
        "value",
    ),
    "casus-7": (_set("performer", [{"reference": "#mum"}]), "Consent", "invariant"),
    "casus-8": (_drop("extension.2"), "Consent", "invariant"),
    "casus-13": (_set("provision.type", "deny"), "Consent", "invariant"),
    "casus-14": (_drop("provision.provision.0.type"), "Consent", "invariant"),
    "Consent.extension|min": (_keep("extension", 0, 1), "Consent.extension", "required"),
    "Consent.extension:recordedBy|min": (_drop("extension.0"), _ext(codes.EXT_RECORDED_BY), "required"),
    "Consent.extension:recordedBy|max": (_duplicate("extension", 0), _ext(codes.EXT_RECORDED_BY), "structure"),
    "Consent.extension:decisionBasis|min": (_drop("extension.1"), _ext(codes.EXT_DECISION_BASIS), "required"),
    "Consent.extension:decisionBasis|max": (_duplicate("extension", 1), _ext(codes.EXT_DECISION_BASIS), "structure"),
    "Consent.extension:competenceAssessment|max": (_duplicate("extension", 2), _ext(codes.EXT_COMPETENCE), "structure"),
    "Consent.extension:exceptionsExplained|min": (_drop("extension.3"), _ext(codes.EXT_EXCEPTIONS_EXPLAINED), "required"),
    "Consent.extension:exceptionsExplained|max": (_duplicate("extension", 3), _ext(codes.EXT_EXCEPTIONS_EXPLAINED), "structure"),
    "Consent.identifier|min": (_drop("identifier"), "Consent.identifier", "required"),
    "Consent.identifier|max": (_append("identifier", {"system": "urn:example:other", "value": "1"}), "Consent.identifier", "structure"),
    "Consent.identifier.system|min": (_drop("identifier.0.system"), "Consent.identifier[0].system", "required"),
    "Consent.identifier.system|fixed": (_set("identifier.0.system", "urn:example:other"), "Consent.identifier[0].system", "value"),
    "Consent.identifier.value|min": (_drop("identifier.0.value"), "Consent.identifier[0].value", "required"),
    "Consent.status|binding": (_set("status", "proposed"), "Consent.status", "code-invalid"),
    "Consent.scope|pattern": (_set("scope.coding.0.code", "research"), "Consent.scope", "value"),
    "Consent.category|min": (_keep("category", 0), "Consent.category", "required"),
    "Consent.category:patientConsent|min": (_set("category.0", OTHER_CATEGORY), "Consent.category", "required"),
    "Consent.category:patientConsent|max": (_duplicate("category", 0), "Consent.category", "structure"),
    "Consent.category:informationDisclosure|min": (_set("category.1", OTHER_CATEGORY), "Consent.category", "required"),
    "Consent.category:informationDisclosure|max": (_duplicate("category", 1), "Consent.category", "structure"),
    "Consent.patient|min": (_drop("patient"), "Consent.patient", "required"),
    "Consent.patient.identifier|min": (_drop("patient.identifier"), "Consent.patient.identifier", "required"),
    "Consent.patient.identifier.system|min": (_drop("patient.identifier.system"), "Consent.patient.identifier.system", "required"),
    "Consent.patient.identifier.system|fixed": (_set("patient.identifier.system", "urn:example:other"), "Consent.patient.identifier.system", "value"),
    "Consent.patient.identifier.value|min": (_drop("patient.identifier.value"), "Consent.patient.identifier.value", "required"),
    "Consent.dateTime|min": (_drop("dateTime"), "Consent.dateTime", "required"),
    "Consent.performer|min": (_drop("performer"), "Consent.performer", "required"),
    "Consent.performer|max": (_duplicate("performer"), "Consent.performer", "structure"),
    "Consent.performer|target": (_set("performer.0.reference", "#recorded-by"), "Consent.performer[0]", "value"),
    "Consent.organization|min": (_drop("organization"), "Consent.organization", "required"),
    "Consent.organization|max": (_duplicate("organization"), "Consent.organization", "structure"),
    "Consent.organization|pattern": (_set("organization.0.identifier.value", "RT2"), "Consent.organization[0]", "value"),
    "Consent.policy|min": (_drop("policy"), "Consent.policy", "required"),
    "Consent.policy|max": (_append("policy", {"uri": "https://example.org/other-policy"}), "Consent.policy", "structure"),
    "Consent.policy.uri|min": (_set("policy", [{"authority": "https://example.org/authority"}]), "Consent.policy[0].uri", "required"),
    "Consent.policy.uri|fixed": (_set("policy.0.uri", "https://example.org/other-policy"), "Consent.policy[0].uri", "value"),
    "Consent.policyRule|min": (_drop("policyRule"), "Consent.policyRule", "required"),
    "Consent.policyRule|pattern": (_set("policyRule.coding.0.code", "OPTOUT"), "Consent.policyRule", "value"),
    "Consent.provision|min": (_drop("provision"), "Consent.provision", "required"),
    "Consent.provision.code|binding": (
        _set("provision.provision.0.code", [{"coding": [{**ATTENDANCE, "code": "bank-details"}]}]),
        "Consent.provision.provision[0].code[0]",
        "code-invalid",
    ),
}


def test_every_profile_rule_has_a_failing_example():
    assert sorted(MUTATIONS) == sorted(rule_ids())


@pytest.mark.parametrize("rule_id", sorted(MUTATIONS))
def test_breaking_one_rule_reports_it_at_its_element(rule_id):
    mutate, expression, code = MUTATIONS[rule_id]
    consent = _load(BASE_EXAMPLE)
    mutate(consent)
    issues = validate_consent(consent, "r4")
    rule_prefix = rule_id.split("|modulus")[0] if "modulus" in rule_id else rule_id
    matching = [i for i in issues if i.expression == expression and i.code == code and i.diagnostics.startswith(rule_prefix)]
    assert matching, f"expected {code} at {expression} for {rule_id}; got {[(i.code, i.expression, i.diagnostics[:60]) for i in issues]}"
    assert all(i.severity == "error" for i in matching)
    assert issues[0].diagnostics.startswith("not a CASUS consent")


# --------------------------------------------------------------------------- the extension profiles' own rules


def _base_with(mutate: Callable[[dict], None]) -> list:
    consent = _load(BASE_EXAMPLE)
    mutate(consent)
    return validate_consent(consent, "r4")


def _has(issues: list, expression: str, code: str) -> bool:
    return any(i.expression == expression and i.code == code and i.severity == "error" for i in issues)


def test_decision_basis_outside_its_value_set_is_code_invalid():
    issues = _base_with(_set("extension.1.valueCoding.code", "aged-18-plus"))
    assert _has(issues, "Consent.extension[1].valueCoding", "code-invalid")


def test_recorded_by_with_the_wrong_value_type_is_a_structure_error():
    issues = _base_with(lambda c: c["extension"][0].update({"valueString": "Jo"}) or c["extension"][0].pop("valueReference"))
    assert _has(issues, "Consent.extension[0].valueString", "structure")


def test_recorded_by_must_reference_a_practitioner():
    issues = _base_with(_set("extension.0.valueReference.reference", "#mum"))
    assert _has(issues, "Consent.extension[0].valueReference", "value")


def test_competence_assessment_without_a_date_names_the_missing_sub_extension():
    issues = _base_with(_keep("extension.2.extension", 0))
    assert _has(issues, "Consent.extension[2].extension('date')", "required")


def test_exceptions_explained_rejects_an_unknown_sub_extension():
    issues = _base_with(_append("extension.3.extension", {"url": "told-parents", "valueBoolean": True}))
    assert _has(issues, "Consent.extension[3].extension[2]", "structure")


# --------------------------------------------------------------------------- rules on Consent.provision hold at every depth

# A nested provision is defined as "#Consent.provision" (contentReference), so the HL7 validator applies what the
# profile says of Consent.provision and its children to every nested provision; the adapter does the same.
BANK_DETAILS = [{"coding": [{**ATTENDANCE, "code": "bank-details"}]}]


def test_a_code_outside_the_information_types_is_reported_at_any_provision_depth():
    issues = _base_with(_set("provision.provision.0.provision", [{"type": "permit", "code": BANK_DETAILS}]))
    assert _has(issues, "Consent.provision.provision[0].provision[0].code[0]", "code-invalid")


def test_an_invariant_on_the_root_provision_is_evaluated_on_each_nested_provision_too():
    nested_exception = {"type": "deny", "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "THREAT"}]}
    issues = _base_with(_set("provision.provision.0.provision", [{"type": "permit", "provision": [nested_exception]}]))
    assert any(i.expression == "Consent.provision.provision[0]" and i.diagnostics.startswith("casus-4:") for i in _errors(issues))
