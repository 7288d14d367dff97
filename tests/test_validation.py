"""validate_consent / validate_text: bad input always gives issues, never a traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import fhirpathpy
import pytest
from fhirpathpy.models import models as fhirpath_models

from fhir_adapter import validation
from fhir_adapter.fhir_structure import MAX_DEPTH, MAX_DOCUMENT_BYTES
from fhir_adapter.form import PROFILES_DIR, parse_form
from fhir_adapter.mappings import codes
from fhir_adapter.mappings.r5 import form_to_r5
from fhir_adapter.outcome import Issue
from fhir_adapter.validation import validate_consent, validate_text

EXAMPLES = PROFILES_DIR / "examples"
NEW_SHAPE = Path(__file__).resolve().parent / "fixtures" / "new-shape"


def _example() -> dict[str, Any]:
    return json.loads((EXAMPLES / "Consent-casus-example-competent-under-16.json").read_text(encoding="utf-8"))


def _errors(issues: list[Issue]) -> list[Issue]:
    return [i for i in issues if i.severity in ("error", "fatal")]


def _at(issues: list[Issue], expression: str) -> list[Issue]:
    return [i for i in _errors(issues) if i.expression == expression]


def test_valid_casus_consent_has_no_issues():
    assert validate_consent(_example()) == []


def test_validate_text_accepts_bytes_of_a_valid_consent():
    assert validate_text(json.dumps(_example()).encode("utf-8")) == []


def test_wrong_primitive_type_is_reported_at_the_element():
    consent = _example()
    consent["status"] = 5
    assert _at(validate_consent(consent), "Consent.status")


def test_object_where_a_list_belongs_is_reported_at_the_element():
    consent = _example()
    consent["category"] = consent["category"][0]
    assert _at(validate_consent(consent), "Consent.category")


def test_string_where_an_object_belongs_is_reported_at_the_element():
    consent = _example()
    consent["provision"] = "deny"
    assert _at(validate_consent(consent), "Consent.provision")


def test_unknown_status_code_is_code_invalid():
    consent = _example()
    consent["status"] = "frozen"
    assert any(i.code == "code-invalid" for i in _at(validate_consent(consent), "Consent.status"))


def test_status_valid_in_base_fhir_but_not_casus_is_code_invalid():
    consent = _example()
    consent["status"] = "rejected"
    assert any(i.code == "code-invalid" for i in _at(validate_consent(consent), "Consent.status"))


def test_unknown_information_type_is_code_invalid_at_its_provision():
    consent = _example()
    consent["provision"]["provision"][0]["code"][0]["coding"][0]["code"] = "bank-details"
    issues = _at(validate_consent(consent), "Consent.provision.provision[0].code[0]")
    assert any(i.code == "code-invalid" for i in issues)


def test_invalid_nhs_number_is_reported_once_at_the_patient_identifier():
    consent = _example()
    consent["patient"]["identifier"]["value"] = "9434765918"
    consent["contained"][0]["identifier"][0]["value"] = "9434765918"
    issues = _at(validate_consent(consent), "Consent.patient.identifier.value")
    assert len(issues) == 1
    assert "Modulus 11" in issues[0].diagnostics


def test_truncated_json_is_a_structure_error():
    text = json.dumps(_example())[:-20]
    issues = validate_text(text)
    assert [i.code for i in issues] == ["structure"]
    assert "not valid JSON" in issues[0].diagnostics


def test_non_utf8_bytes_are_a_structure_error():
    issues = validate_text(b'{"resourceType": "Consent", "status": "\xff\xfe"}')
    assert [i.code for i in issues] == ["structure"]
    assert "UTF-8" in issues[0].diagnostics


def test_document_over_the_size_limit_is_refused_before_parsing():
    consent = _example()
    consent["text"] = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">' + "x" * MAX_DOCUMENT_BYTES + "</div>"}
    issues = validate_text(json.dumps(consent))
    assert [i.code for i in issues] == ["too-long"]


def _nested(depth: int) -> dict[str, Any]:
    provision: dict[str, Any] = {"type": "deny"}
    for _ in range(depth):
        provision = {"type": "deny", "provision": [provision]}
    return {"resourceType": "Consent", "status": "active", "provision": provision}


def test_deeply_nested_json_text_is_a_structure_error():
    text = '{"resourceType": "Consent", "provision": ' + '{"provision": [' * 5000 + "{}" + "]}" * 5000 + "}"
    issues = validate_text(text)
    assert [i.code for i in issues] == ["structure"]


def test_deeply_nested_document_object_is_a_structure_error():
    issues = validate_consent(_nested(5000))
    assert [i.code for i in issues] == ["structure"]
    assert str(MAX_DEPTH) in issues[0].diagnostics


def test_json_array_instead_of_an_object_is_a_structure_error():
    issues = validate_text(json.dumps([_example()]))
    assert [(i.code, i.severity) for i in issues] == [("structure", "error")]


def test_other_resource_type_is_a_structure_error_and_not_checked_further():
    issues = validate_consent({"resourceType": "Patient", "id": "x"})
    assert [(i.code, i.expression) for i in issues] == [("structure", "resourceType")]


def test_valid_base_consent_that_is_not_casus_gets_a_headline_error_with_reasons():
    consent = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": codes.CONSENT_SCOPE, "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": codes.LOINC, "code": "59284-0"}]}],
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
    }
    issues = validate_consent(consent)
    headline = issues[0]
    assert (headline.severity, headline.expression) == ("error", "Consent")
    assert headline.diagnostics.startswith("not a CASUS consent: ")
    assert "Consent.patient: required by the CASUS profile" in headline.diagnostics
    assert len(_errors(issues)) > 1


def test_base_invariant_ppc_1_is_enforced():
    consent = _example()
    del consent["policy"]
    del consent["policyRule"]
    assert any(i.diagnostics.startswith("ppc-1") for i in _at(validate_consent(consent), "Consent"))


def test_requested_profile_is_checked_even_when_not_claimed():
    consent = _example()
    del consent["meta"]
    del consent["identifier"]
    asked = validate_consent(consent, profile=codes.PROFILE_CONSENT)
    unasked = validate_consent(consent)
    assert any(i.diagnostics.startswith("Consent.identifier|min") for i in asked)
    assert not any(i.diagnostics.startswith("Consent.identifier|min") for i in unasked)
    assert _at(unasked, "Consent.identifier")  # the form mapping still rejects it


def test_unknown_profile_is_not_supported():
    issues = validate_consent(_example(), profile="https://example.org/StructureDefinition/other")
    assert any(i.code == "not-supported" and i.expression == "Consent.meta.profile" for i in issues)


def test_form_rule_failures_are_reported_as_fhirpath_not_form_paths():
    consent = _example()
    consent["contained"][0]["birthDate"] = "2005-01-01"  # an adult on the recording date
    issues = validate_consent(consent)
    assert _errors(issues)
    assert not [i for i in issues if i.expression.startswith("$")]


def test_same_problem_from_two_stages_is_reported_once():
    consent = _example()
    del consent["scope"]
    issues = [i for i in validate_consent(consent) if i.expression == "Consent.scope"]
    assert len(issues) == len({(i.severity, i.code) for i in issues})


def test_mapped_r5_consent_validates_without_errors():
    form = parse_form(json.loads((EXAMPLES / "form-parental-responsibility.json").read_text(encoding="utf-8")))
    assert _errors(validate_consent(form_to_r5(form), "r5")) == []


def test_r5_without_the_r5_mapping_reports_information_not_a_crash(monkeypatch):
    monkeypatch.setitem(sys.modules, "fhir_adapter.mappings.r5", None)
    issues = validate_consent({"resourceType": "Consent", "status": "active", "decision": "deny"}, "r5")
    assert any(i.severity == "information" and i.code == "not-supported" for i in issues)


def test_r5_structure_errors_are_reported():
    issues = validate_consent({"resourceType": "Consent", "status": "active", "organization": []}, "r5")
    assert _at(issues, "Consent.organization")


def test_unknown_version_is_a_programming_error():
    with pytest.raises(ValueError):
        validate_consent(_example(), "r6")  # type: ignore[arg-type]


def test_profile_artefacts_are_loaded_once():
    assert validation.artefacts() is validation.artefacts()
    assert validation.compiled(codes.PROFILE_CONSENT) is validation.compiled(codes.PROFILE_CONSENT)


def test_a_version_1_r4_consent_validates_with_a_note_that_the_version_2_profile_was_not_applied():
    legacy = json.loads((Path(__file__).parent / "fixtures" / "legacy-shape" / "r4-competent-under-16.json").read_text(encoding="utf-8"))
    issues = validate_consent(legacy, "r4")
    assert _errors(issues) == []
    assert [i.expression for i in issues if i.severity == "information"] == ["Consent.provision"]


def test_a_root_type_on_a_version_2_consent_breaks_the_profile():
    consent = _example()
    consent["provision"]["type"] = "deny"
    assert any(i.diagnostics.startswith("casus-13:") and i.code == "invariant" for i in _at(validate_consent(consent), "Consent"))


# --------------------------------------------------------------------------- plain, true wording


def test_malformed_date_time_names_the_fhir_type_and_its_format():
    consent = _example()
    consent["dateTime"] = "yesterday"
    [issue] = [i for i in _at(validate_consent(consent), "Consent.dateTime") if i.code == "value"][:1]
    assert "FHIR dateTime" in issue.diagnostics and "YYYY-MM-DD" in issue.diagnostics
    assert "regex" not in issue.diagnostics and "Value error" not in issue.diagnostics


def test_object_where_an_array_belongs_says_the_element_repeats_and_its_type():
    consent = _example()
    consent["category"] = consent["category"][0]
    diagnostics = [i.diagnostics for i in _at(validate_consent(consent), "Consent.category")]
    assert "must be a JSON array, because the element repeats: FHIR CodeableConcept" in diagnostics


def test_malformed_contained_date_is_described_by_the_contained_resource_type():
    consent = _example()
    consent["contained"][0]["birthDate"] = "2011-13"
    diagnostics = [i.diagnostics for i in _at(validate_consent(consent), "Consent.contained[0].birthDate")]
    assert any("FHIR date," in d for d in diagnostics)


def test_unknown_contained_resource_type_is_reported_at_its_resource_type():
    consent = _example()
    consent["contained"].append({"resourceType": "Carer", "id": "x"})
    issues = _at(validate_consent(consent), f"Consent.contained[{len(consent['contained']) - 1}].resourceType")
    assert [i.code for i in issues] == ["structure"]
    assert "'Carer' is not a FHIR R4 resource type" in issues[0].diagnostics


def test_consent_without_a_decision_basis_is_told_that_once_and_its_grantor_not_judged():
    consent = _example()
    del consent["meta"]
    consent["extension"] = [e for e in consent["extension"] if e["url"] not in (codes.EXT_DECISION_BASIS, codes.EXT_COMPETENCE)]
    consent["performer"] = [{"reference": "#mum"}]
    issues = validate_consent(consent)
    assert [i.diagnostics for i in issues if i.expression == validation.DECISION_BASIS_AT] == [validation.NO_DECISION_BASIS]
    assert not _at(issues, "Consent.performer[0]")


def test_grantor_is_still_judged_against_a_decision_basis_the_consent_has():
    consent = _example()
    del consent["meta"]
    consent["performer"] = [{"reference": "#mum"}]
    assert any("decides on this basis" in i.diagnostics for i in _at(validate_consent(consent), "Consent.performer[0]"))


def test_rule_about_an_absent_element_becomes_one_missing_element_issue():
    consent = _example()
    del consent["provision"]["provision"][0]["action"]
    issues = [i for i in validate_consent(consent) if i.expression.startswith("Consent.provision.provision[0].action")]
    assert [(i.code, i.expression) for i in issues] == [("required", "Consent.provision.provision[0].action")]


@pytest.mark.parametrize(
    "version, form_path, expected",
    [
        ("r4", "$.people[1].period", "Consent.provision.provision.where(actor.exists())[1]"),
        ("r4", "$.exceptions.provisions[0]", "Consent.provision.provision.where(actor.empty())[0]"),
        ("r5", "$.people[2]", "Consent.contained.where($this is RelatedPerson or $this is PractitionerRole)[2]"),
        ("r5", "$.exceptions.provisions[1]", "Consent.provision.where(actor.empty())[1]"),
    ],
)
def test_form_paths_find_people_and_exceptions_in_either_provision_shape(version, form_path, expected):
    assert validation.form_path_to_fhirpath(form_path, version) == expected


def test_form_people_paths_name_the_same_person_in_both_provision_shapes():
    """People carry an actor and exceptions none in the previous and the published shape alike."""
    new_shape = json.loads((NEW_SHAPE / "Consent-r4-competent-under-16.json").read_text(encoding="utf-8"))
    for consent in (_example(), new_shape):
        people = fhirpathpy.evaluate(consent, validation.form_path_to_fhirpath("$.people[2]", "r4"), {}, fhirpath_models["r4"])
        assert [p["actor"][0]["reference"]["reference"] for p in people] == ["#dad"]
