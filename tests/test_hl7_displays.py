"""Every HL7 (and LOINC) code CASUS writes carries the display its code system gives it.

The table below was checked code by code against the code systems themselves:
http://terminology.hl7.org/CodeSystem/v3-ActReason, http://terminology.hl7.org/CodeSystem/v3-ActCode,
http://terminology.hl7.org/CodeSystem/v3-RoleCode, http://terminology.hl7.org/CodeSystem/v3-ParticipationType,
http://terminology.hl7.org/CodeSystem/v3-Confidentiality, http://terminology.hl7.org/CodeSystem/consentscope,
http://terminology.hl7.org/CodeSystem/consentaction and http://loinc.org (whose long common name for 59284-0 is
"Consent Document").  A reader's validator compares displays with these, so a display of our own invention is a
warning on every Consent we publish.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fhir_adapter.form import parse_form
from fhir_adapter.mappings import codes
from fhir_adapter.mappings.r4 import form_to_r4
from fhir_adapter.mappings.r5 import form_to_r5
from fhir_adapter.profile_artifacts import example_forms

ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_ACTION = "http://terminology.hl7.org/CodeSystem/consentaction"
LOINC = "http://loinc.org"

HL7_DISPLAYS: dict[tuple[str, str], str] = {
    (ACT_REASON, "TREAT"): "treatment",
    (ACT_REASON, "ETREAT"): "Emergency Treatment",
    (ACT_REASON, "COC"): "coordination of care",
    (ACT_REASON, "CAREMGT"): "care management",
    (ACT_REASON, "THREAT"): "threat",
    (ACT_REASON, "HLEGAL"): "legal",
    (ACT_REASON, "OVRTPS"): "third party safety override",
    (ACT_CODE, "OPTIN"): "opt-in",
    (ACT_CODE, "IDSCL"): "information disclosure",
    (ACT_CODE, "ETH"): "substance abuse information sensitivity",
    (ACT_CODE, "ADOL"): "adolescent information sensitivity",
    (ROLE_CODE, "MTH"): "mother",
    (ROLE_CODE, "FTH"): "father",
    (ROLE_CODE, "PRN"): "parent",
    (ROLE_CODE, "STPPRN"): "step parent",
    (ROLE_CODE, "PRNFOST"): "foster parent",
    (ROLE_CODE, "GRPRN"): "grandparent",
    (ROLE_CODE, "GUARD"): "guardian",
    (ROLE_CODE, "SIB"): "sibling",
    (ROLE_CODE, "FAMMEMB"): "family member",
    (ROLE_CODE, "FRND"): "unrelated friend",
    (PARTICIPATION, "IRCP"): "information recipient",
    (CONFIDENTIALITY, "R"): "restricted",
    (CONSENT_SCOPE, "patient-privacy"): "Privacy Consent",
    (CONSENT_ACTION, "disclose"): "Disclose",
    (LOINC, "59284-0"): "Consent Document",
}
EXTERNAL_SYSTEMS = {system for system, _ in HL7_DISPLAYS}
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "new-shape"


def _codings(node: Any) -> Iterator[dict[str, Any]]:
    """Every Coding-shaped object (system + code) anywhere in a resource."""
    if isinstance(node, dict):
        if isinstance(node.get("system"), str) and isinstance(node.get("code"), str):
            yield node
        for value in node.values():
            yield from _codings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _codings(item)


def _code_table_codings() -> Iterator[dict[str, Any]]:
    yield codes.SCOPE_CODING
    yield codes.ACTION_CODING
    yield codes.RECIPIENT_ROLE_CODING
    yield from codes.CATEGORY_CODINGS
    yield from codes.SECURITY_LABELS
    for extra in codes.LEGACY_EXCEPTION_CODINGS.values():
        yield from extra
    for table in codes.ALL_TABLES:
        yield from (row.coding() for row in table)


def _published_codings() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, form_document in example_forms().items():
        form = parse_form(form_document)
        for version, consent in (("r4", form_to_r4(form)), ("r5", form_to_r5(form))):
            yield from ((f"{version} {name}", c) for c in _codings(consent))
    for path in sorted(FIXTURES.glob("*.json")):
        yield from ((path.name, c) for c in _codings(json.loads(path.read_text(encoding="utf-8"))))


def test_every_hl7_coding_in_the_code_tables_has_the_hl7_display():
    checked = [c for c in _code_table_codings() if c["system"] in EXTERNAL_SYSTEMS]
    assert checked
    for coding in checked:
        assert coding.get("display") == HL7_DISPLAYS.get((coding["system"], coding["code"])), coding


@pytest.mark.parametrize("where, coding", list(_published_codings()), ids=lambda v: v if isinstance(v, str) else v.get("code"))
def test_every_hl7_coding_the_mappings_write_has_the_hl7_display(where, coding):
    if coding["system"] in EXTERNAL_SYSTEMS:
        assert (coding["system"], coding["code"]) in HL7_DISPLAYS, f"{where}: {coding} is not in the verified table"
        assert coding.get("display") == HL7_DISPLAYS[(coding["system"], coding["code"])], where


def test_the_care_purposes_and_exceptions_written_are_in_the_verified_table():
    """The purposes of use the published shape writes (four care purposes, THREAT, HLEGAL) all have a verified display."""
    written = {(c["system"], c["code"]) for where, c in _published_codings() if c["system"] == ACT_REASON}
    assert {(ACT_REASON, code) for code in ("TREAT", "ETREAT", "COC", "CAREMGT", "THREAT", "HLEGAL")} <= written
