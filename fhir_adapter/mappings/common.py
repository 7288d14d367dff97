"""What R4 and R5 Consents share: contained people, CASUS extensions, and reading them back.

The young person, the recorder, the competence assessor and every person on the
form travel as contained resources, so a Consent read alone is a complete
record; references between them are local ("#id").  Reading back collects
every problem as an Issue with a FHIRPath-style location instead of stopping
at the first.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from ..fhir_structure import FhirVersion, base_issues
from ..form import (
    Competence,
    ConsentForm,
    DecisionMaker,
    Exceptions,
    Identifier,
    Organisation,
    Period,
    Person,
    Professional,
    Recorded,
    YoungPerson,
    check,
)
from ..outcome import InvalidInput, Issue, error
from . import codes

YOUNG_PERSON_ID = "young-person"
RECORDER_ID = "recorded-by"
ASSESSOR_ID = "competence-assessor"
PRACTITIONER_SUFFIX = "-practitioner"
RESERVED_IDS = frozenset({YOUNG_PERSON_ID, RECORDER_ID, ASSESSOR_ID})


# --------------------------------------------------------------------------- form -> FHIR


def _identifiers(ids: tuple[Identifier, ...]) -> list[dict[str, str]]:
    return [{"system": codes.identifier_uri(i.system), "value": i.value} for i in ids]


def practitioner(resource_id: str, who: Professional) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "Practitioner", "id": resource_id}
    if who.identifiers:
        res["identifier"] = _identifiers(who.identifiers)
    res["name"] = [{"text": who.name}]
    return res


def young_person_resource(yp: YoungPerson) -> dict[str, Any]:
    ids = [{"system": codes.NHS_NUMBER, "value": yp.nhs_number}]
    if yp.local_id:
        ids.append({"system": codes.ID_LOCAL_PATIENT, "value": yp.local_id})
    return {"resourceType": "Patient", "id": YOUNG_PERSON_ID, "identifier": ids, "name": [{"text": yp.name}], "birthDate": yp.birth_date.isoformat()}


def patient_reference(yp: YoungPerson) -> dict[str, Any]:
    """Local reference for the details plus the NHS number, which is what trust servers match on."""
    return {"reference": f"#{YOUNG_PERSON_ID}", "identifier": {"system": codes.NHS_NUMBER, "value": yp.nhs_number}}


def person_resources(p: Person) -> list[dict[str, Any]]:
    role = codes.PERSON_ROLES.row(p.role)
    if role.kind == "family":
        res: dict[str, Any] = {"resourceType": "RelatedPerson", "id": p.id}
        if p.identifiers:
            res["identifier"] = _identifiers(p.identifiers)
        res.update({"patient": {"reference": f"#{YOUNG_PERSON_ID}"}, "relationship": [{"coding": [role.coding()]}], "name": [{"text": p.name}]})
        return [res]
    prac_id = p.id + PRACTITIONER_SUFFIX
    prole: dict[str, Any] = {"resourceType": "PractitionerRole", "id": p.id, "practitioner": {"reference": f"#{prac_id}"}}
    if p.organisation:
        org: dict[str, Any] = {"display": p.organisation.name}
        if p.organisation.ods_code:
            org["identifier"] = {"system": codes.ODS_ORGANIZATION, "value": p.organisation.ods_code}
        prole["organization"] = org
    prole["code"] = [{"coding": [role.coding()]}]
    return [prole, practitioner(prac_id, Professional(p.name, p.identifiers))]


def contained(form: ConsentForm) -> list[dict[str, Any]]:
    out = [young_person_resource(form.young_person), practitioner(RECORDER_ID, form.recorded.by)]
    if form.decision_maker.competence:
        out.append(practitioner(ASSESSOR_ID, form.decision_maker.competence.assessed_by))
    for p in form.people:
        out += person_resources(p)
    return out


def extensions(form: ConsentForm) -> list[dict[str, Any]]:
    dm = form.decision_maker
    ext: list[dict[str, Any]] = [
        {"url": codes.EXT_RECORDED_BY, "valueReference": {"reference": f"#{RECORDER_ID}"}},
        {"url": codes.EXT_DECISION_BASIS, "valueCoding": codes.DECISION_BASIS.to_coding(dm.basis)},
    ]
    if dm.competence:
        ext.append(
            {
                "url": codes.EXT_COMPETENCE,
                "extension": [
                    {"url": "assessor", "valueReference": {"reference": f"#{ASSESSOR_ID}"}},
                    {"url": "date", "valueDate": dm.competence.assessed_on.isoformat()},
                ],
            }
        )
    explained: list[dict[str, Any]] = [{"url": "explained", "valueBoolean": form.exceptions.explained}]
    if form.exceptions.explained_on:
        explained.append({"url": "date", "valueDate": form.exceptions.explained_on.isoformat()})
    ext.append({"url": codes.EXT_EXCEPTIONS_EXPLAINED, "extension": explained})
    return ext


def grantor_reference(form: ConsentForm) -> dict[str, str]:
    """Who decided: the young person, or the person with parental responsibility."""
    if form.decision_maker.basis == "parental-responsibility":
        return {"reference": f"#{form.decision_maker.person_id}"}
    return {"reference": f"#{YOUNG_PERSON_ID}"}


def trust_reference() -> dict[str, Any]:
    return {"identifier": {"system": codes.ODS_ORGANIZATION, "value": codes.TRUST_ODS_CODE}, "display": codes.TRUST_NAME}


def period_json(period: Period | None) -> dict[str, str] | None:
    if period is None:
        return None
    out = {}
    if period.start:
        out["start"] = period.start.isoformat()
    if period.end:
        out["end"] = period.end.isoformat()
    return out


def actor(person_id: str) -> dict[str, Any]:
    return {"role": {"coding": [codes.RECIPIENT_ROLE_CODING]}, "reference": {"reference": f"#{person_id}"}}


def exception_purposes(kind: str) -> list[dict[str, str]]:
    """An exception's purpose of use: its one code, so a spec reader permits that purpose and no other."""
    return [codes.EXCEPTIONS.to_coding(kind)]


