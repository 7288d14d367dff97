"""CASUS form <-> FHIR R4 (4.0.1) Consent.

Written so that a reader following only the specification reads what the
young person chose (mapping version 2; docs/integration-engineers.md maps every element): ``policyRule`` OPTIN is the base rule
(nothing is disclosed unless a provision permits it) and the root provision
carries no type, as R4 requires.  Each nested provision is one complete
exception to that base: a share person is a permit naming the person (IRCP
actor), disclose, the four care purposes and the information types in
``code``; a do-not-share person is a deny for the same person and purposes
with no code (every type); each policy exception is a permit for disclose to
anyone whose only purpose is THREAT or HLEGAL.  Nothing nests deeper, so no
reader has to decide how nested exceptions combine.

Consents written by mapping version 1 (root ``type: deny``, per-type permits
nested under each share person, THREAT beside OVRTPS) are still read, into the
same form; the root's type tells the two shapes apart.
"""

from __future__ import annotations

from typing import Any

from ..form import ConsentForm, Person
from . import codes, common


def _person_provision(p: Person) -> dict[str, Any]:
    prov: dict[str, Any] = {"type": codes.SHARING_R4.row(p.sharing).code}
    if p.period:
        prov["period"] = common.period_json(p.period)
    prov["actor"] = [common.actor(p.id)]
    prov["action"] = common.disclose()
    prov["purpose"] = codes.care_purpose_codings()
    if p.sharing == "share":
        prov["code"] = [{"coding": [codes.INFORMATION_TYPES.to_coding(t)]} for t in p.information_types]
    return prov


def _exception_provision(kind: str) -> dict[str, Any]:
    return {"type": "permit", "action": common.disclose(), "purpose": common.exception_purposes(kind)}


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
        "policyRule": {"coding": [dict(codes.POLICY_RULE_CODING)]},
        "provision": {
            "provision": [_person_provision(p) for p in form.people] + [_exception_provision(k) for k in form.exceptions.provisions],
        },
    }


TOP_LEVEL = {
    "resourceType",
    "id",
    "meta",
    "text",
    "language",
    "contained",
    "extension",
    "identifier",
    "status",
    "scope",
    "category",
    "patient",
    "dateTime",
    "performer",
    "organization",
    "policy",
    "policyRule",
    "provision",
}


def r4_to_form(consent: Any) -> ConsentForm:
    """Read an R4 Consent back into a CASUS form.

    Raises InvalidInput naming every element that base FHIR, the CASUS profile
    or the form's own rules reject; nothing is dropped silently.
    """
    opened = common.open_consent(consent, "r4", TOP_LEVEL)
    r, cont, form_id, status = opened.reader, opened.contained, opened.form_id, opened.status
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
    root = r.need(consent, "provision", "Consent")
    if isinstance(root, dict) and "type" in root:
        if "policyRule" in consent:
            r.fail(
                "Consent.policyRule",
                "a Consent whose root provision has a type is read in the mapping version 1 "
                "shape, which has no policyRule (version 2 has policyRule OPTIN and no root type)",
                "invariant",
            )
        people, exceptions = _read_legacy_provisions(r, cont, root)
    else:
        _check_policy_rule(r, consent.get("policyRule"))
        people, exceptions = _read_provisions(r, cont, root)
    return common.finish_form(
        r,
        cont,
        form_id=form_id,
        status=status,
        young=young,
        recorded_at=recorded_at,
        recorder=recorder,
        basis=basis,
        competence=competence,
        grantor_id=grantor_id,
        explained=explained,
        people=people,
        exceptions=exceptions,
    )


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


def _check_policy_rule(r: common.Reader, rule: Any) -> None:
    codings = (rule or {}).get("coding") if isinstance(rule, dict) else None
    expected = codes.POLICY_RULE_CODING
    if not codings or [(c.get("system"), c.get("code")) for c in codings] != [(expected["system"], expected["code"])]:
        r.fail(
            "Consent.policyRule",
            f"policyRule must be exactly {expected['system']}#{expected['code']} (opt-in: nothing leaves CASUS unless a provision permits it)",
            "value",
        )


