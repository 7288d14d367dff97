"""The decision engine, as a specification: one table row per rule, then focused behaviours.

Timeline of the sample young person (born 2011-03-04): the form is recorded on
2026-11-20 aged 15; they turn 16 on 2027-03-04 and 18 on 2029-03-04.  The
mother's choice runs from 2026-11-20 to 2027-05-20.  Unless a test says
otherwise a version is stored when its choice is made, and questions are
asked ``NOW``, after everything was stored.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from fhir.resources.R4B.parameters import Parameters

from fhir_adapter.decision import (
    CARE_PURPOSES,
    DecisionRequest,
    PersonChange,
    Recipient,
    StoredVersion,
    Verdict,
    decide,
    exception_provision_path,
    for_decision_only_caller,
    information_type_provision_path,
    pending_proposals,
    person_provision_path,
    proposals_to_json,
    summary,
    summary_to_json,
    to_json,
    to_parameters,
    version_in_force,
)
from fhir_adapter.form import ConsentForm, parse_form
from fhir_adapter.mappings import codes
from fhir_adapter.mappings.r4 import form_to_r4
from tests.support.facade import example_form

SAMPLE: dict[str, Any] = example_form()  # the shipped example form, profiles/examples/form-competent-under-16.json
NHS = SAMPLE["youngPerson"]["nhsNumber"]
OTHER_NHS = "4010232137"
FORM_A = SAMPLE["formId"]
FORM_B = "5d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
NAMES = (
    "Alex Example",
    "Pat Example",
    "Dr A Patel",
    "Chris Example",
    "Jo Clinician",
    "Dr Sam Assessor",
    "Riverside Surgery",
    "Ms Head",
    "Mr Tutor",
    "Alex",
    "Patel",
    "Example",
)
BIRTH_DATE = SAMPLE["youngPerson"]["birthDate"]

RECORDED = datetime(2026, 11, 20, 10, 15, tzinfo=UTC)
NOW = datetime(2029, 6, 1, 12, 0, tzinfo=UTC)
DEC_2026 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
JAN_2027 = datetime(2027, 1, 10, 9, 0, tzinfo=UTC)
FEB_2027 = datetime(2027, 2, 1, 12, 0, tzinfo=UTC)
DAY_BEFORE_16 = datetime(2027, 3, 3, 12, 0, tzinfo=UTC)
AFTER_16 = datetime(2027, 3, 10, 12, 0, tzinfo=UTC)
APRIL_2027 = datetime(2027, 4, 1, 12, 0, tzinfo=UTC)
JUNE_2027 = datetime(2027, 6, 1, 12, 0, tzinfo=UTC)
AFTER_18 = datetime(2029, 3, 10, 12, 0, tzinfo=UTC)

ROOT = "Consent.policyRule"
MUM, GP, DAD = (person_provision_path(i) for i in range(3))
EXCEPTION_OBLIGATIONS = ("record-disclosure", "inform-young-person")


# --------------------------------------------------------------------------- form builders


def doc(**changes: Any) -> dict[str, Any]:
    """A copy of the sample with top-level keys replaced."""
    out = copy.deepcopy(SAMPLE)
    out.update(copy.deepcopy(changes))
    return out


def people(*replacements: dict[str, Any], extra: tuple[dict[str, Any], ...] = ()) -> list[dict[str, Any]]:
    """The sample's people with some replaced by id, plus extra people appended."""
    by_id = {p["id"]: p for p in replacements}
    return [by_id.get(p["id"], p) for p in copy.deepcopy(SAMPLE["people"])] + list(extra)


def stored(document: dict[str, Any], version: int = 1, at: datetime = RECORDED, stored_at: datetime | None = None) -> StoredVersion:
    """A version whose choice was made ``at`` (its recorded.date) and stored ``stored_at`` (default: at once)."""
    form = parse_form({**document, "recorded": {**document["recorded"], "date": at.isoformat()}})
    return StoredVersion(form.form_id, version, form, stored_at or at)


PARENTAL = {"basis": "parental-responsibility", "personId": "mum"}
MUM_DOES_NOT_SHARE = {"id": "mum", "name": "Pat Example", "role": "mother", "sharing": "do-not-share"}
MUM_FROM_2027 = {**SAMPLE["people"][0], "period": {"start": "2027-01-01", "end": "2027-05-20"}}
SCHOOL_SHARE = {"id": "school-a", "name": "Ms Head", "role": "school", "sharing": "share", "informationTypes": ["attendance"]}
SCHOOL_NO = {"id": "school-b", "name": "Mr Tutor", "role": "school", "sharing": "do-not-share"}
SCHOOL_SHARE_TOO = {**SCHOOL_NO, "sharing": "share", "informationTypes": ["attendance", "engagement-progress"]}

ACTIVE = (stored(doc()),)
PARENTAL_CONSENT = (stored(doc(decisionMaker=PARENTAL)),)
MUM_LATER_PERIOD = (stored(doc(people=people(MUM_FROM_2027))),)
SCHOOLS_DISAGREE = (stored(doc(people=people(extra=(SCHOOL_SHARE, SCHOOL_NO)))),)
SCHOOLS_AGREE = (stored(doc(people=people(extra=(SCHOOL_SHARE, SCHOOL_SHARE_TOO)))),)
WITHDRAWN_LATER = (stored(doc()), stored(doc(status="withdrawn"), version=2, at=JAN_2027))
TWO_FORMS = (stored(doc()), stored(doc(formId=FORM_B, people=people(MUM_DOES_NOT_SHARE)), at=JAN_2027))
OTHER_PATIENT = (stored(doc(formId=FORM_B, youngPerson={**SAMPLE["youngPerson"], "nhsNumber": OTHER_NHS})),)


# role families
MUM_ONLY = (stored(doc(people=people()[:2])),)
STEP_PARENT = {"id": "step", "name": "Chris Example", "role": "step-parent", "sharing": "share", "informationTypes": ["attendance"]}
FOSTER_PARENT = {"id": "foster", "name": "Chris Example", "role": "foster-parent", "sharing": "share", "informationTypes": ["attendance"]}
GUARDIAN = {"id": "guardian", "name": "Chris Example", "role": "guardian", "sharing": "share", "informationTypes": ["attendance"]}
STEP_PARENT_ONLY = (stored(doc(people=[STEP_PARENT, SAMPLE["people"][1]])),)
FOSTER_PARENT_ONLY = (stored(doc(people=[FOSTER_PARENT, SAMPLE["people"][1]])),)
GUARDIAN_ONLY = (stored(doc(people=[GUARDIAN, SAMPLE["people"][1]])),)

# two times: when the choice was made, when it was stored
SEPT_1 = datetime(2026, 9, 1, 11, 0, tzinfo=UTC)
OCT_2026 = datetime(2026, 10, 15, 12, 0, tzinfo=UTC)
NOV_1 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
NOV_30 = datetime(2026, 11, 30, 16, 0, tzinfo=UTC)
DEC_10 = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)


