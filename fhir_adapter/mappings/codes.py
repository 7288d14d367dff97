"""Declarative code tables: CASUS form value <-> FHIR Coding.

Each table is written once as rows; ``to_coding`` and ``from_coding`` are both
derived from those rows, so the two directions cannot drift apart.  The
code tables in docs/integration-engineers.md are generated from these same rows
(``python scripts/update_doc_tables.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

CASUS_BASE = "https://fhir.cpft.nhs.uk/casus"
CS_INFORMATION_TYPE = f"{CASUS_BASE}/CodeSystem/casus-information-type"
CS_PERSON_ROLE = f"{CASUS_BASE}/CodeSystem/casus-person-role"
CS_DECISION_BASIS = f"{CASUS_BASE}/CodeSystem/casus-decision-basis"
ID_CONSENT_FORM = f"{CASUS_BASE}/Id/consent-form"
ID_LOCAL_PATIENT = f"{CASUS_BASE}/Id/local-patient-id"
ID_PERSON = f"{CASUS_BASE}/Id/form-person"
POLICY_URI = f"{CASUS_BASE}/policy/casus-confidentiality"
PROFILE_CONSENT = f"{CASUS_BASE}/StructureDefinition/casus-consent"
EXT_RECORDED_BY = f"{CASUS_BASE}/StructureDefinition/casus-recorded-by"
EXT_DECISION_BASIS = f"{CASUS_BASE}/StructureDefinition/casus-decision-basis"
EXT_COMPETENCE = f"{CASUS_BASE}/StructureDefinition/casus-competence-assessment"
EXT_EXCEPTIONS_EXPLAINED = f"{CASUS_BASE}/StructureDefinition/casus-exceptions-explained"

NHS_NUMBER = "https://fhir.nhs.uk/Id/nhs-number"
ODS_ORGANIZATION = "https://fhir.nhs.uk/Id/ods-organization-code"
TRUST_ODS_CODE = "RT1"
TRUST_NAME = "Cambridgeshire and Peterborough NHS Foundation Trust"

LOINC = "http://loinc.org"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
V3_ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
V3_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
V3_CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_ACTION = "http://terminology.hl7.org/CodeSystem/consentaction"

SCOPE_CODING = {"system": CONSENT_SCOPE, "code": "patient-privacy", "display": "Privacy Consent"}
CATEGORY_CODINGS = (
    {"system": LOINC, "code": "59284-0", "display": "Patient Consent"},
    {"system": V3_ACT_CODE, "code": "IDSCL", "display": "information disclosure"},
)
ACTION_CODING = {"system": CONSENT_ACTION, "code": "disclose", "display": "Disclose"}
RECIPIENT_ROLE_CODING = {"system": V3_PARTICIPATION, "code": "IRCP", "display": "information recipient"}
SECURITY_LABELS = (
    {"system": V3_CONFIDENTIALITY, "code": "R", "display": "restricted"},
    {"system": V3_ACT_CODE, "code": "ETH", "display": "substance abuse information sensitivity"},
    {"system": V3_ACT_CODE, "code": "ADOL", "display": "adolescent information sensitivity"},
)


@dataclass(frozen=True)
class Row:
    value: str  # the CASUS form's value
    system: str
    code: str
    display: str
    kind: str = ""  # free qualifier used by some tables (e.g. family / professional)

    def coding(self) -> dict[str, str]:
        return {"system": self.system, "code": self.code, "display": self.display}


class CodeTable:
    """One declarative table; both directions come from the same rows."""

    def __init__(self, name: str, rows: Iterable[Row]) -> None:
        self.name = name
        self.rows: tuple[Row, ...] = tuple(rows)
        self._by_value = {r.value: r for r in self.rows}
        self._by_coding = {(r.system, r.code): r for r in self.rows}
        if len(self._by_value) != len(self.rows) or len(self._by_coding) != len(self.rows):
            raise ValueError(f"code table {name} is not one-to-one")

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)

    def values(self) -> tuple[str, ...]:
        return tuple(self._by_value)

    def row(self, value: str) -> Row:
        return self._by_value[value]

    def to_coding(self, value: str) -> dict[str, str]:
        return self._by_value[value].coding()

    def from_coding(self, coding: dict[str, Any]) -> str | None:
        """The form value for a coding, matching on system and code only (display is for humans)."""
        row = self._by_coding.get((coding.get("system"), coding.get("code")))
        return row.value if row else None

    def first_match(self, codings: Iterable[dict[str, Any]]) -> str | None:
        return next((v for v in map(self.from_coding, codings) if v is not None), None)


INFORMATION_TYPES = CodeTable("information type", [
    Row("attendance", CS_INFORMATION_TYPE, "attendance", "Attendance"),
    Row("engagement-progress", CS_INFORMATION_TYPE, "engagement-progress", "Engagement and progress"),
    Row("substance-use", CS_INFORMATION_TYPE, "substance-use", "Substance use details"),
    Row("treatment-plan", CS_INFORMATION_TYPE, "treatment-plan", "Treatment plan"),
    Row("risk-safety", CS_INFORMATION_TYPE, "risk-safety", "Risk and safety"),
    Row("medication", CS_INFORMATION_TYPE, "medication", "Medication"),
    Row("health-wellbeing", CS_INFORMATION_TYPE, "health-wellbeing", "Health and wellbeing"),
    Row("family-social", CS_INFORMATION_TYPE, "family-social", "Family and social circumstances"),
    Row("correspondence", CS_INFORMATION_TYPE, "correspondence", "Correspondence"),
])

# kind "family" -> contained RelatedPerson.relationship; "professional" -> contained PractitionerRole.code
PERSON_ROLES = CodeTable("person role", [
    Row("mother", V3_ROLE_CODE, "MTH", "mother", "family"),
    Row("father", V3_ROLE_CODE, "FTH", "father", "family"),
    Row("parent", V3_ROLE_CODE, "PRN", "parent", "family"),
    Row("step-parent", V3_ROLE_CODE, "STPPRN", "step parent", "family"),
    Row("foster-parent", V3_ROLE_CODE, "PRNFOST", "foster parent", "family"),
    Row("grandparent", V3_ROLE_CODE, "GRPRN", "grandparent", "family"),
    Row("guardian", V3_ROLE_CODE, "GUARD", "guardian", "family"),
    Row("sibling", V3_ROLE_CODE, "SIB", "sibling", "family"),
    Row("other-family", V3_ROLE_CODE, "FAMMEMB", "family member", "family"),
    Row("friend", V3_ROLE_CODE, "FRND", "unrelated friend", "family"),
    Row("carer", CS_PERSON_ROLE, "carer", "Carer (not a family member)", "family"),
    Row("gp", CS_PERSON_ROLE, "gp", "General practitioner", "professional"),
    Row("school", CS_PERSON_ROLE, "school", "School or college staff", "professional"),
    Row("social-worker", CS_PERSON_ROLE, "social-worker", "Social worker", "professional"),
    Row("youth-justice", CS_PERSON_ROLE, "youth-justice", "Youth justice worker", "professional"),
    Row("health-professional", CS_PERSON_ROLE, "health-professional", "Other health professional", "professional"),
    Row("other-professional", CS_PERSON_ROLE, "other-professional", "Other professional or agency", "professional"),
])

DECISION_BASIS = CodeTable("decision basis", [
    Row("aged-16-17", CS_DECISION_BASIS, "aged-16-17", "Young person aged 16 or 17 decides"),
    Row("competent-under-16", CS_DECISION_BASIS, "competent-under-16",
        "Young person under 16 judged competent (Gillick) decides"),
    Row("parental-responsibility", CS_DECISION_BASIS, "parental-responsibility",
        "Person with parental responsibility decides"),
])

# The policy's exceptions: purpose-of-use codings on permit provisions. The first row per value is the
# purpose of use that identifies it; OVRTPS is carried beside THREAT as the override reason.
EXCEPTIONS = CodeTable("policy exception", [
    Row("risk-of-significant-harm", V3_ACT_REASON, "THREAT", "threat"),
    Row("court-order", V3_ACT_REASON, "HLEGAL", "legal"),
])
EXCEPTION_EXTRA_CODINGS: dict[str, tuple[dict[str, str], ...]] = {
    "risk-of-significant-harm": ({"system": V3_ACT_REASON, "code": "OVRTPS", "display": "override treatment purpose"},),
    "court-order": (),
}

SHARING_R4 = CodeTable("sharing (R4 provision.type)", [
    Row("share", "http://hl7.org/fhir/consent-provision-type", "permit", "Permit"),
    Row("do-not-share", "http://hl7.org/fhir/consent-provision-type", "deny", "Deny"),
])

STATUS_R4 = CodeTable("status (R4)", [
    Row("draft", "http://hl7.org/fhir/consent-state-codes", "draft", "Pending"),
    Row("active", "http://hl7.org/fhir/consent-state-codes", "active", "Active"),
    Row("withdrawn", "http://hl7.org/fhir/consent-state-codes", "inactive", "Inactive"),
    Row("entered-in-error", "http://hl7.org/fhir/consent-state-codes", "entered-in-error", "Entered in Error"),
])
STATUS_R5 = STATUS_R4  # R5 ConsentState keeps these four codes under the same system

IDENTIFIER_SYSTEMS = CodeTable("professional identifier", [
    Row("gmc", "https://fhir.hl7.org.uk/Id/gmc-number", "gmc", "GMC number"),
    Row("nmc", "https://fhir.hl7.org.uk/Id/nmc-number", "nmc", "NMC PIN"),
    Row("hcpc", "https://fhir.hl7.org.uk/Id/hcpc-number", "hcpc", "HCPC number"),
    Row("gphc", "https://fhir.hl7.org.uk/Id/gphc-number", "gphc", "GPhC number"),
    Row("sds-user-id", "https://fhir.nhs.uk/Id/sds-user-id", "sds-user-id", "SDS user id"),
])


def identifier_uri(alias: str) -> str:
    return IDENTIFIER_SYSTEMS.row(alias).system


def identifier_alias(uri: str) -> str | None:
    return next((r.value for r in IDENTIFIER_SYSTEMS if r.system == uri), None)


ALL_TABLES = (INFORMATION_TYPES, PERSON_ROLES, DECISION_BASIS, EXCEPTIONS, SHARING_R4, STATUS_R4, IDENTIFIER_SYSTEMS)


def markdown_tables() -> str:
    """The tables as Markdown for the integration engineers' guide, so the documentation is generated, never retyped."""
    out = []
    for table in ALL_TABLES:
        out.append(f"**{table.name}**\n\n| CASUS value | FHIR system | code | display |\n| --- | --- | --- | --- |")
        out += [f"| `{r.value}` | `{r.system}` | `{r.code}` | {r.display} |" for r in table]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown_tables())