PERSON_PROVISION = {"type", "period", "actor", "action", "purpose", "code", "provision"}
EXCEPTION_PROVISION = {"type", "action", "purpose", "provision"}
LEGACY_PERSON_PROVISION = {"type", "period", "actor", "action", "provision"}
LEGACY_EXCEPTION_PROVISION = {"type", "action", "purpose"}


def _read_provisions(r: common.Reader, cont: common.Contained, root: Any, where: str = "Consent.provision") -> tuple[list[Person], list[str]]:
    """Mapping version 2: every nested provision is complete in itself; a person's has an actor, an exception's has none."""
    people: list[Person] = []
    exceptions: list[str] = []
    if not isinstance(root, dict):
        return people, exceptions
    r.allow_only(root, {"provision"}, where)
    for n, prov in enumerate(root.get("provision") or []):
        here = f"{where}.provision[{n}]"
        common.reject_nesting(r, prov, here)
        if common.is_exception_provision(prov):
            r.allow_only(prov, EXCEPTION_PROVISION, here)
            if prov.get("type") != "permit":
                r.fail(f"{here}.type", "a policy exception provision permits", "value")
            common.read_exception_provision(r, prov, here, exceptions)
            continue
        r.allow_only(prov, PERSON_PROVISION, here)
        sharing = codes.SHARING_R4.first_match([{"system": codes.SHARING_R4.rows[0].system, "code": prov.get("type")}])
        if sharing is None:
            r.fail(f"{here}.type", "a person provision must say permit (share) or deny (do not share)", "required")
        fields, period = common.read_person_core(r, cont, prov, here)
        common.read_care_purposes(r, prov.get("purpose"), here)
        types: tuple[str, ...] = ()
        if sharing == "share" and not prov.get("code"):
            r.fail(f"{here}.code", "a share (permit) provision lists the information types it permits", "required")
        elif sharing == "share":
            types = common.read_information_types(r, prov["code"], here)
        elif sharing == "do-not-share" and "code" in prov:
            r.fail(f"{here}.code", "a do-not-share provision refuses every information type, so it lists no code", "invariant")
        if fields is not None and sharing is not None:
            people.append(common.person_from(fields, sharing, types, period))
    return people, exceptions


def _read_legacy_provisions(
    r: common.Reader, cont: common.Contained, root: dict[str, Any], where: str = "Consent.provision"
) -> tuple[list[Person], list[str]]:
    """Mapping version 1: root deny, person choices under it with per-type permits nested, THREAT beside OVRTPS."""
    people: list[Person] = []
    exceptions: list[str] = []
    r.allow_only(root, {"type", "provision"}, where)
    if root.get("type") != "deny":
        r.fail(
            f"{where}.type",
            "R4 allows no type on the root provision (CASUS states its base in policyRule OPTIN); "
            "Consents written by mapping version 1 had type deny here, and are read as such",
            "value",
        )
    for n, prov in enumerate(root.get("provision") or []):
        here = f"{where}.provision[{n}]"
        if "purpose" in prov:
            r.allow_only(prov, LEGACY_EXCEPTION_PROVISION, here)
            if prov.get("type") != "permit":
                r.fail(f"{here}.type", "a policy exception provision permits", "value")
            common.read_exception_provision(r, prov, here, exceptions, legacy=True)
            continue
        person = _read_legacy_person_provision(r, cont, prov, here)
        if person is not None:
            people.append(person)
    return people, exceptions


def _read_legacy_person_provision(r: common.Reader, cont: common.Contained, prov: dict[str, Any], here: str) -> Person | None:
    r.allow_only(prov, LEGACY_PERSON_PROVISION, here)
    sharing = codes.SHARING_R4.first_match([{"system": codes.SHARING_R4.rows[0].system, "code": prov.get("type")}])
    if sharing is None:
        r.fail(f"{here}.type", "a person provision must say permit or deny", "required")
    fields, period = common.read_person_core(r, cont, prov, here)
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


def written_mapping_version(consent: Any) -> int:
    """Which mapping wrote an R4 Consent: 1 when its root provision carries a type (version 2 never writes one)."""
    root = consent.get("provision") if isinstance(consent, dict) else None
    return 1 if isinstance(root, dict) and "type" in root else 2