def signed_on_paper(document: dict[str, Any]) -> dict[str, Any]:
    """The document as a paper form signed on 1 September: competence and explanation that day, no period on the mother."""
    out = copy.deepcopy(document)
    out["decisionMaker"]["competence"]["assessedOn"] = out["exceptions"]["explainedOn"] = SEPT_1.date().isoformat()
    for person in out["people"]:
        person.pop("period", None)
    return out


PAPER_FORM = (stored(signed_on_paper(doc()), at=SEPT_1, stored_at=NOV_30),)
OLD_PAPER_AFTER_NEW = (stored(doc()), stored(signed_on_paper(doc(people=people(MUM_DOES_NOT_SHARE))), version=2, at=SEPT_1, stored_at=NOV_30))
WITHDRAWN_SAME_CHOICE = (stored(doc()), stored(doc(status="withdrawn"), version=2, stored_at=JAN_2027))

# drafts are proposals
DRAFT_AFTER_ACTIVE = (stored(doc()), stored(doc(status="draft", people=people(MUM_DOES_NOT_SHARE)), version=2, at=JAN_2027))
DRAFT_AFTER_WITHDRAWAL = (*WITHDRAWN_LATER, stored(doc(status="draft"), version=3, at=FEB_2027))
DRAFT_THEN_AGREED = (*DRAFT_AFTER_ACTIVE, stored(doc(people=people(MUM_DOES_NOT_SHARE)), version=3, at=FEB_2027))

ALL_TYPES = codes.INFORMATION_TYPES.values()
COURT_ORDER = exception_provision_path(ACTIVE[0].form, "court-order")
RISK_OF_HARM = exception_provision_path(ACTIVE[0].form, "risk-of-significant-harm")
ODS_ELSEWHERE = {"identifier_system": codes.ODS_ORGANIZATION, "identifier_value": "X26001"}


def with_status(status: str) -> tuple[StoredVersion, ...]:
    return (stored(doc(status=status)),)


def ask(
    *types: str, purpose: str = "TREAT", at: datetime | None = DEC_2026, nhs: str = NHS, known_at: datetime | None = None, **recipient: str
) -> DecisionRequest:
    return DecisionRequest(nhs, Recipient(**recipient), tuple(types), purpose, at, known_at)


# --------------------------------------------------------------------------- the rule table


@dataclass(frozen=True)
class Case:
    versions: tuple[StoredVersion, ...]
    request: DecisionRequest
    decision: str
    basis: str
    provision: str | None
    consent: tuple[str, int] | None
    obligations: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    per_type: tuple[tuple[str, str], ...] | None = None  # None: every type asked shares the overall decision


def case(id_: str, *args: Any, **kwargs: Any) -> Any:
    return pytest.param(Case(*args, **kwargs), id=id_)


