"""CASUS form <-> FHIR R5 (5.0.0) Consent.

R5 says the same thing as our R4 shape with different elements:
``decision: deny`` replaces the root provision's type; every top-level
provision is an exception to that decision, so a share person's provision
permits and lists its information types in ``provision.code`` (R5 nested
provisions invert their parent, so per-type nesting would flip the meaning);
a do-not-share person is an exception whose nested exception takes the
disclosure away again.  ``grantor`` is who decided (R4 ``performer``; HL7's
cross-version map wrongly sends it to ``grantee``), ``controller`` the trust
(R4 ``organization``), ``policyBasis.url`` the CASUS policy, and R4's
``scope`` travels as a category coding.  R5 ``date`` is a date only, so the
recording time keeps its precision in the ``casus-recorded-at`` extension.
"""

from __future__ import annotations

from typing import Any

from ..fhir_structure import base_issues
from ..form import ConsentForm, Person
from ..outcome import InvalidInput
from . import codes, common

EXT_RECORDED_AT = f"{codes.CASUS_BASE}/StructureDefinition/casus-recorded-at"
DISCLOSE = {"coding": [codes.ACTION_CODING]}


def _person_provision(p: Person) -> dict[str, Any]:
    prov: dict[str, Any] = {}
    if p.period:
        prov["period"] = common.period_json(p.period)
    prov["actor"] = [common.actor(p.id)]
    prov["action"] = [DISCLOSE]
    if p.sharing == "share":
        prov["code"] = [{"coding": [codes.INFORMATION_TYPES.to_coding(t)]} for t in p.information_types]
    else:
        prov["provision"] = [{"action": [DISCLOSE]}]
    return prov


def _exception_provision(kind: str) -> dict[str, Any]:
    return {"action": [DISCLOSE], "purpose": common.exception_purposes(kind)}


def form_to_r5(form: ConsentForm) -> dict[str, Any]:
    """The form as an R5 Consent carrying everything the R4 one does."""
    extensions = common.extensions(form)
    extensions.insert(1, {"url": EXT_RECORDED_AT, "valueDateTime": form.recorded.date.isoformat()})
    return {
        "resourceType": "Consent",
        "meta": {"security": [dict(c) for c in codes.SECURITY_LABELS]},
        "contained": common.contained(form),
        "extension": extensions,
        "identifier": [{"system": codes.ID_CONSENT_FORM, "value": form.form_id}],
        "status": codes.STATUS_R5.row(form.status).code,
        "category": [{"coding": [c]} for c in (*codes.CATEGORY_CODINGS, codes.SCOPE_CODING)],
        "subject": common.patient_reference(form.young_person),
        "date": form.recorded.date.date().isoformat(),
        "grantor": [common.grantor_reference(form)],
        "controller": [common.trust_reference()],
        "policyBasis": {"url": codes.POLICY_URI},
        "decision": "deny",
        "provision": [_person_provision(p) for p in form.people] + [_exception_provision(k) for k in form.exceptions.provisions],
    }


TOP_LEVEL = {"resourceType", "id", "meta", "text", "language", "contained", "extension", "identifier", "status",
             "category", "subject", "date", "grantor", "controller", "policyBasis", "decision", "provision"}
STATUS_BY_CODE = {r.code: r.value for r in codes.STATUS_R5}