def legacy_exception_purposes(kind: str) -> list[dict[str, str]]:
    """What mapping version 1 wrote as an exception's purpose (THREAT came with OVRTPS); accepted on input only."""
    return [codes.EXCEPTIONS.to_coding(kind), *codes.LEGACY_EXCEPTION_CODINGS[kind]]


def disclose() -> list[dict[str, Any]]:
    return [{"coding": [dict(codes.ACTION_CODING)]}]


def meta(profile: str = codes.PROFILE_CONSENT) -> dict[str, Any]:
    return {"profile": [profile], "security": [dict(c) for c in codes.SECURITY_LABELS]}


# --------------------------------------------------------------------------- FHIR -> form


STATUS_BY_CODE = {r.code: r.value for r in codes.STATUS_R4}  # R5 ConsentState keeps the same four codes


def not_casus(count: int) -> Issue:
    """The headline issue for a Consent that is valid FHIR but not a CASUS consent form."""
    return error("processing", "Consent", f"not a CASUS consent: {count} element(s) listed below cannot be represented as a CASUS form")


class Reader:
    """Collects issues while reading a Consent; every check names its FHIRPath location."""

    def __init__(self) -> None:
        self.issues: list[Issue] = []

    def fail(self, where: str, why: str, code: str = "not-supported") -> None:
        self.issues.append(error(code, where, why))

    def allow_only(self, obj: dict[str, Any], allowed: set[str], where: str) -> None:
        for key in obj:
            if key not in allowed and not key.startswith("_"):
                self.fail(f"{where}.{key}", "this element cannot be represented in a CASUS consent form")

    def need(self, obj: dict[str, Any], key: str, where: str) -> Any:
        if key not in obj or obj[key] in (None, [], {}):
            self.fail(f"{where}.{key}", "required by the CASUS profile", "required")
            return None
        return obj[key]

    def exact_coding(self, concept: Any, expected: dict[str, str], where: str) -> None:
        codings = (concept or {}).get("coding") or []
        if not any(c.get("system") == expected["system"] and c.get("code") == expected["code"] for c in codings):
            self.fail(where, f"must carry {expected['system']}#{expected['code']}", "value")

    def parse_date(self, value: Any, where: str) -> date | None:
        try:
            return date.fromisoformat(value)
        except (TypeError, ValueError):
            self.fail(where, "must be a full date (YYYY-MM-DD)", "value")
            return None

    def parse_datetime(self, value: Any, where: str) -> datetime | None:
        try:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None or "T" not in str(value):
            self.fail(where, "must be a date and time with a time zone", "value")
            return None
        return parsed


@dataclass
class Opened:
    """What every Consent reader starts from: the issue collector, the contained people, form id and status."""

    reader: Reader
    contained: Contained
    form_id: str
    status: str | None