CASES = [
    # default deny and not revealing who is known
    case("no consent on file: deny by default", (), ask("attendance", role="mother"), "deny", "default", None, None),
    case(
        "unknown patient: deny by default exactly like no consent",
        ACTIVE,
        ask("attendance", role="mother", nhs=OTHER_NHS),
        "deny",
        "default",
        None,
        None,
    ),
    case(
        "time before the first version: deny by default like no consent",
        ACTIVE,
        ask("attendance", role="mother", at=datetime(2026, 11, 20, 10, 0, tzinfo=UTC)),
        "deny",
        "default",
        None,
        None,
    ),
    # only an active consent permits
    case(
        "a draft alone is a proposal, not a consent: deny like no consent",
        with_status("draft"),
        ask("attendance", role="mother"),
        "deny",
        "default",
        None,
        None,
    ),
    case("withdrawn consent permits nothing", with_status("withdrawn"), ask("attendance", role="mother"), "deny", "default", None, (FORM_A, 1)),
    case(
        "entered-in-error consent permits nothing",
        with_status("entered-in-error"),
        ask("attendance", role="mother"),
        "deny",
        "default",
        None,
        (FORM_A, 1),
    ),
    # the young person's choice, per information type
    case(
        "share person: a listed type is permitted by its nested provision",
        ACTIVE,
        ask("attendance", role="mother"),
        "permit",
        "choice",
        information_type_provision_path(0, 0),
        (FORM_A, 1),
    ),
    case(
        "share person: the second listed type is permitted by its own nested provision",
        ACTIVE,
        ask("treatment-plan", role="mother"),
        "permit",
        "choice",
        information_type_provision_path(0, 1),
        (FORM_A, 1),
    ),
    case(
        "share person: an unlisted type is denied by the person's choice",
        ACTIVE,
        ask("medication", role="mother"),
        "deny",
        "choice",
        MUM,
        (FORM_A, 1),
    ),
    case(
        "several types: permit when every type is listed",
        ACTIVE,
        ask("attendance", "treatment-plan", role="mother"),
        "permit",
        "choice",
        MUM,
        (FORM_A, 1),
    ),
    case(
        "several types: one unlisted type denies the whole request",
        ACTIVE,
        ask("attendance", "medication", role="mother"),
        "deny",
        "choice",
        MUM,
        (FORM_A, 1),
        per_type=(("attendance", "permit"), ("medication", "deny")),
    ),
    case("do-not-share person: deny by choice", ACTIVE, ask("attendance", role="father"), "deny", "choice", DAD, (FORM_A, 1)),
    # provision periods
    case("period not started: deny by default", MUM_LATER_PERIOD, ask("attendance", role="mother"), "deny", "default", ROOT, (FORM_A, 1)),
    case("period expired: deny by default", ACTIVE, ask("attendance", role="mother", at=JUNE_2027), "deny", "default", ROOT, (FORM_A, 1)),
    case(
        "period started since: permit",
        MUM_LATER_PERIOD,
        ask("attendance", role="mother", at=FEB_2027),
        "permit",
        "choice",
        information_type_provision_path(0, 0),
        (FORM_A, 1),
    ),
    # as of t
    case(
        "as of t: the earlier active version in force permits",
        WITHDRAWN_LATER,
        ask("attendance", role="mother"),
        "permit",
        "choice",
        information_type_provision_path(0, 0),
        (FORM_A, 1),
    ),
    case(
        "as of t: the later withdrawn version in force denies",
        WITHDRAWN_LATER,
        ask("attendance", role="mother", at=FEB_2027),
        "deny",
        "default",
        None,
        (FORM_A, 2),
    ),
    case(
        "newest form wins: before the second form, the first permits",
        TWO_FORMS,
        ask("attendance", role="mother"),
        "permit",
        "choice",
        information_type_provision_path(0, 0),
        (FORM_A, 1),
    ),
    case(
        "newest form wins: the second form's do-not-share denies",
        TWO_FORMS,
        ask("attendance", role="mother", at=FEB_2027),
        "deny",
        "choice",
        MUM,
        (FORM_B, 1),
    ),
    # choices take effect from when they were made; known-at answers with what was stored then
    case(
        "a paper form signed 1 September and entered 30 November answers about October",
        PAPER_FORM,
        ask("attendance", role="mother", at=OCT_2026),
        "permit",
        "choice",
        information_type_provision_path(0, 0),
        (FORM_A, 1),
    ),
    case(
        "known-at before the entry answers as we would have then",
        PAPER_FORM,
        ask("attendance", role="mother", at=OCT_2026, known_at=NOV_1),
        "deny",
        "default",
        None,
        None,
    ),
    case(
        "a paper form does not answer about the time before it was signed",
        PAPER_FORM,
        ask("attendance", role="mother", at=datetime(2026, 8, 31, 12, 0, tzinfo=UTC)),
        "deny",
        "default",
        None,
        None,
    ),
    case(
        "an older paper form entered after a newer choice does not override it",
        OLD_PAPER_AFTER_NEW,
        ask("attendance", role="mother", at=DEC_10),
        "permit",
        "choice",
        information_type_provision_path(0, 0),
        (FORM_A, 1),
    ),
    case(
        "an older paper form entered after a newer choice answers about the time between them",
        OLD_PAPER_AFTER_NEW,
        ask("attendance", role="mother", at=OCT_2026),
        "deny",
        "choice",
        MUM,
        (FORM_A, 2),
    ),
    case(
        "storage order breaks a tie: a withdrawal stored later with the same choice time decides",
        WITHDRAWN_SAME_CHOICE,
        ask("attendance", role="mother"),
        "deny",
        "default",
        None,
        (FORM_A, 2),
    ),
    case(
        "known-at before the withdrawal was stored: the active version answers",
        WITHDRAWN_LATER,
        ask("attendance", role="mother", at=FEB_2027, known_at=DEC_2026),
        "permit",
        "choice",
        information_type_provision_path(0, 0),
        (FORM_A, 1),
    ),
    # drafts are proposals
    case(
        "a draft leaves the active consent deciding",
        DRAFT_AFTER_ACTIVE,
        ask("attendance", role="mother", at=FEB_2027),
        "permit",
        "choice",
        information_type_provision_path(0, 0),
        (FORM_A, 1),
    ),
    case(
        "a draft after a withdrawal revives nothing",
        DRAFT_AFTER_WITHDRAWAL,
        ask("attendance", role="mother", at=APRIL_2027),
        "deny",
        "default",
        None,
        (FORM_A, 2),
    ),
    case(
        "an agreed proposal, made active, decides",
        DRAFT_THEN_AGREED,
        ask("attendance", role="mother", at=APRIL_2027),
        "deny",
        "choice",
        MUM,
        (FORM_A, 3),
    ),
    # recipient matching
    case(
        "two people match by role: deny beats permit",
        SCHOOLS_DISAGREE,
        ask("attendance", role="school"),
        "deny",
        "choice",
        person_provision_path(4),
        (FORM_A, 1),
    ),
    case(
        "two people match by role and both share the type: permit",
        SCHOOLS_AGREE,
        ask("attendance", role="school"),
        "permit",
        "choice",
        information_type_provision_path(3, 0),
        (FORM_A, 1),
    ),
    case(
        "two people match by role and one does not list the type: deny",
        SCHOOLS_AGREE,
        ask("engagement-progress", role="school"),
        "deny",
        "choice",
        person_provision_path(3),
        (FORM_A, 1),
    ),
    case(
        "identifier match by GMC number URI",
        ACTIVE,
        ask("medication", identifier_system="https://fhir.hl7.org.uk/Id/gmc-number", identifier_value="1234567"),
        "permit",
        "choice",
        information_type_provision_path(1, 0),
        (FORM_A, 1),
    ),
    case(
        "identifier match by GMC alias",
        ACTIVE,
        ask("medication", identifier_system="gmc", identifier_value="1234567"),
        "permit",
        "choice",
        information_type_provision_path(1, 0),
        (FORM_A, 1),
    ),
    case(
        "identifier match by ODS code URI",
        ACTIVE,
        ask("medication", identifier_system=codes.ODS_ORGANIZATION, identifier_value="D81001"),
        "permit",
        "choice",
        information_type_provision_path(1, 0),
        (FORM_A, 1),
    ),
    case(
        "identifier match by ODS code is case-insensitive under the HL7 UK URI",
        ACTIVE,
        ask("medication", identifier_system="https://fhir.hl7.org.uk/Id/ods-organization-code", identifier_value="d81001"),
        "permit",
        "choice",
        information_type_provision_path(1, 0),
        (FORM_A, 1),
    ),
    case(
        "identifier match still applies the choice: unlisted type denied",
        ACTIVE,
        ask("substance-use", identifier_system="gmc", identifier_value="1234567"),
        "deny",
        "choice",
        GP,
        (FORM_A, 1),
    ),
    case("person id match", ACTIVE, ask("medication", person_id="gp"), "permit", "choice", information_type_provision_path(1, 0), (FORM_A, 1)),
    case(
        "unknown GMC number with a matching role: deny by default (criteria narrow, never widen)",
        ACTIVE,
        ask("medication", identifier_system="gmc", identifier_value="9999999", role="gp"),
        "deny",
        "default",
        ROOT,
        (FORM_A, 1),
    ),
    case(
        "person id and role disagree: deny by default",
        ACTIVE,
        ask("attendance", person_id="mum", role="father"),
        "deny",
        "default",
        ROOT,
        (FORM_A, 1),
    ),
    case("nobody on the form matches: deny by default", ACTIVE, ask("attendance", role="school"), "deny", "default", ROOT, (FORM_A, 1)),
    # policy exceptions
    case(
        "THREAT permits despite do-not-share, with both obligations",
        ACTIVE,
        ask("attendance", role="father", purpose="THREAT"),
        "permit",
        "policy-exception",
        person_provision_path(3),
        (FORM_A, 1),
        EXCEPTION_OBLIGATIONS,
    ),
    case(
        "HLEGAL permits despite do-not-share, with both obligations",
        ACTIVE,
        ask("substance-use", role="father", purpose="HLEGAL"),
        "permit",
        "policy-exception",
        person_provision_path(4),
        (FORM_A, 1),
        EXCEPTION_OBLIGATIONS,
    ),
    case(
        "THREAT permits with no consent on file, citing the policy",
        (),
        ask("risk-safety", role="social-worker", purpose="THREAT"),
        "permit",
        "policy-exception",
        None,
        None,
        EXCEPTION_OBLIGATIONS,
    ),
    case(
        "HLEGAL permits with a withdrawn consent, citing the policy",
        with_status("withdrawn"),
        ask("substance-use", "treatment-plan", role="youth-justice", purpose="HLEGAL"),
        "permit",
        "policy-exception",
        None,
        None,
        EXCEPTION_OBLIGATIONS,
    ),
    case(
        "exception does not leak: care purpose to a do-not-share person denied",
        ACTIVE,
        ask("attendance", role="father", purpose="TREAT"),
        "deny",
        "choice",
        DAD,
        (FORM_A, 1),
    ),
    case(
        "exception does not leak: its override code OVRTPS is not an exception",
        ACTIVE,
        ask("attendance", role="father", purpose="OVRTPS"),
        "deny",
        "default",
        None,
        None,
    ),
    # exception recipients need not be on the form
    case(
        "court order: a court not on the form may receive every type under HLEGAL",
        ACTIVE,
        ask(*ALL_TYPES, role="court", purpose="HLEGAL"),
        "permit",
        "policy-exception",
        COURT_ORDER,
        (FORM_A, 1),
        EXCEPTION_OBLIGATIONS,
    ),
    case(
        "risk of harm: the police may receive under THREAT",
        ACTIVE,
        ask("risk-safety", "substance-use", role="police", purpose="THREAT"),
        "permit",
        "policy-exception",
        RISK_OF_HARM,
        (FORM_A, 1),
        EXCEPTION_OBLIGATIONS,
    ),
    case(
        "risk of harm: children's social care may receive under THREAT with no consent on file",
        (),
        ask("risk-safety", role="childrens-social-care", purpose="THREAT"),
        "permit",
        "policy-exception",
        None,
        None,
        EXCEPTION_OBLIGATIONS,
    ),
    case(
        "court order: an organisation not on the form, named by its ODS code, may receive under HLEGAL",
        ACTIVE,
        ask("treatment-plan", purpose="HLEGAL", **ODS_ELSEWHERE),
        "permit",
        "policy-exception",
        COURT_ORDER,
        (FORM_A, 1),
        EXCEPTION_OBLIGATIONS,
    ),
    case(
        "court order: a professional not on the form, named by GMC number, may receive under HLEGAL",
        ACTIVE,
        ask("medication", purpose="HLEGAL", identifier_system="gmc", identifier_value="9999999"),
        "permit",
        "policy-exception",
        COURT_ORDER,
        (FORM_A, 1),
        EXCEPTION_OBLIGATIONS,
    ),
    case("a court receives nothing for treatment", ACTIVE, ask("attendance", role="court"), "deny", "default", ROOT, (FORM_A, 1)),
    case(
        "the police receive nothing for care coordination with no consent on file",
        (),
        ask("attendance", role="police", purpose="COC"),
        "deny",
        "default",
        None,
        None,
    ),
    case(
        "children's social care receives nothing for research",
        ACTIVE,
        ask("attendance", role="childrens-social-care", purpose="HRESCH"),
        "deny",
        "default",
        None,
        None,
    ),
    case(
        "an organisation not on the form receives nothing for treatment",
        ACTIVE,
        ask("attendance", **ODS_ELSEWHERE),
        "deny",
        "default",
        ROOT,
        (FORM_A, 1),
    ),
    # role families
    case(
        "asking about a parent matches the mother and the father; the father's refusal denies",
        ACTIVE,
        ask("attendance", role="parent"),
        "deny",
        "choice",
        DAD,
        (FORM_A, 1),
    ),
    case(
        "asking about a parent with only the mother on the form: her choice permits",
        MUM_ONLY,
        ask("attendance", role="parent"),
        "permit",
        "choice",
        information_type_provision_path(0, 0),
        (FORM_A, 1),
    ),
    case(
        "asking about a parent matches a step-parent",
        STEP_PARENT_ONLY,
        ask("attendance", role="parent"),
        "permit",
        "choice",
        information_type_provision_path(0, 0),
        (FORM_A, 1),
    ),
    case(
        "asking about a parent matches a foster parent",
        FOSTER_PARENT_ONLY,
        ask("attendance", role="parent"),
        "permit",
        "choice",
        information_type_provision_path(0, 0),
        (FORM_A, 1),
    ),
    case(
        "asking about a mother does not match a step-parent", STEP_PARENT_ONLY, ask("attendance", role="mother"), "deny", "default", ROOT, (FORM_A, 1)
    ),
    case(
        "asking about a family member matches every family role; the father's refusal denies",
        ACTIVE,
        ask("attendance", role="other-family"),
        "deny",
        "choice",
        DAD,
        (FORM_A, 1),
    ),
    case("a guardian is not a family member", GUARDIAN_ONLY, ask("attendance", role="other-family"), "deny", "default", ROOT, (FORM_A, 1)),
    case("asking about a parent does not match the GP", MUM_ONLY, ask("medication", role="parent"), "deny", "choice", MUM, (FORM_A, 1)),
    # purposes
    case(
        "non-care purpose HMARKT denied despite a share choice",
        ACTIVE,
        ask("attendance", role="mother", purpose="HMARKT"),
        "deny",
        "default",
        None,
        None,
    ),
    case(
        "non-care purpose HRESCH denied despite a share choice",
        ACTIVE,
        ask("attendance", role="mother", purpose="HRESCH"),
        "deny",
        "default",
        None,
        None,
    ),
    case(
        "healthcare operations HOPERAT is not a care purpose",
        ACTIVE,
        ask("attendance", role="mother", purpose="HOPERAT"),
        "deny",
        "default",
        None,
        None,
    ),
    *[
        case(
            f"care purpose {p} is covered by a share choice",
            ACTIVE,
            ask("attendance", role="mother", purpose=p),
            "permit",
            "choice",
            information_type_provision_path(0, 0),
            (FORM_A, 1),
        )
        for p in sorted(CARE_PURPOSES)
    ],
    # ages
    case(
        "parental consent once the young person is 16: flagged for review",
        PARENTAL_CONSENT,
        ask("medication", role="gp", at=AFTER_16),
        "permit",
        "choice",
        information_type_provision_path(1, 0),
        (FORM_A, 1),
        ("review-consent",),
        ("review-due-turned-16",),
    ),
    case(
        "parental consent the day before 16: no flag",
        PARENTAL_CONSENT,
        ask("medication", role="gp", at=DAY_BEFORE_16),
        "permit",
        "choice",
        information_type_provision_path(1, 0),
        (FORM_A, 1),
    ),
    case(
        "competent under-16's own consent at 16: no flag",
        ACTIVE,
        ask("medication", role="gp", at=AFTER_16),
        "permit",
        "choice",
        information_type_provision_path(1, 0),
        (FORM_A, 1),
    ),
    case(
        "every consent once the young person is 18: flagged for review",
        ACTIVE,
        ask("medication", role="gp", at=AFTER_18),
        "permit",
        "choice",
        information_type_provision_path(1, 0),
        (FORM_A, 1),
        ("review-consent",),
        ("review-due-turned-18",),
    ),
    case(
        "parental consent at 18: both flags",
        PARENTAL_CONSENT,
        ask("medication", role="gp", at=AFTER_18),
        "permit",
        "choice",
        information_type_provision_path(1, 0),
        (FORM_A, 1),
        ("review-consent",),
        ("review-due-turned-16", "review-due-turned-18"),
    ),
    case(
        "a denial is flagged for review too",
        ACTIVE,
        ask("attendance", role="father", at=AFTER_18),
        "deny",
        "choice",
        DAD,
        (FORM_A, 1),
        ("review-consent",),
        ("review-due-turned-18",),
    ),
    case(
        "exception on a consent due for review carries the review obligation too",
        PARENTAL_CONSENT,
        ask("attendance", role="father", purpose="THREAT", at=AFTER_16),
        "permit",
        "policy-exception",
        person_provision_path(3),
        (FORM_A, 1),
        (*EXCEPTION_OBLIGATIONS, "review-consent"),
        ("review-due-turned-16",),
    ),
]