def r5_to_form(consent: Any) -> ConsentForm:
    """Read an R5 Consent back into a CASUS form; raises InvalidInput naming every element it cannot take."""
    issues = base_issues(consent, "r5")
    if issues:
        raise InvalidInput(issues)
    r = common.Reader()
    r.allow_only(consent, TOP_LEVEL, "Consent")
    cont = common.Contained(r, consent.get("contained"))
    identifiers = consent.get("identifier") or []
    ours = [i for i in identifiers if i.get("system") == codes.ID_CONSENT_FORM]
    if len(ours) != 1 or len(identifiers) != 1:
        r.fail("Consent.identifier", f"exactly one identifier, with system {codes.ID_CONSENT_FORM}, is required", "required")
    status = STATUS_BY_CODE.get(consent.get("status", ""))
    if status is None:
        r.fail("Consent.status", f"status '{consent.get('status')}' is not one a CASUS form can have", "code-invalid")
    found = {(c.get("system"), c.get("code")) for cat in consent.get("category") or [] for c in cat.get("coding") or []}
    if found != {(c["system"], c["code"]) for c in (*codes.CATEGORY_CODINGS, codes.SCOPE_CODING)}:
        r.fail("Consent.category", "category must be exactly LOINC 59284-0, v3-ActCode IDSCL and consentscope patient-privacy", "value")
    young = common.read_young_person(r, cont, r.need(consent, "subject", "Consent"), "Consent.subject")
    plain_ext, recorded_at = _split_recorded_at(r, consent.get("extension") or [])
    recorder, basis, competence, explained = common.read_extensions(r, cont, plain_ext)
    if recorded_at and consent.get("date") != recorded_at.date().isoformat():
        r.fail("Consent.date", "the date must be the date part of the casus-recorded-at extension", "invariant")
    grantors = r.need(consent, "grantor", "Consent") or []
    if len(grantors) != 1:
        r.fail("Consent.grantor", "exactly one grantor (who decided) is required", "invariant")
    grantor_id = common.read_grantor(r, grantors[0] if grantors else None, "Consent.grantor[0]", basis)
    controller = consent.get("controller") or []
    ident = (controller[0] if controller else {}).get("identifier") or {}
    if len(controller) != 1 or ident.get("system") != codes.ODS_ORGANIZATION or ident.get("value") != codes.TRUST_ODS_CODE:
        r.fail("Consent.controller", f"the controller must be the trust, ODS code {codes.TRUST_ODS_CODE}", "value")
    if (consent.get("policyBasis") or {}) != {"url": codes.POLICY_URI}:
        r.fail("Consent.policyBasis", f"policyBasis must be url {codes.POLICY_URI}", "value")
    if consent.get("decision") != "deny":
        r.fail("Consent.decision", "the decision must be deny: nothing leaves CASUS by default", "value")
    people, exceptions = _read_provisions(r, cont, consent.get("provision") or [])
    return common.finish_form(r, cont, form_id=ours[0]["value"] if ours else "", status=status, young=young, recorded_at=recorded_at,
                              recorder=recorder, basis=basis, competence=competence, grantor_id=grantor_id, explained=explained,
                              people=people, exceptions=exceptions)


def _split_recorded_at(r: common.Reader, extensions: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Any]:
    rest, recorded_at = [], None
    for n, ext in enumerate(extensions):
        if ext.get("url") == EXT_RECORDED_AT:
            recorded_at = r.parse_datetime(ext.get("valueDateTime"), f"Consent.extension[{n}].valueDateTime")
        else:
            rest.append(ext)
    if recorded_at is None and not any(e.get("url") == EXT_RECORDED_AT for e in extensions):
        r.fail(f"Consent.extension('{EXT_RECORDED_AT}')", "required: R5 Consent.date holds no time", "required")
    return rest, recorded_at


def _read_provisions(r: common.Reader, cont: common.Contained, provisions: list[dict[str, Any]]) -> tuple[list[Person], list[str]]:
    people: list[Person] = []
    exceptions: list[str] = []
    for n, prov in enumerate(provisions):
        here = f"Consent.provision[{n}]"
        if "purpose" in prov:
            r.allow_only(prov, {"action", "purpose"}, here)
            common.read_exception_provision(r, prov, here, exceptions)
            continue
        r.allow_only(prov, {"period", "actor", "action", "code", "provision"}, here)
        period = common.read_period(r, prov.get("period"), f"{here}.period")
        common.read_disclose_action(r, prov.get("action"), here)
        fields = common.read_person_resource(r, cont, common.read_actor(r, prov.get("actor"), here), f"{here}.actor[0].reference")
        sharing, types = _read_choice(r, prov, here)
        if fields is not None and sharing is not None:
            people.append(common.person_from(fields, sharing, types, period))
    return people, exceptions


def _read_choice(r: common.Reader, prov: dict[str, Any], here: str) -> tuple[str | None, tuple[str, ...]]:
    """share = an exception listing information types; do-not-share = an exception revoked by its nested exception."""
    if "provision" in prov:
        nested = prov["provision"]
        if "code" in prov or len(nested) != 1 or set(nested[0]) != {"action"}:
            r.fail(f"{here}.provision", "a do-not-share provision nests exactly one exception revoking disclose, and lists no codes", "invariant")
            return None, ()
        common.read_disclose_action(r, nested[0].get("action"), f"{here}.provision[0]")
        return "do-not-share", ()
    types = []
    for m, concept in enumerate(prov.get("code") or []):
        codings = concept.get("coding") or []
        kind = codes.INFORMATION_TYPES.first_match(codings)
        if kind is None or len(codings) != 1:
            r.fail(f"{here}.code[{m}]", "exactly one CASUS information type coding is required", "code-invalid")
        else:
            types.append(kind)
    return "share", tuple(types)
