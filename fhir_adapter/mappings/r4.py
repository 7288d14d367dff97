"""CASUS form <-> FHIR R4 (4.0.1) Consent.

Shape (docs/integration-engineers.md maps every element):
the root provision is ``deny`` (nothing leaves the team by default); under it,
one provision per person carries their choice (permit/deny) with the person as
IRCP actor, and a share person's provision nests one permit per information
type; the policy exceptions are further permits recognised by their purpose of
use (THREAT, HLEGAL), never by position.
"""

from __future__ import annotations

from typing import Any

from ..fhir_structure import base_issues
from ..form import ConsentForm, Person
from ..outcome import InvalidInput
from . import codes, common


def _person_provision(p: Person) -> dict[str, Any]:
    prov: dict[str, Any] = {"type": codes.SHARING_R4.row(p.sharing).code}
    if p.period:
        prov["period"] = common.period_json(p.period)
    prov["actor"] = [common.actor(p.id)]
    prov["action"] = [{"coding": [codes.ACTION_CODING]}]
    if p.information_types:
        prov["provision"] = [
            {"type": "permit", "code": [{"coding": [codes.INFORMATION_TYPES.to_coding(t)]}]} for t in p.information_types
        ]
    return prov


def _exception_provision(kind: str) -> dict[str, Any]:
    return {"type": "permit", "action": [{"coding": [codes.ACTION_CODING]}], "purpose": common.exception_purposes(kind)}


def form_to_r4(form: ConsentForm) -> dict[str, Any]:
    """The form as an R4 Consent (plain JSON-ready dict, valid against the CASUS profile)."""
    return {
        "resourceType": "Consent",
        "meta": common.meta(),
        "contained": common.contained(form),
        "extension": common.extensions(form),
        "identifier": [{"system": codes.ID_CONSENT_FORM, "value": form.form_id}],
        "status": codes.STATUS_R4.row(form.status).code,
        "scope": {"coding": [codes.SCOPE_CODING]},
        "category": [{"coding": [c]} for c in codes.CATEGORY_CODINGS],
        "patient": common.patient_reference(form.young_person),
        "dateTime": form.recorded.date.isoformat(),
        "performer": [common.grantor_reference(form)],
        "organization": [common.trust_reference()],
        "policy": [{"uri": codes.POLICY_URI}],
        "provision": {
            "type": "deny",
            "provision": [_person_provision(p) for p in form.people]
            + [_exception_provision(k) for k in form.exceptions.provisions],
        },
    }


TOP_LEVEL = {"resourceType", "id", "meta", "text", "language", "contained", "extension", "identifier", "status",
             "scope", "category", "patient", "dateTime", "performer", "organization", "policy", "provision"}
STATUS_BY_CODE = {r.code: r.value for r in codes.STATUS_R4}


def r4_to_form(consent: Any) -> ConsentForm:
    """Read an R4 Consent back into a CASUS form.

    Raises InvalidInput naming every element that base FHIR, the CASUS profile
    or the form's own rules reject; nothing is dropped silently.
    """
    issues = base_issues(consent, "r4")
    if issues:
        raise InvalidInput(issues)
    r = common.Reader()
    r.allow_only(consent, TOP_LEVEL, "Consent")
    cont = common.Contained(r, consent.get("contained"))
    form_id = _form_id(r, consent.get("identifier"))
    status = STATUS_BY_CODE.get(consent.get("status", ""))
    if status is None:
        r.fail("Consent.status", f"status '{consent.get('status')}' is not one a CASUS form can have", "code-invalid")
    r.exact_coding(r.need(consent, "scope", "Consent"), codes.SCOPE_CODING, "Consent.scope")
    _check_categories(r, consent.get("category"))
    young = common.read_young_person(r, cont, r.need(consent, "patient", "Consent"), "Consent.patient")
    recorded_at = r.parse_datetime(r.need(consent, "dateTime", "Consent"), "Consent.dateTime")
    recorder, basis, competence, explained = common.read_extensions(r, cont, consent.get("extension"))
    performers = r.need(consent, "performer", "Consent") or []
    if len(performers) != 1:
        r.fail("Consent.performer", "exactly one performer (who decided) is required", "invariant")
    grantor_id = common.read_grantor(r, performers[0] if performers else None, "Consent.performer[0]", basis)
    _check_trust(r, consent.get("organization"), "Consent.organization")
    _check_policy(r, consent.get("policy"))
    people, exceptions = _read_provisions(r, cont, r.need(consent, "provision", "Consent"))
    return common.finish_form(r, cont, form_id=form_id, status=status, young=young, recorded_at=recorded_at, recorder=recorder,
                              basis=basis, competence=competence, grantor_id=grantor_id, explained=explained,
                              people=people, exceptions=exceptions)