def open_consent(consent: Any, version: FhirVersion, top_level: set[str]) -> Opened:
    """The opening both readers share: base FHIR first (raising at once, as nothing else can be trusted),
    then the top-level elements, contained resources, form identifier and status."""
    issues = base_issues(consent, version)
    if issues:
        raise InvalidInput(issues)
    r = Reader()
    r.allow_only(consent, top_level, "Consent")
    cont = Contained(r, consent.get("contained"))
    form_id = read_form_id(r, consent.get("identifier"))
    status = STATUS_BY_CODE.get(consent.get("status", ""))
    if status is None:
        r.fail("Consent.status", f"status '{consent.get('status')}' is not one a CASUS form can have", "code-invalid")
    return Opened(r, cont, form_id, status)


def read_form_id(r: Reader, identifiers: Any) -> str:
    ours = [i for i in identifiers or [] if i.get("system") == codes.ID_CONSENT_FORM]
    if len(ours) != 1:
        r.fail("Consent.identifier", f"exactly one identifier with system {codes.ID_CONSENT_FORM} is required", "required")
        return ""
    if len(identifiers) != 1:
        r.fail("Consent.identifier", "only the CASUS form identifier is recorded")
    return ours[0].get("value", "")


class Contained:
    """The contained resources of a Consent, by id, with their index for locations."""

    def __init__(self, reader: Reader, items: Any) -> None:
        self.reader = reader
        self.by_id: dict[str, tuple[int, dict[str, Any]]] = {}
        self.used: set[str] = set()
        for n, res in enumerate(items or []):
            rid = res.get("id") if isinstance(res, dict) else None
            if not rid:
                reader.fail(f"Consent.contained[{n}].id", "contained resources need an id", "required")
            elif rid in self.by_id:
                reader.fail(f"Consent.contained[{n}].id", f"duplicate contained id '{rid}'", "duplicate")
            else:
                self.by_id[rid] = (n, res)

    def resolve(self, reference: Any, where: str, types: tuple[str, ...]) -> tuple[str, dict[str, Any]] | None:
        ref = (reference or {}).get("reference") if isinstance(reference, dict) else None
        if not isinstance(ref, str) or not ref.startswith("#") or ref[1:] not in self.by_id:
            self.reader.fail(where, "must reference a contained resource (#id)", "invalid")
            return None
        n, res = self.by_id[ref[1:]]
        if res.get("resourceType") not in types:
            self.reader.fail(where, f"must reference a contained {' or '.join(types)}", "invalid")
            return None
        self.used.add(ref[1:])
        return f"Consent.contained[{n}]", res

    def report_unused(self) -> None:
        for rid, (n, _) in self.by_id.items():
            if rid not in self.used:
                self.reader.fail(f"Consent.contained[{n}]", f"contained resource '{rid}' is not part of a CASUS form")


def _single_text_name(r: Reader, res: dict[str, Any], where: str) -> str:
    names = res.get("name")
    if isinstance(names, dict):  # Organization-style single name never reaches here; keep the check simple
        names = [names]
    if not names or len(names) != 1 or not isinstance(names[0].get("text"), str):
        r.fail(f"{where}.name", "exactly one name with text is required", "required")
        return ""
    return names[0]["text"]


def read_identifiers(r: Reader, items: Any, where: str) -> tuple[Identifier, ...]:
    out = []
    for n, ident in enumerate(items or []):
        alias = codes.identifier_alias(ident.get("system", ""))
        if alias is None:
            r.fail(f"{where}[{n}].system", f"identifier system {ident.get('system')!r} is not one CASUS records", "code-invalid")
            continue
        out.append(Identifier(alias, ident.get("value", "")))
    return tuple(out)


def read_professional(r: Reader, cont: Contained, reference: Any, where: str) -> Professional | None:
    found = cont.resolve(reference, where, ("Practitioner",))
    if not found:
        return None
    path, res = found
    r.allow_only(res, {"resourceType", "id", "identifier", "name"}, path)
    return Professional(_single_text_name(r, res, path), read_identifiers(r, res.get("identifier"), f"{path}.identifier"))