def _decide(c: Case) -> Verdict:
    return decide(c.request, c.versions, now=NOW)


@pytest.mark.parametrize("c", CASES)
def test_rule(c: Case) -> None:
    verdict = _decide(c)
    cited = (verdict.form_id, verdict.version) if verdict.form_id is not None else None
    expected_per_type = c.per_type if c.per_type is not None else tuple((t, c.decision) for t in c.request.information_types)
    assert (verdict.decision, verdict.basis, verdict.provision, cited) == (c.decision, c.basis, c.provision, c.consent)
    assert tuple(o.code for o in verdict.obligations) == c.obligations
    assert verdict.flags == c.flags
    assert verdict.per_type == expected_per_type


@pytest.mark.parametrize("c", CASES)
def test_answers_never_contain_names_nhs_numbers_or_birth_dates(c: Case) -> None:
    rendered = json.dumps([to_json(_decide(c)), to_parameters(_decide(c))])
    for secret in (*NAMES, NHS, OTHER_NHS, "943 476 5919", BIRTH_DATE, "CASUS-00123"):
        assert secret not in rendered


@pytest.mark.parametrize("c", CASES)
def test_reason_starts_with_the_answer_and_its_basis(c: Case) -> None:
    verdict = _decide(c)
    assert verdict.reason.startswith(f"{verdict.decision} ({verdict.basis.replace('-', ' ')})")


