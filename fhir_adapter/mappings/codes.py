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
CS_RECIPIENT_ROLE = f"{CASUS_BASE}/CodeSystem/casus-recipient-role"
ID_CONSENT_FORM = f"{CASUS_BASE}/Id/consent-form"
ID_LOCAL_PATIENT = f"{CASUS_BASE}/Id/local-patient-id"
ID_PERSON = f"{CASUS_BASE}/Id/form-person"
POLICY_URI = f"{CASUS_BASE}/policy/casus-confidentiality"
PROFILE_CONSENT = f"{CASUS_BASE}/StructureDefinition/casus-consent"
PROFILE_CONSENT_R5 = f"{CASUS_BASE}/StructureDefinition/casus-consent-r5"
EXT_RECORDED_BY = f"{CASUS_BASE}/StructureDefinition/casus-recorded-by"
EXT_DECISION_BASIS = f"{CASUS_BASE}/StructureDefinition/casus-decision-basis"
EXT_COMPETENCE = f"{CASUS_BASE}/StructureDefinition/casus-competence-assessment"
EXT_EXCEPTIONS_EXPLAINED = f"{CASUS_BASE}/StructureDefinition/casus-exceptions-explained"
EXT_RECORDED_AT = f"{CASUS_BASE}/StructureDefinition/casus-recorded-at"
EXT_DO_NOT_SHARE = f"{CASUS_BASE}/StructureDefinition/casus-do-not-share"

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
    {"system": LOINC, "code": "59284-0", "display": "Consent Document"},
    {"system": V3_ACT_CODE, "code": "IDSCL", "display": "information disclosure"},
)
ACTION_CODING = {"system": CONSENT_ACTION, "code": "disclose", "display": "Disclose"}
# R4 Consent.policyRule: opt-in, so a spec reader knows nothing is disclosed unless a provision permits it.
POLICY_RULE_CODING = {"system": V3_ACT_CODE, "code": "OPTIN", "display": "opt-in"}
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
        self._by_coding: dict[tuple[str | None, str | None], Row] = {(r.system, r.code): r for r in self.rows}
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


INFORMATION_TYPES = CodeTable(
    "information type",
    [
        Row("attendance", CS_INFORMATION_TYPE, "attendance", "Attendance"),
        Row("engagement-progress", CS_INFORMATION_TYPE, "engagement-progress", "Engagement and progress"),
        Row("substance-use", CS_INFORMATION_TYPE, "substance-use", "Substance use details"),
        Row("treatment-plan", CS_INFORMATION_TYPE, "treatment-plan", "Treatment plan"),
        Row("risk-safety", CS_INFORMATION_TYPE, "risk-safety", "Risk and safety"),
        Row("medication", CS_INFORMATION_TYPE, "medication", "Medication"),
        Row("health-wellbeing", CS_INFORMATION_TYPE, "health-wellbeing", "Health and wellbeing"),
        Row("family-social", CS_INFORMATION_TYPE, "family-social", "Family and social circumstances"),
        Row("correspondence", CS_INFORMATION_TYPE, "correspondence", "Correspondence"),
    ],
)

# kind "family" -> contained RelatedPerson.relationship; "professional" -> contained PractitionerRole.code
PERSON_ROLES = CodeTable(
    "person role",
    [
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
    ],
)

# Recipients only a policy exception reaches: bodies never on a form that the law may require CASUS to tell (no v3
# RoleCode names a court, the police or a local authority's children's social care, so they are CASUS codes).
EXCEPTION_ONLY_RECIPIENTS = CodeTable(
    "exception-only recipient role",
    [
        Row("court", CS_RECIPIENT_ROLE, "court", "Court (under a court order)"),
        Row("police", CS_RECIPIENT_ROLE, "police", "Police"),
        Row("childrens-social-care", CS_RECIPIENT_ROLE, "childrens-social-care", "Children's social care (local authority)"),
    ],
)
#: Every role a recipient may be named by: the form's roles, then those only a policy exception reaches.
EXCEPTION_RECIPIENT_ROLES = CodeTable("exception recipient role", [*PERSON_ROLES, *EXCEPTION_ONLY_RECIPIENTS])

# Role families: a general role covers these narrower form roles, following v3 RoleCode's is-a hierarchy limited to the
# roles a form records (MTH, FTH, STPPRN and PRNFOST are each a PRN; PRN, GRPRN (via EXT) and SIB are each a FAMMEMB).
# Guardian (GUARD) and friend (FRND) are not under FAMMEMB, and carer is a CASUS role outside the family, so no family
# covers them.  A role covers itself; a role not listed covers only itself.
ROLE_FAMILIES: dict[str, tuple[str, ...]] = {
    "parent": ("mother", "father", "step-parent", "foster-parent"),
    "other-family": ("parent", "mother", "father", "step-parent", "foster-parent", "grandparent", "sibling"),
}