def read_young_person(r: Reader, cont: Contained, reference: Any, where: str) -> YoungPerson | None:
    found = cont.resolve(reference, where, ("Patient",))
    if not found:
        return None
    path, res = found
    r.allow_only(res, {"resourceType", "id", "identifier", "name", "birthDate"}, path)
    nhs = local = None
    for n, ident in enumerate(res.get("identifier") or []):
        if ident.get("system") == codes.NHS_NUMBER:
            nhs = ident.get("value")
        elif ident.get("system") == codes.ID_LOCAL_PATIENT:
            local = ident.get("value")
        else:
            r.fail(f"{path}.identifier[{n}]", "only the NHS number and the CASUS local id are recorded", "code-invalid")
    if nhs is None:
        r.fail(f"{path}.identifier", f"the young person needs an NHS number ({codes.NHS_NUMBER})", "required")
    ref_ident = (reference or {}).get("identifier")
    if ref_ident and (ref_ident.get("system") != codes.NHS_NUMBER or ref_ident.get("value") != nhs):
        r.fail(f"{where}.identifier", "the patient reference's NHS number differs from the contained Patient's", "invariant")
    birth = r.parse_date(res.get("birthDate"), f"{path}.birthDate")
    name = _single_text_name(r, res, path)
    if nhs is None or birth is None:
        return None
    return YoungPerson(nhs, name, birth, local)


def read_person_resource(r: Reader, cont: Contained, reference: Any, where: str) -> dict[str, Any] | None:
    """The person's descriptive fields (everything but the choice) from a contained RelatedPerson/PractitionerRole."""
    found = cont.resolve(reference, where, ("RelatedPerson", "PractitionerRole"))
    if not found:
        return None
    path, res = found
    if res["resourceType"] == "RelatedPerson":
        r.allow_only(res, {"resourceType", "id", "identifier", "patient", "relationship", "name"}, path)
        if (res.get("patient") or {}).get("reference") != f"#{YOUNG_PERSON_ID}":
            r.fail(f"{path}.patient", "must reference the contained young person", "invariant")
        role = codes.PERSON_ROLES.first_match(functools.reduce(operator.iadd, ((c.get("coding") or []) for c in res.get("relationship") or []), []))
        if role is None or codes.PERSON_ROLES.row(role).kind != "family":
            r.fail(f"{path}.relationship", "relationship must be a coding from the CASUS person-role table", "code-invalid")
        return {
            "id": res["id"],
            "name": _single_text_name(r, res, path),
            "role": role or "",
            "identifiers": read_identifiers(r, res.get("identifier"), f"{path}.identifier"),
            "organisation": None,
        }
    r.allow_only(res, {"resourceType", "id", "practitioner", "organization", "code"}, path)
    role = codes.PERSON_ROLES.first_match(functools.reduce(operator.iadd, ((c.get("coding") or []) for c in res.get("code") or []), []))
    if role is None or codes.PERSON_ROLES.row(role).kind != "professional":
        r.fail(f"{path}.code", "code must be a professional coding from the CASUS person-role table", "code-invalid")
    who = read_professional(r, cont, res.get("practitioner"), f"{path}.practitioner")
    org = None
    if "organization" in res:
        o = res["organization"]
        r.allow_only(o, {"display", "identifier"}, f"{path}.organization")
        ods = None
        if "identifier" in o:
            if o["identifier"].get("system") != codes.ODS_ORGANIZATION:
                r.fail(f"{path}.organization.identifier.system", f"organisations are identified by {codes.ODS_ORGANIZATION}", "code-invalid")
            ods = o["identifier"].get("value")
        if not isinstance(o.get("display"), str):
            r.fail(f"{path}.organization.display", "the organisation's name is required", "required")
        org = Organisation(o.get("display", ""), ods)
    return {"id": res["id"], "name": who.name if who else "", "role": role or "", "identifiers": who.identifiers if who else (), "organisation": org}