# --------------------------------------------------------------------------- not revealing who is known


def test_unknown_patient_no_consent_and_not_yet_recorded_read_identically() -> None:
    early = datetime(2026, 11, 1, tzinfo=UTC)
    answers = [
        decide(ask("attendance", role="mother"), (), now=NOW),
        decide(ask("attendance", role="mother", nhs=OTHER_NHS), ACTIVE, now=NOW),
        decide(ask("attendance", role="mother", at=early), ACTIVE, now=NOW),
    ]
    assert len({json.dumps(to_parameters(a)) for a in answers}) == 1
    assert len({json.dumps(to_json(a)) for a in answers}) == 1


def test_exception_reads_the_same_with_no_consent_and_with_an_inactive_one() -> None:
    request = ask("substance-use", role="youth-justice", purpose="HLEGAL")
    answers = [decide(request, versions, now=NOW) for versions in ((), with_status("withdrawn"), with_status("draft"), OTHER_PATIENT)]
    assert len({json.dumps(to_json(a)) for a in answers}) == 1


def test_exception_without_consent_cites_the_policy_and_says_the_law_forces_it() -> None:
    verdict = decide(ask("risk-safety", role="social-worker", purpose="THREAT"), (), now=NOW)
    assert codes.POLICY_URI in verdict.reason
    assert "law requires" in verdict.reason


def test_exception_with_active_consent_cites_the_versioned_consent_and_provision() -> None:
    verdict = decide(ask("attendance", role="father", purpose="HLEGAL"), ACTIVE, now=NOW)
    assert f"Consent/{FORM_A}/_history/1" in verdict.reason
    assert verdict.provision == exception_provision_path(ACTIVE[0].form, "court-order")
    assert verdict.provision in verdict.reason


def test_exception_obligation_tells_what_to_whom_and_consequences_unless_riskier() -> None:
    verdict = decide(ask("attendance", role="father", purpose="THREAT"), ACTIVE, now=NOW)
    inform = next(o.text for o in verdict.obligations if o.code == "inform-young-person")
    for words in ("what will be shared", "with whom", "what might happen", "increase the risk"):
        assert words in inform


def test_deny_beats_permit_is_explained_in_the_reason() -> None:
    verdict = decide(ask("attendance", role="school"), SCHOOLS_DISAGREE, now=NOW)
    assert "deny beats permit" in verdict.reason


def test_reason_names_who_chose_when_a_parent_decided() -> None:
    verdict = decide(ask("medication", role="gp"), PARENTAL_CONSENT, now=NOW)
    assert "the person with parental responsibility agreed" in verdict.reason


def test_reason_names_the_young_person_when_they_decided() -> None:
    verdict = decide(ask("medication", role="gp"), ACTIVE, now=NOW)
    assert "the young person agreed" in verdict.reason


def test_several_types_report_each_deciding_provision() -> None:
    verdict = decide(ask("attendance", "medication", role="mother"), ACTIVE, now=NOW)
    assert verdict.per_type_provisions == (("attendance", information_type_provision_path(0, 0)), ("medication", MUM))


# --------------------------------------------------------------------------- the version in force


def test_input_order_of_versions_does_not_change_the_answer() -> None:
    versions = (*TWO_FORMS, *WITHDRAWN_LATER[1:])
    request = ask("attendance", role="mother", at=FEB_2027)
    assert decide(request, versions, now=NOW) == decide(request, tuple(reversed(versions)), now=NOW)


def test_highest_version_of_a_form_recorded_by_t_is_in_force() -> None:
    v3 = stored(doc(), version=3, at=FEB_2027)
    assert version_in_force(NHS, (*WITHDRAWN_LATER, v3), JUNE_2027) is v3


def test_versions_of_other_patients_are_ignored() -> None:
    other_newer = stored(
        doc(formId=FORM_B, people=people(MUM_DOES_NOT_SHARE), youngPerson={**SAMPLE["youngPerson"], "nhsNumber": OTHER_NHS}), at=JAN_2027
    )
    verdict = decide(ask("attendance", role="mother", at=FEB_2027), (*ACTIVE, other_newer), now=NOW)
    assert (verdict.decision, verdict.form_id) == ("permit", FORM_A)


def test_nhs_number_with_spaces_is_the_same_patient() -> None:
    assert decide(ask("attendance", role="mother", nhs="943 476 5919"), ACTIVE, now=NOW).decision == "permit"


def test_no_time_given_means_now() -> None:
    request = ask("attendance", role="mother", at=None)
    assert decide(request, WITHDRAWN_LATER, now=DEC_2026).version == 1
    assert decide(request, WITHDRAWN_LATER, now=FEB_2027).version == 2


def test_period_end_is_an_inclusive_uk_calendar_day() -> None:
    last_evening_bst = datetime(2027, 5, 20, 22, 30, tzinfo=UTC)  # 23:30 on 20 May in London
    next_day_bst = datetime(2027, 5, 20, 23, 30, tzinfo=UTC)  # 00:30 on 21 May in London
    assert decide(ask("attendance", role="mother", at=last_evening_bst), ACTIVE, now=NOW).decision == "permit"
    assert decide(ask("attendance", role="mother", at=next_day_bst), ACTIVE, now=NOW).decision == "deny"


def test_any_object_with_the_version_attributes_is_accepted() -> None:
    @dataclass(frozen=True)
    class FormVersion:  # stands in for the store's row type
        form_id: str
        version: int
        form: ConsentForm
        stored_at: datetime
        etag: str

    row = FormVersion(FORM_A, 1, ACTIVE[0].form, RECORDED, 'W/"1"')
    assert decide(ask("attendance", role="mother"), [row], now=NOW).decision == "permit"