def roles_covered_by(role: str) -> frozenset[str]:
    """The form roles a recipient named by ``role`` stands for: itself and its family (``ROLE_FAMILIES``)."""
    return frozenset((role, *ROLE_FAMILIES.get(role, ())))


DECISION_BASIS = CodeTable(
    "decision basis",
    [
        Row("aged-16-17", CS_DECISION_BASIS, "aged-16-17", "Young person aged 16 or 17 decides"),
        Row("competent-under-16", CS_DECISION_BASIS, "competent-under-16", "Young person under 16 judged competent (Gillick) decides"),
        Row("parental-responsibility", CS_DECISION_BASIS, "parental-responsibility", "Person with parental responsibility decides"),
    ],
)

# Purposes of use a young person's choice covers: care by the people who support them.  Every person provision
# lists all four (a purpose list means "any of these"), and the decision engine permits a choice for exactly these,
# so what a spec reader reads and what the engine answers come from the same rows.  Displays are HL7's.
CARE_PURPOSES = CodeTable(
    "care purpose (v3-ActReason)",
    [
        Row("TREAT", V3_ACT_REASON, "TREAT", "treatment"),
        Row("ETREAT", V3_ACT_REASON, "ETREAT", "Emergency Treatment"),
        Row("COC", V3_ACT_REASON, "COC", "coordination of care"),
        Row("CAREMGT", V3_ACT_REASON, "CAREMGT", "care management"),
    ],
)

# The policy's exceptions: a permit provision whose only purpose of use names the exception.  No other code sits
# beside it, because a spec reader would permit any purpose listed there.
EXCEPTIONS = CodeTable(
    "policy exception",
    [
        Row("risk-of-significant-harm", V3_ACT_REASON, "THREAT", "threat"),
        Row("court-order", V3_ACT_REASON, "HLEGAL", "legal"),
    ],
)
# Codings that Consents written by mapping version 1 carried beside an exception's code.  Read, never written.
LEGACY_EXCEPTION_CODINGS: dict[str, tuple[dict[str, str], ...]] = {
    "risk-of-significant-harm": ({"system": V3_ACT_REASON, "code": "OVRTPS", "display": "third party safety override"},),
    "court-order": (),
}

SHARING_R4 = CodeTable(
    "sharing (R4 provision.type)",
    [
        Row("share", "http://hl7.org/fhir/consent-provision-type", "permit", "Permit"),
        Row("do-not-share", "http://hl7.org/fhir/consent-provision-type", "deny", "Deny"),
    ],
)

STATUS_R4 = CodeTable(
    "status (R4)",
    [
        Row("draft", "http://hl7.org/fhir/consent-state-codes", "draft", "Pending"),
        Row("active", "http://hl7.org/fhir/consent-state-codes", "active", "Active"),
        Row("withdrawn", "http://hl7.org/fhir/consent-state-codes", "inactive", "Inactive"),
        Row("entered-in-error", "http://hl7.org/fhir/consent-state-codes", "entered-in-error", "Entered in Error"),
    ],
)
STATUS_R5 = STATUS_R4  # R5 ConsentState keeps these four codes under the same system

IDENTIFIER_SYSTEMS = CodeTable(
    "professional identifier",
    [
        Row("gmc", "https://fhir.hl7.org.uk/Id/gmc-number", "gmc", "GMC number"),
        Row("nmc", "https://fhir.hl7.org.uk/Id/nmc-number", "nmc", "NMC PIN"),
        Row("hcpc", "https://fhir.hl7.org.uk/Id/hcpc-number", "hcpc", "HCPC number"),
        Row("gphc", "https://fhir.hl7.org.uk/Id/gphc-number", "gphc", "GPhC number"),
        Row("sds-user-id", "https://fhir.nhs.uk/Id/sds-user-id", "sds-user-id", "SDS user id"),
    ],
)


def care_purpose_codings() -> list[dict[str, str]]:
    """The four care purposes, in table order, as the purpose of every person provision."""
    return [r.coding() for r in CARE_PURPOSES]


def identifier_uri(alias: str) -> str:
    return IDENTIFIER_SYSTEMS.row(alias).system


def identifier_alias(uri: str) -> str | None:
    return next((r.value for r in IDENTIFIER_SYSTEMS if r.system == uri), None)


ALL_TABLES = (
    INFORMATION_TYPES,
    PERSON_ROLES,
    EXCEPTION_ONLY_RECIPIENTS,
    DECISION_BASIS,
    CARE_PURPOSES,
    EXCEPTIONS,
    SHARING_R4,
    STATUS_R4,
    IDENTIFIER_SYSTEMS,
)


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