def read_extensions(r: Reader, cont: Contained, items: Any) -> tuple[Professional | None, str | None, Competence | None, Exceptions | None]:
    recorder = basis = competence = explained = None
    seen: set[str] = set()
    for n, ext in enumerate(items or []):
        where = f"Consent.extension[{n}]"
        url = ext.get("url")
        if url in seen:
            r.fail(where, f"extension {url} appears more than once", "duplicate")
            continue
        seen.add(url)
        if url == codes.EXT_RECORDED_BY:
            recorder = read_professional(r, cont, ext.get("valueReference"), f"{where}.valueReference")
        elif url == codes.EXT_DECISION_BASIS:
            basis = codes.DECISION_BASIS.from_coding(ext.get("valueCoding") or {})
            if basis is None:
                r.fail(f"{where}.valueCoding", "not a CASUS decision basis code", "code-invalid")
        elif url == codes.EXT_COMPETENCE:
            subs = {e.get("url"): e for e in ext.get("extension") or []}
            who = read_professional(r, cont, (subs.get("assessor") or {}).get("valueReference"), f"{where}.extension('assessor')")
            when = r.parse_date((subs.get("date") or {}).get("valueDate"), f"{where}.extension('date')")
            if who and when:
                competence = Competence(who, when)
        elif url == codes.EXT_EXCEPTIONS_EXPLAINED:
            subs = {e.get("url"): e for e in ext.get("extension") or []}
            flag = (subs.get("explained") or {}).get("valueBoolean")
            if not isinstance(flag, bool):
                r.fail(f"{where}.extension('explained')", "valueBoolean is required", "required")
            on = r.parse_date(subs["date"].get("valueDate"), f"{where}.extension('date')") if "date" in subs else None
            explained = Exceptions(bool(flag), on)
        else:
            r.fail(where, f"extension {url!r} is not part of the CASUS profile")
    for url in REQUIRED_EXTENSIONS - seen:
        r.fail(f"Consent.extension('{url}')", "required by the CASUS profile", "required")
    return recorder, basis, competence, explained


REQUIRED_EXTENSIONS = frozenset({codes.EXT_RECORDED_BY, codes.EXT_DECISION_BASIS, codes.EXT_EXCEPTIONS_EXPLAINED})


def read_grantor(r: Reader, reference: Any, where: str, basis: str | None) -> str | None:
    """The person_id of the decider when a parent decided; checks the grantor matches the basis.

    With no (known) decision basis there is nothing to judge the grantor against: the missing basis is
    reported where it belongs, and a finding about the grantor would not be true of the Consent.
    """
    if basis is None:
        return None
    ref = (reference or {}).get("reference") if isinstance(reference, dict) else None
    if basis == "parental-responsibility":
        if not isinstance(ref, str) or not ref.startswith("#") or ref[1:] in RESERVED_IDS:
            r.fail(where, "with parental-responsibility basis the grantor is a contained person with parental responsibility", "invariant")
            return None
        return ref[1:]
    if ref != f"#{YOUNG_PERSON_ID}":
        r.fail(where, "the young person decides on this basis, so they must be the grantor", "invariant")
    return None


def decision_maker(basis: str | None, competence: Competence | None, person_id: str | None) -> DecisionMaker | None:
    if basis is None:
        return None
    return DecisionMaker(basis, competence, person_id)  # type: ignore[arg-type]


def person_from(fields: dict[str, Any], sharing: str, information_types: tuple[str, ...], period: Period | None) -> Person:
    return Person(
        id=fields["id"],
        name=fields["name"],
        role=fields["role"],
        sharing=sharing,  # type: ignore[arg-type]
        organisation=fields["organisation"],
        identifiers=fields["identifiers"],
        information_types=information_types,
        period=period,
    )


def read_period(r: Reader, value: Any, where: str) -> Period | None:
    if value is None:
        return None
    r.allow_only(value, {"start", "end"}, where)
    start = r.parse_date(value["start"], f"{where}.start") if "start" in value else None
    end = r.parse_date(value["end"], f"{where}.end") if "end" in value else None
    return Period(start, end)


def read_actor(r: Reader, actors: Any, where: str) -> Any:
    if not isinstance(actors, list) or len(actors) != 1:
        r.fail(f"{where}.actor", "a CASUS person provision names exactly one recipient", "invariant")
        return None
    r.exact_coding(actors[0].get("role"), codes.RECIPIENT_ROLE_CODING, f"{where}.actor[0].role")
    return actors[0].get("reference")


def read_disclose_action(r: Reader, actions: Any, where: str) -> None:
    if not isinstance(actions, list) or len(actions) != 1:
        r.fail(f"{where}.action", "CASUS provisions govern exactly one action: disclose", "invariant")
        return
    r.exact_coding(actions[0], codes.ACTION_CODING, f"{where}.action[0]")


def read_exception_provision(r: Reader, prov: dict[str, Any], where: str, found: list[str], *, legacy: bool = False) -> None:
    """A policy exception provision (recognised by its purpose of use): check it and add its kind to ``found``."""
    read_disclose_action(r, prov.get("action"), where)
    kind = read_exception(r, prov.get("purpose"), where, legacy=legacy)
    if kind in found:
        r.fail(where, f"the {kind} exception appears twice", "duplicate")
    elif kind:
        found.append(kind)