def test_a_type_asked_twice_is_answered_once() -> None:
    verdict = decide(ask("attendance", "attendance", role="mother"), ACTIVE, now=NOW)
    assert verdict.per_type == (("attendance", "permit"),)


def test_a_later_stored_paper_form_is_not_in_force_before_it_was_stored_even_about_later_times() -> None:
    assert version_in_force(NHS, PAPER_FORM, DEC_10, known_at=NOV_1) is None


def test_known_at_defaults_to_now() -> None:
    request = ask("attendance", role="mother", at=OCT_2026)
    assert decide(request, PAPER_FORM, now=NOV_1).decision == "deny"
    assert decide(request, PAPER_FORM, now=DEC_10).decision == "permit"


def test_known_at_without_a_zone_is_rejected() -> None:
    with pytest.raises(ValueError, match="known-at"):
        decide(ask("attendance", role="mother", known_at=datetime(2026, 12, 1, 12, 0)), ACTIVE, now=NOW)


# --------------------------------------------------------------------------- who was matched


@pytest.mark.parametrize(
    "request_, versions, matched",
    [
        pytest.param(ask("attendance", role="parent"), ACTIVE, ("mum", "dad"), id="a parent: the mother and the father"),
        pytest.param(ask("attendance", role="other-family"), ACTIVE, ("mum", "dad"), id="a family member: every family role"),
        pytest.param(ask("medication", role="gp"), ACTIVE, ("gp",), id="the GP alone"),
        pytest.param(ask("attendance", role="mother", at=JUNE_2027), ACTIVE, ("mum",), id="the mother outside her period"),
        pytest.param(ask("attendance", role="school"), ACTIVE, (), id="nobody"),
        pytest.param(ask("attendance", role="court", purpose="HLEGAL"), ACTIVE, (), id="an exception does not match people"),
    ],
)
def test_the_verdict_lists_the_people_matched(request_: DecisionRequest, versions: tuple[StoredVersion, ...], matched: tuple[str, ...]) -> None:
    assert decide(request_, versions, now=NOW).matched_people == matched


def test_matched_people_are_rendered_for_consent_readers() -> None:
    verdict = decide(ask("attendance", role="parent"), ACTIVE, now=NOW)
    assert to_json(verdict)["matchedPeople"] == ["mum", "dad"]
    assert [p["valueString"] for p in _param(to_parameters(verdict), "matchedPerson")] == ["mum", "dad"]


def test_the_reason_says_that_several_family_members_matched() -> None:
    verdict = decide(ask("attendance", role="parent"), ACTIVE, now=NOW)
    assert "2 people on it match the recipient (roles father, mother)" in verdict.reason


def test_a_role_only_an_exception_reaches_is_still_checked_against_the_list() -> None:
    with pytest.raises(ValueError, match="unknown recipient role 'judge'"):
        decide(ask("attendance", role="judge", purpose="HLEGAL"), ACTIVE, now=NOW)


# --------------------------------------------------------------------------- proposals


def test_a_pending_proposal_shows_what_it_would_change_per_person_and_type() -> None:
    school = {**SCHOOL_SHARE, "name": "Ms Head"}
    gp_more = {**SAMPLE["people"][1], "informationTypes": ["medication", "attendance"]}
    proposal_doc = doc(status="draft", people=[MUM_DOES_NOT_SHARE, gp_more, school])
    versions = (stored(doc()), stored(proposal_doc, version=2, at=JAN_2027))
    (proposal,) = pending_proposals(NHS, versions, at=FEB_2027)
    assert (proposal.form_id, proposal.version, proposal.in_force) == (FORM_A, 2, (FORM_A, 1))
    assert proposal.changes == (
        PersonChange(
            "mum", "mother", "changed", "share", "do-not-share", (), ("attendance", "treatment-plan"), ACTIVE[0].form.people[0].period, None
        ),
        PersonChange("gp", "gp", "changed", "share", "share", ("attendance",), ()),
        PersonChange("school-a", "school", "added", None, "share", ("attendance",), ()),
        PersonChange("dad", "father", "removed", "do-not-share", None, (), ()),
    )


def test_a_pending_proposal_leaves_the_summary_of_what_is_in_force_unchanged() -> None:
    assert summary(NHS, DRAFT_AFTER_ACTIVE, at=FEB_2027) == summary(NHS, DRAFT_AFTER_ACTIVE[:1], at=FEB_2027)


def test_an_agreed_proposal_is_no_longer_pending() -> None:
    assert pending_proposals(NHS, DRAFT_THEN_AGREED, at=APRIL_2027) == []


def test_a_proposal_with_no_consent_in_force_adds_every_person() -> None:
    (proposal,) = pending_proposals(NHS, with_status("draft"), at=DEC_2026)
    assert proposal.in_force is None
    assert [(c.person_id, c.change, c.gains) for c in proposal.changes] == [
        ("mum", "added", ("attendance", "treatment-plan")),
        ("gp", "added", ("medication",)),
        ("dad", "added", ()),
    ]


def test_a_proposal_after_a_withdrawal_is_compared_with_nothing_shared() -> None:
    (proposal,) = pending_proposals(NHS, DRAFT_AFTER_WITHDRAWAL, at=APRIL_2027)
    assert proposal.in_force == (FORM_A, 2)
    assert {c.change for c in proposal.changes} == {"added"}


def test_a_proposal_made_after_the_time_asked_is_not_shown() -> None:
    assert pending_proposals(NHS, DRAFT_AFTER_ACTIVE, at=DEC_2026) == []


def test_a_proposal_stored_after_known_at_is_not_shown() -> None:
    assert pending_proposals(NHS, DRAFT_AFTER_ACTIVE, at=FEB_2027, known_at=DEC_2026) == []


def test_proposals_of_other_patients_are_not_shown() -> None:
    assert pending_proposals(OTHER_NHS, DRAFT_AFTER_ACTIVE, at=FEB_2027) == []


def test_proposals_json_marks_them_as_proposals_and_holds_no_names() -> None:
    rendered = proposals_to_json(pending_proposals(NHS, DRAFT_AFTER_ACTIVE, at=FEB_2027))
    assert [(p["status"], p["consent"], p["inForce"]) for p in rendered] == [
        ("proposed", f"Consent/{FORM_A}/_history/2", f"Consent/{FORM_A}/_history/1")
    ]
    assert rendered[0]["changes"][0] == {
        "personId": "mum",
        "role": "mother",
        "change": "changed",
        "sharing": {"before": "share", "after": "do-not-share"},
        "wouldReceive": [],
        "wouldNoLongerReceive": ["attendance", "treatment-plan"],
        "period": {"before": {"start": "2026-11-20", "end": "2027-05-20"}, "after": None},
    }
    assert not any(name in json.dumps(rendered) for name in NAMES)


# --------------------------------------------------------------------------- callers who may only ask for decisions

