"""CASUS form <-> FHIR R5 (5.0.0) Consent.

R5 says the same thing as the R4 shape with different elements, and is
written so that a reader following only the specification reads what the
young person chose (mapping version 2).  ``decision: deny`` is the base; every
top-level provision is an exception to it, so each one permits: a share
person's provision names the person (IRCP actor), disclose, the four care
purposes and the information types in ``code``, and each policy exception is
disclose to anyone for THREAT or HLEGAL only.  Provisions never nest (readers
disagree on what a nested R5 provision means).  A do-not-share person is not
a provision at all -- the base deny already refuses them, and a provision
could only permit -- but is recorded in a ``casus-do-not-share`` extension
(recipient, and period when limited), so a reader that ignores extensions
still reads deny.  People come back in the order of their contained
resources, which is form order.

``grantor`` is who decided (R4 ``performer``; HL7's cross-version map wrongly
sends it to ``grantee``), ``controller`` the trust (R4 ``organization``),
``policyBasis.url`` the CASUS policy, and R4's ``scope`` travels as a category
coding.  R5 ``date`` is a date only, so the recording time keeps its precision
in the ``casus-recorded-at`` extension.

Consents written by mapping version 1 (share provisions without purpose, a
do-not-share person as a provision whose nested provision revokes it, THREAT
beside OVRTPS) are still read, into the same form.
"""

from __future__ import annotations

from typing import Any

from ..form import ConsentForm, Person
from . import codes, common

EXT_RECORDED_AT = codes.EXT_RECORDED_AT
LEGACY_PURPOSE = (
    codes.LEGACY_EXCEPTION_CODINGS["risk-of-significant-harm"][0]["system"],
    codes.LEGACY_EXCEPTION_CODINGS["risk-of-significant-harm"][0]["code"],
)


def _share_provision(p: Person) -> dict[str, Any]:
    prov: dict[str, Any] = {}
    if p.period:
        prov["period"] = common.period_json(p.period)
    prov["actor"] = [common.actor(p.id)]
    prov["action"] = common.disclose()
    prov["purpose"] = codes.care_purpose_codings()
    prov["code"] = [{"coding": [codes.INFORMATION_TYPES.to_coding(t)]} for t in p.information_types]
    return prov


def _do_not_share_extension(p: Person) -> dict[str, Any]:
    subs: list[dict[str, Any]] = [{"url": "recipient", "valueReference": {"reference": f"#{p.id}"}}]
    if p.period:
        subs.append({"url": "period", "valuePeriod": common.period_json(p.period)})
    return {"url": codes.EXT_DO_NOT_SHARE, "extension": subs}


def _exception_provision(kind: str) -> dict[str, Any]:
    return {"action": common.disclose(), "purpose": common.exception_purposes(kind)}


def form_to_r5(form: ConsentForm) -> dict[str, Any]:
    """The form as an R5 Consent carrying everything the R4 one does."""
    extensions = common.extensions(form)
    extensions.insert(1, {"url": EXT_RECORDED_AT, "valueDateTime": form.recorded.date.isoformat()})
    extensions += [_do_not_share_extension(p) for p in form.people if p.sharing == "do-not-share"]
    return {
        "resourceType": "Consent",
        "meta": common.meta(codes.PROFILE_CONSENT_R5),
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
        "provision": [_share_provision(p) for p in form.people if p.sharing == "share"]
        + [_exception_provision(k) for k in form.exceptions.provisions],
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
    "category",
    "subject",
    "date",
    "grantor",
    "controller",
    "policyBasis",
    "decision",
    "provision",
}


def r5_to_form(consent: Any) -> ConsentForm:
    """Read an R5 Consent back into a CASUS form; raises InvalidInput naming every element it cannot take."""
    opened = common.open_consent(consent, "r5", TOP_LEVEL)
    r, cont, form_id, status = opened.reader, opened.contained, opened.form_id, opened.status
    found = {(c.get("system"), c.get("code")) for cat in consent.get("category") or [] for c in cat.get("coding") or []}
    if found != {(c["system"], c["code"]) for c in (*codes.CATEGORY_CODINGS, codes.SCOPE_CODING)}:
        r.fail("Consent.category", "category must be exactly LOINC 59284-0, v3-ActCode IDSCL and consentscope patient-privacy", "value")
    young = common.read_young_person(r, cont, r.need(consent, "subject", "Consent"), "Consent.subject")
    plain_ext, recorded_at, do_not_share = _split_extensions(r, consent.get("extension") or [])
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
    provisions = consent.get("provision") or []
    if _is_version_1(consent, provisions, do_not_share):
        people, exceptions = _read_legacy_provisions(r, cont, provisions)
    else:
        people, exceptions = _read_provisions(r, cont, provisions)
        people += _read_do_not_share(r, cont, do_not_share)
        people.sort(key=lambda p: cont.by_id[p.id][0])  # contained order is form order
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


Located = tuple[int, dict[str, Any]]


def _split_extensions(r: common.Reader, extensions: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Any, list[Located]]:
    """The R5-only extensions taken out (recording time, do-not-share people, with their index); the rest are common."""
    rest, recorded_at, do_not_share = [], None, []
    for n, ext in enumerate(extensions):
        if ext.get("url") == EXT_RECORDED_AT:
            recorded_at = r.parse_datetime(ext.get("valueDateTime"), f"Consent.extension[{n}].valueDateTime")
        elif ext.get("url") == codes.EXT_DO_NOT_SHARE:
            do_not_share.append((n, ext))
        else:
            rest.append(ext)
    if recorded_at is None and not any(e.get("url") == EXT_RECORDED_AT for e in extensions):
        r.fail(f"Consent.extension('{EXT_RECORDED_AT}')", "required: R5 Consent.date holds no time", "required")
    return rest, recorded_at, do_not_share