def read_person_core(r: Reader, cont: Contained, prov: dict[str, Any], where: str) -> tuple[dict[str, Any] | None, Period | None]:
    """What every person provision has in either version and shape: period, disclose, and one recipient."""
    period = read_period(r, prov.get("period"), f"{where}.period")
    read_disclose_action(r, prov.get("action"), where)
    fields = read_person_resource(r, cont, read_actor(r, prov.get("actor"), where), f"{where}.actor[0].reference")
    return fields, period


CARE_PURPOSE_KEYS = frozenset((c["system"], c["code"]) for c in codes.care_purpose_codings())


def read_care_purposes(r: Reader, purposes: Any, where: str) -> None:
    """A person provision applies to exactly the care purposes: the choice covers care, and a reader must see that."""
    found = [(c.get("system"), c.get("code")) for c in purposes or [] if isinstance(c, dict)]
    if set(found) != CARE_PURPOSE_KEYS or len(found) != len(CARE_PURPOSE_KEYS):
        r.fail(
            f"{where}.purpose",
            "a person provision's purpose of use is exactly the care purposes "
            f"{', '.join(c.code for c in codes.CARE_PURPOSES)} (the young person's choice covers care, nothing else)",
            "value",
        )


def read_information_types(r: Reader, concepts: Any, where: str) -> tuple[str, ...]:
    """The information types of a share provision: one CASUS coding per ``code`` entry."""
    types = []
    for m, concept in enumerate(concepts or []):
        codings = (concept.get("coding") if isinstance(concept, dict) else None) or []
        kind = codes.INFORMATION_TYPES.first_match(codings)
        if kind is None or len(codings) != 1:
            r.fail(f"{where}.code[{m}]", "exactly one CASUS information type coding is required", "code-invalid")
        else:
            types.append(kind)
    return tuple(types)


def is_exception_provision(prov: dict[str, Any]) -> bool:
    """Version 2 exceptions have no actor (anyone) and an exception purpose; anything else is read as a person's."""
    return "actor" not in prov and codes.EXCEPTIONS.first_match([c for c in prov.get("purpose") or [] if isinstance(c, dict)]) is not None


def reject_nesting(r: Reader, prov: dict[str, Any], where: str) -> None:
    if "provision" in prov:
        r.fail(
            f"{where}.provision",
            "a CASUS provision never nests another: FHIR reads a nested provision as an exception to its parent, which readers apply differently",
            "not-supported",
        )


def finish_form(
    r: Reader,
    cont: Contained,
    *,
    form_id: str,
    status: str | None,
    young: YoungPerson | None,
    recorded_at: datetime | None,
    recorder: Professional | None,
    basis: str | None,
    competence: Competence | None,
    grantor_id: str | None,
    explained: Exceptions | None,
    people: list[Person],
    exceptions: list[str],
) -> ConsentForm:
    """The form read from either FHIR version, or InvalidInput listing every element that stood in the way."""
    cont.report_unused()
    if r.issues:
        raise InvalidInput([not_casus(len(r.issues)), *r.issues])
    form = ConsentForm(
        form_id=form_id,
        status=status,  # type: ignore[arg-type]
        young_person=young,  # type: ignore[arg-type]
        recorded=Recorded(recorded_at, recorder),  # type: ignore[arg-type]
        decision_maker=decision_maker(basis, competence, grantor_id),  # type: ignore[arg-type]
        people=tuple(people),
        exceptions=Exceptions(explained.explained, explained.explained_on, tuple(exceptions)),  # type: ignore[union-attr]
    )
    check(form)
    return form


def read_exception(r: Reader, purposes: Any, where: str, *, legacy: bool = False) -> str | None:
    kind = codes.EXCEPTIONS.first_match([c for c in purposes or [] if isinstance(c, dict)])
    if kind is None:
        r.fail(f"{where}.purpose", "purpose of use is not a CASUS policy exception (THREAT, HLEGAL)", "code-invalid")
        return None
    expected = {(c["system"], c["code"]) for c in (legacy_exception_purposes(kind) if legacy else exception_purposes(kind))}
    if {(c.get("system"), c.get("code")) for c in purposes if isinstance(c, dict)} != expected or len(purposes) != len(expected):
        listed = ", ".join(sorted(c for _, c in expected))
        why = (
            f"the {kind} exception carries exactly {listed} in this (mapping version 1) shape"
            if legacy
            else f"the {kind} exception's purpose of use is exactly {listed}: a reader would permit any other code listed here too"
        )
        r.fail(f"{where}.purpose", why, "value")
    return kind