REFUSED_QUESTION = ask("attendance", role="father")
NOT_ON_FORM = (stored(doc(people=people()[:2])),)


@pytest.mark.parametrize(
    "versions, request_",
    [
        pytest.param((), REFUSED_QUESTION, id="no consent on file"),
        pytest.param(ACTIVE, ask("attendance", role="father", nhs=OTHER_NHS), id="unknown patient"),
        pytest.param(NOT_ON_FORM, REFUSED_QUESTION, id="recipient not on the form"),
        pytest.param(with_status("withdrawn"), REFUSED_QUESTION, id="withdrawn consent"),
        pytest.param(with_status("draft"), REFUSED_QUESTION, id="only a draft"),
        pytest.param(ACTIVE, ask("attendance", role="father", purpose="HMARKT"), id="a purpose no choice covers"),
        pytest.param(ACTIVE, ask("attendance", role="father", at=AFTER_18), id="refused, on a consent due for review"),
        pytest.param(ACTIVE, ask("attendance", role="parent"), id="refused by one of several people matched"),
        pytest.param(MUM_LATER_PERIOD, ask("attendance", role="father", at=DEC_2026), id="refused, with another choice outside its period"),
    ],
)
def test_every_deny_reads_the_same_to_a_decision_only_caller(versions: tuple[StoredVersion, ...], request_: DecisionRequest) -> None:
    baseline = for_decision_only_caller(decide(REFUSED_QUESTION, ACTIVE, now=NOW), REFUSED_QUESTION)
    verdict = for_decision_only_caller(decide(request_, versions, now=NOW), request_)
    assert (to_json(verdict), to_parameters(verdict)) == (to_json(baseline), to_parameters(baseline))


def test_a_deny_to_a_decision_only_caller_echoes_only_the_types_asked() -> None:
    question = ask("attendance", "medication", role="gp")
    rendered = to_json(for_decision_only_caller(decide(question, ACTIVE, now=NOW), question))
    assert rendered == {
        "decision": "deny",
        "reason": rendered["reason"],
        "consent": None,
        "provision": None,
        "basis": "default",
        "obligations": [],
        "perType": [
            {"informationType": "attendance", "decision": "deny", "provision": None},
            {"informationType": "medication", "decision": "deny", "provision": None},
        ],
        "flags": [],
        "matchedPeople": [],
    }
    assert "Consent/" not in rendered["reason"]


def test_an_exception_permit_reads_the_same_to_a_decision_only_caller_with_or_without_a_consent() -> None:
    question = ask("substance-use", role="court", purpose="HLEGAL", at=AFTER_16)
    answers = [
        to_json(for_decision_only_caller(decide(question, versions, now=NOW), question))
        for versions in ((), PARENTAL_CONSENT, with_status("withdrawn"), OTHER_PATIENT)
    ]
    assert all(a == answers[0] for a in answers)
    assert [o["code"] for o in answers[0]["obligations"]] == list(EXCEPTION_OBLIGATIONS)


def test_a_choice_permit_keeps_its_obligations_for_a_decision_only_caller() -> None:
    question = ask("medication", role="gp", at=AFTER_18)
    verdict = for_decision_only_caller(decide(question, ACTIVE, now=NOW), question)
    assert (verdict.decision, verdict.basis, [o.code for o in verdict.obligations]) == ("permit", "choice", ["review-consent"])


def test_a_permit_to_a_decision_only_caller_cites_no_consent_provision_or_person() -> None:
    question = ask("attendance", role="parent", at=DEC_2026)
    verdict = for_decision_only_caller(decide(question, MUM_ONLY, now=NOW), question)
    assert (verdict.consent_reference, verdict.provision, verdict.matched_people) == (None, None, ())
    assert set(dict(verdict.per_type_provisions).values()) == {None}
    assert "Consent" not in verdict.reason and "provision[" not in verdict.reason


@pytest.mark.parametrize("c", CASES)
def test_decision_only_answers_keep_the_decision(c: Case) -> None:
    verdict = _decide(c)
    assert for_decision_only_caller(verdict, c.request).decision == verdict.decision


def test_a_deny_to_a_decision_only_caller_hides_which_types_a_consent_would_permit() -> None:
    question = ask("attendance", "medication", role="mother")
    verdict = for_decision_only_caller(decide(question, ACTIVE, now=NOW), question)
    assert verdict.per_type == (("attendance", "deny"), ("medication", "deny"))


# --------------------------------------------------------------------------- bad requests


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(ask("gossip", role="mother"), id="unknown information type"),
        pytest.param(ask(role="mother"), id="no information type"),
        pytest.param(ask("attendance", role="neighbour"), id="unknown role"),
        pytest.param(ask("attendance", identifier_system="https://example.org/id", identifier_value="1"), id="unknown identifier system"),
        pytest.param(ask("attendance", identifier_system="gmc"), id="identifier system without a value"),
        pytest.param(ask("attendance", identifier_system="gmc", identifier_value="  "), id="blank identifier value"),
        pytest.param(ask("attendance"), id="recipient without any criterion"),
        pytest.param(ask("attendance", role="mother", nhs="9434765918"), id="NHS number failing the check digit"),
        pytest.param(ask("attendance", role="mother", purpose=" "), id="blank purpose"),
        pytest.param(ask("attendance", role="mother", at=datetime(2026, 12, 1, 12, 0)), id="time without a zone"),
    ],
)
def test_a_request_that_makes_no_sense_is_rejected(request_: DecisionRequest) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        decide(request_, ACTIVE, now=NOW)


def test_unknown_type_is_rejected_even_for_an_exception_purpose() -> None:
    with pytest.raises(ValueError, match="gossip"):
        decide(ask("gossip", role="father", purpose="THREAT"), ACTIVE, now=NOW)


# --------------------------------------------------------------------------- provision paths match the R4 mapping


def _resolve(resource: dict[str, Any], path: str) -> Any:
    root, *steps = path.split(".")
    assert root == "Consent"
    node: Any = resource
    for step in steps:
        m = re.fullmatch(r"(\w+)(?:\[(\d+)\])?", step)
        assert m is not None, step
        node = node[m[1]]
        if m[2] is not None:
            node = node[int(m[2])]
    return node


def test_person_paths_point_at_each_person_as_recipient() -> None:
    form = SCHOOLS_DISAGREE[0].form
    consent = form_to_r4(form)
    for i, p in enumerate(form.people):
        assert _resolve(consent, person_provision_path(i))["actor"][0]["reference"]["reference"] == f"#{p.id}"


def test_information_type_paths_point_at_each_listed_type() -> None:
    form = ACTIVE[0].form
    consent = form_to_r4(form)
    for i, p in enumerate(form.people):
        for j, t in enumerate(p.information_types):
            coding = _resolve(consent, information_type_provision_path(i, j))["coding"][0]
            assert (coding["system"], coding["code"]) == (codes.CS_INFORMATION_TYPE, t)