def _is_version_1(consent: dict[str, Any], provisions: list[Any], do_not_share: list[Located]) -> bool:
    """Only what mapping version 1 wrote, and nothing only version 2 writes, is read in the version 1 shape.

    Version 1 left purpose off person provisions, nested a revoking provision for do-not-share, and put OVRTPS
    beside THREAT; version 2 claims the R5 profile, gives person provisions their care purposes and records
    do-not-share people in an extension.  Anything showing a version 2 mark is held to version 2 in full, so a
    document mixing both is rejected with every version 1 element named.
    """
    profiles = (consent.get("meta") or {}).get("profile") or []
    if do_not_share or codes.PROFILE_CONSENT_R5 in profiles:
        return False
    provs = [p for p in provisions if isinstance(p, dict)]
    if any("actor" in p and "purpose" in p for p in provs):
        return False
    return any(
        "provision" in p
        or ("actor" in p and "purpose" not in p)
        or LEGACY_PURPOSE in {(c.get("system"), c.get("code")) for c in p.get("purpose") or [] if isinstance(c, dict)}
        for p in provs
    )


def _read_provisions(r: common.Reader, cont: common.Contained, provisions: list[Any]) -> tuple[list[Person], list[str]]:
    """Mapping version 2: each provision permits, completely; a person's has an actor, an exception's has none."""
    people: list[Person] = []
    exceptions: list[str] = []
    for n, prov in enumerate(provisions):
        here = f"Consent.provision[{n}]"
        common.reject_nesting(r, prov, here)
        if common.is_exception_provision(prov):
            r.allow_only(prov, {"action", "purpose", "provision"}, here)
            common.read_exception_provision(r, prov, here, exceptions)
            continue
        r.allow_only(prov, {"period", "actor", "action", "purpose", "code", "provision"}, here)
        fields, period = common.read_person_core(r, cont, prov, here)
        common.read_care_purposes(r, prov.get("purpose"), here)
        if not prov.get("code"):
            r.fail(
                f"{here}.code",
                "a person's provision permits, so it lists the information types it permits "
                f"(a do-not-share person is recorded in the {codes.EXT_DO_NOT_SHARE} extension)",
                "required",
            )
        types = common.read_information_types(r, prov.get("code"), here)
        if fields is not None:
            people.append(common.person_from(fields, "share", types, period))
    return people, exceptions


def _read_do_not_share(r: common.Reader, cont: common.Contained, located: list[Located]) -> list[Person]:
    people = []
    for n, ext in located:
        where = f"Consent.extension[{n}]"
        r.allow_only(ext, {"url", "extension"}, where)
        subs: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for m, sub in enumerate(ext.get("extension") or []):
            if not isinstance(sub, dict) or sub.get("url") not in ("recipient", "period"):
                r.fail(f"{where}.extension[{m}]", "a do-not-share extension holds only recipient and period", "structure")
                continue
            subs.setdefault(sub["url"], []).append((m, sub))
            allowed = {"url", "valueReference"} if sub["url"] == "recipient" else {"url", "valuePeriod"}
            r.allow_only(sub, allowed, f"{where}.extension[{m}]")
        for name, items in subs.items():
            if len(items) > 1:
                r.fail(f"{where}.extension('{name}')", f"{name} appears more than once", "duplicate")
        recipients = subs.get("recipient") or []
        if not recipients:
            r.fail(f"{where}.extension('recipient')", "the person who must not receive CASUS information is required", "required")
            continue
        m, recipient = recipients[0]
        fields = common.read_person_resource(r, cont, recipient.get("valueReference"), f"{where}.extension[{m}].valueReference")
        period = None
        if subs.get("period"):
            pm, psub = subs["period"][0]
            period = common.read_period(r, psub.get("valuePeriod"), f"{where}.extension[{pm}].valuePeriod")
        if fields is not None:
            people.append(common.person_from(fields, "do-not-share", (), period))
    return people


def _read_legacy_provisions(r: common.Reader, cont: common.Contained, provisions: list[dict[str, Any]]) -> tuple[list[Person], list[str]]:
    """Mapping version 1: share provisions without purpose; do-not-share revoked by a nested provision; THREAT + OVRTPS."""
    people: list[Person] = []
    exceptions: list[str] = []
    for n, prov in enumerate(provisions):
        here = f"Consent.provision[{n}]"
        if "purpose" in prov:
            r.allow_only(prov, {"action", "purpose"}, here)
            common.read_exception_provision(r, prov, here, exceptions, legacy=True)
            continue
        r.allow_only(prov, {"period", "actor", "action", "code", "provision"}, here)
        fields, period = common.read_person_core(r, cont, prov, here)
        sharing, types = _read_legacy_choice(r, prov, here)
        if fields is not None and sharing is not None:
            people.append(common.person_from(fields, sharing, types, period))
    return people, exceptions


def _read_legacy_choice(r: common.Reader, prov: dict[str, Any], here: str) -> tuple[str | None, tuple[str, ...]]:
    """share = an exception listing information types; do-not-share = an exception revoked by its nested exception."""
    if "provision" in prov:
        nested = prov["provision"]
        if "code" in prov or len(nested) != 1 or set(nested[0]) != {"action"}:
            r.fail(f"{here}.provision", "a do-not-share provision nests exactly one exception revoking disclose, and lists no codes", "invariant")
            return None, ()
        common.read_disclose_action(r, nested[0].get("action"), f"{here}.provision[0]")
        return "do-not-share", ()
    return "share", common.read_information_types(r, prov.get("code"), here)