def _form_id(r: common.Reader, identifiers: Any) -> str:
    ours = [i for i in identifiers or [] if i.get("system") == codes.ID_CONSENT_FORM]
    if len(ours) != 1:
        r.fail("Consent.identifier", f"exactly one identifier with system {codes.ID_CONSENT_FORM} is required", "required")
        return ""
    if len(identifiers) != 1:
        r.fail("Consent.identifier", "only the CASUS form identifier is recorded")
    return ours[0].get("value", "")


def _check_categories(r: common.Reader, categories: Any) -> None:
    found = {(c.get("system"), c.get("code")) for cat in categories or [] for c in cat.get("coding") or []}
    expected = {(c["system"], c["code"]) for c in codes.CATEGORY_CODINGS}
    if found != expected:
        r.fail("Consent.category", "category must be exactly LOINC 59284-0 and v3-ActCode IDSCL", "value")


def _check_trust(r: common.Reader, orgs: Any, where: str) -> None:
    ident = ((orgs or [{}])[0] or {}).get("identifier") or {}
    if not orgs or len(orgs) != 1 or ident.get("system") != codes.ODS_ORGANIZATION or ident.get("value") != codes.TRUST_ODS_CODE:
        r.fail(where, f"the custodian must be the trust, ODS code {codes.TRUST_ODS_CODE}", "value")


def _check_policy(r: common.Reader, policies: Any) -> None:
    if [p.get("uri") for p in policies or []] != [codes.POLICY_URI]:
        r.fail("Consent.policy", f"policy must be exactly {codes.POLICY_URI}", "value")


PERSON_PROVISION = {"type", "period", "actor", "action", "provision"}
EXCEPTION_PROVISION = {"type", "action", "purpose"}


def _read_provisions(r: common.Reader, cont: common.Contained, root: Any, where: str = "Consent.provision") -> tuple[list[Person], list[str]]:
    people: list[Person] = []
    exceptions: list[str] = []
    if not isinstance(root, dict):
        return people, exceptions
    r.allow_only(root, {"type", "provision"}, where)
    if root.get("type") != "deny":
        r.fail(f"{where}.type", "the base provision must be deny: nothing leaves CASUS by default", "value")
    for n, prov in enumerate(root.get("provision") or []):
        here = f"{where}.provision[{n}]"
        if "purpose" in prov:
            r.allow_only(prov, EXCEPTION_PROVISION, here)
            if prov.get("type") != "permit":
                r.fail(f"{here}.type", "a policy exception provision permits", "value")
            common.read_exception_provision(r, prov, here, exceptions)
            continue
        person = _read_person_provision(r, cont, prov, here)
        if person is not None:
            people.append(person)
    return people, exceptions


def _read_person_provision(r: common.Reader, cont: common.Contained, prov: dict[str, Any], here: str) -> Person | None:
    r.allow_only(prov, PERSON_PROVISION, here)
    sharing = codes.SHARING_R4.first_match([{"system": codes.SHARING_R4.rows[0].system, "code": prov.get("type")}])
    if sharing is None:
        r.fail(f"{here}.type", "a person provision must say permit or deny", "required")
    period = common.read_period(r, prov.get("period"), f"{here}.period")
    common.read_disclose_action(r, prov.get("action"), here)
    fields = common.read_person_resource(r, cont, common.read_actor(r, prov.get("actor"), here), f"{here}.actor[0].reference")
    types = []
    for m, sub in enumerate(prov.get("provision") or []):
        there = f"{here}.provision[{m}]"
        r.allow_only(sub, {"type", "code"}, there)
        if sub.get("type") != "permit" or sharing != "share":
            r.fail(f"{there}.type", "information types are listed as nested permits of a permit (share) provision", "invariant")
        codings = [c for cc in sub.get("code") or [] for c in cc.get("coding") or []]
        kind = codes.INFORMATION_TYPES.first_match(codings)
        if kind is None or len(codings) != 1:
            r.fail(f"{there}.code", "exactly one CASUS information type coding is required", "code-invalid")
        else:
            types.append(kind)
    if fields is None or sharing is None:
        return None
    return common.person_from(fields, sharing, tuple(types), period)