@pytest.mark.parametrize("kind", codes.EXCEPTIONS.values())
def test_exception_paths_point_at_the_exception_purpose(kind: str) -> None:
    form = SCHOOLS_DISAGREE[0].form
    purposes = _resolve(form_to_r4(form), exception_provision_path(form, kind) or "")["purpose"]
    assert purposes[0]["code"] == codes.EXCEPTIONS.row(kind).code


@pytest.mark.parametrize("c", [p for p in CASES if p.values[0].provision not in (None, ROOT)])
def test_every_cited_provision_exists_in_the_cited_consent(c: Case) -> None:
    verdict = _decide(c)
    form = next(v.form for v in c.versions if (v.form_id, v.version) == (verdict.form_id, verdict.version))
    provision = _resolve(form_to_r4(form), verdict.provision or "")
    if re.search(r"\.code\[\d+\]$", verdict.provision or ""):
        assert codes.INFORMATION_TYPES.first_match(provision["coding"]) in dict(verdict.per_type)
    else:
        assert provision["type"] in ("permit", "deny")


@pytest.mark.parametrize("c", [p for p in CASES if p.values[0].provision == ROOT])
def test_the_default_cites_the_opt_in_policy_rule_of_the_cited_consent(c: Case) -> None:
    verdict = _decide(c)
    form = next(v.form for v in c.versions if (v.form_id, v.version) == (verdict.form_id, verdict.version))
    assert _resolve(form_to_r4(form), verdict.provision or "")["coding"][0]["code"] == "OPTIN"


def test_care_purposes_are_the_purposes_every_person_provision_states() -> None:
    consent = form_to_r4(ACTIVE[0].form)
    people = [p for p in consent["provision"]["provision"] if "actor" in p]
    assert people and all({c["code"] for c in p["purpose"]} == CARE_PURPOSES for p in people)


# --------------------------------------------------------------------------- rendering


def test_parameters_are_a_valid_fhir_parameters_resource() -> None:
    for c in (p.values[0] for p in CASES):
        Parameters.model_validate(to_parameters(_decide(c)))


def _param(parameters: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [p for p in parameters["parameter"] if p["name"] == name]


def test_parameters_carry_decision_reason_versioned_consent_provision_basis_and_obligations() -> None:
    verdict = decide(ask("attendance", role="father", purpose="THREAT"), ACTIVE, now=NOW)
    params = to_parameters(verdict)
    assert _param(params, "decision") == [{"name": "decision", "valueCode": "permit"}]
    assert _param(params, "reason")[0]["valueString"] == verdict.reason
    assert _param(params, "consent")[0]["valueReference"] == {"reference": f"Consent/{FORM_A}/_history/1"}
    assert _param(params, "provision")[0]["valueString"] == "Consent.provision.provision[3]"
    assert _param(params, "basis")[0]["valueCode"] == "policy-exception"
    obligations = [{part["name"]: part.get("valueCode", part.get("valueString")) for part in o["part"]} for o in _param(params, "obligation")]
    assert [o["code"] for o in obligations] == list(EXCEPTION_OBLIGATIONS)
    assert all(o["text"] for o in obligations)


def test_parameters_list_each_information_type_as_a_coding_with_its_answer() -> None:
    params = to_parameters(decide(ask("attendance", "medication", role="mother"), ACTIVE, now=NOW))
    answers = [{part["name"]: part for part in p["part"]} for p in _param(params, "informationType")]
    assert [(a["code"]["valueCoding"]["code"], a["decision"]["valueCode"]) for a in answers] == [("attendance", "permit"), ("medication", "deny")]
    assert answers[0]["code"]["valueCoding"]["system"] == codes.CS_INFORMATION_TYPE


def test_parameters_without_a_consent_omit_the_reference_and_provision() -> None:
    params = to_parameters(decide(ask("attendance", role="mother"), (), now=NOW))
    assert _param(params, "consent") == [] and _param(params, "provision") == []


def test_parameters_carry_review_flags() -> None:
    params = to_parameters(decide(ask("medication", role="gp", at=AFTER_18), ACTIVE, now=NOW))
    assert [p["valueCode"] for p in _param(params, "flag")] == ["review-due-turned-18"]


def test_json_shape() -> None:
    verdict = decide(ask("attendance", "medication", role="mother", at=AFTER_18), ACTIVE, now=NOW)
    assert to_json(verdict) == {
        "decision": "deny",
        "reason": verdict.reason,
        "consent": {"reference": f"Consent/{FORM_A}/_history/1", "formId": FORM_A, "version": 1},
        "provision": ROOT,
        "basis": "default",
        "obligations": [{"code": "review-consent", "text": verdict.obligations[0].text}],
        "perType": [
            {"informationType": "attendance", "decision": "deny", "provision": ROOT},
            {"informationType": "medication", "decision": "deny", "provision": ROOT},
        ],
        "flags": ["review-due-turned-18"],
        "matchedPeople": ["mum"],
    }


def test_json_without_a_consent_has_null_consent_and_provision() -> None:
    rendered = to_json(decide(ask("attendance", role="mother"), (), now=NOW))
    assert (rendered["consent"], rendered["provision"], rendered["basis"]) == (None, None, "default")


# --------------------------------------------------------------------------- summary


def test_summary_lists_what_each_person_may_receive() -> None:
    entries = summary(NHS, ACTIVE, at=DEC_2026)
    assert [(e.person_id, e.role, e.may_receive, e.provision) for e in entries] == [
        ("mum", "mother", ("attendance", "treatment-plan"), MUM),
        ("gp", "gp", ("medication",), GP),
        ("dad", "father", (), DAD),
    ]


def test_summary_gives_nothing_to_a_person_outside_their_period() -> None:
    mum = summary(NHS, ACTIVE, at=JUNE_2027)[0]
    assert (mum.in_period, mum.may_receive) == (False, ())


def test_summary_carries_identifiers_for_matching_as_uris() -> None:
    gp = summary(NHS, ACTIVE, at=DEC_2026)[1]
    assert set(gp.identifiers) == {("https://fhir.hl7.org.uk/Id/gmc-number", "1234567"), (codes.ODS_ORGANIZATION, "D81001")}


@pytest.mark.parametrize(
    "versions, nhs",
    [
        pytest.param((), NHS, id="no consent"),
        pytest.param(ACTIVE, OTHER_NHS, id="unknown patient"),
        pytest.param(with_status("withdrawn"), NHS, id="withdrawn"),
        pytest.param(with_status("draft"), NHS, id="draft"),
    ],
)
def test_summary_is_empty_without_an_active_consent(versions: tuple[StoredVersion, ...], nhs: str) -> None:
    assert summary(nhs, versions, at=DEC_2026) == []


def test_summary_json_cites_the_consent_and_holds_no_names() -> None:
    rendered = summary_to_json(summary(NHS, ACTIVE, at=DEC_2026))
    assert rendered[0]["consent"] == f"Consent/{FORM_A}/_history/1"
    assert rendered[0]["period"] == {"start": "2026-11-20", "end": "2027-05-20"}
    text = json.dumps(rendered)
    assert not any(name in text for name in NAMES)
