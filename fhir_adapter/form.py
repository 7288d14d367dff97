"""The CASUS consent form: the adapter's native shape.

The JSON Schema in ``profiles/casus-consent-form.schema.json`` is the published
contract and is checked first; the dataclasses here are what the rest of the
adapter works with, so that mappings and decisions never handle raw dicts.
Rules a schema cannot express (the decision basis against the young person's
age on the recording date, references between people, duplicates) are checked
in ``cross_field_issues`` and reported in the same Issue shape.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from typing import Any, Literal

import jsonschema
import jsonschema_rs

from . import nhs_number
from .outcome import InvalidInput, Issue, error
from .package_data import profiles_dir

PROFILES_DIR = profiles_dir()
SCHEMA_PATH = PROFILES_DIR / "casus-consent-form.schema.json"

Status = Literal["draft", "active", "withdrawn", "entered-in-error"]
Basis = Literal["aged-16-17", "competent-under-16", "parental-responsibility"]
Sharing = Literal["share", "do-not-share"]
EXCEPTION_PROVISIONS: tuple[str, ...] = ("risk-of-significant-harm", "court-order")
FAMILY_ROLES = frozenset(
    {"mother", "father", "parent", "step-parent", "foster-parent", "grandparent", "guardian", "sibling", "other-family", "carer", "friend"}
)
#: Roles that can hold parental responsibility and so decide for an under-16 who is not competent.
PARENTAL_RESPONSIBILITY_ROLES = frozenset({"mother", "father", "parent", "step-parent", "foster-parent", "guardian"})


@dataclass(frozen=True)
class Identifier:
    system: str  # a CASUS alias (gmc, nmc, hcpc, gphc, sds-user-id); the mappings know the URIs
    value: str


@dataclass(frozen=True)
class Professional:
    name: str
    identifiers: tuple[Identifier, ...] = ()


@dataclass(frozen=True)
class Organisation:
    name: str
    ods_code: str | None = None


@dataclass(frozen=True)
class Period:
    start: date | None = None
    end: date | None = None

    def covers(self, day: date) -> bool:
        return (self.start is None or self.start <= day) and (self.end is None or day <= self.end)


@dataclass(frozen=True)
class Person:
    id: str
    name: str
    role: str
    sharing: Sharing
    organisation: Organisation | None = None
    identifiers: tuple[Identifier, ...] = ()
    information_types: tuple[str, ...] = ()
    period: Period | None = None

    @property
    def is_family(self) -> bool:
        return self.role in FAMILY_ROLES


@dataclass(frozen=True)
class YoungPerson:
    nhs_number: str
    name: str
    birth_date: date
    local_id: str | None = None

    def age_on(self, day: date) -> int:
        had_birthday = (day.month, day.day) >= (self.birth_date.month, self.birth_date.day)
        return day.year - self.birth_date.year - (0 if had_birthday else 1)


@dataclass(frozen=True)
class Recorded:
    date: datetime
    by: Professional


@dataclass(frozen=True)
class Competence:
    assessed_by: Professional
    assessed_on: date


@dataclass(frozen=True)
class DecisionMaker:
    basis: Basis
    competence: Competence | None = None
    person_id: str | None = None


@dataclass(frozen=True)
class Exceptions:
    explained: bool
    explained_on: date | None = None
    provisions: tuple[str, ...] = EXCEPTION_PROVISIONS


@dataclass(frozen=True)
class ConsentForm:
    form_id: str
    status: Status
    young_person: YoungPerson
    recorded: Recorded
    decision_maker: DecisionMaker
    people: tuple[Person, ...]
    exceptions: Exceptions = field(default_factory=lambda: Exceptions(explained=False))

    def person(self, person_id: str) -> Person | None:
        return next((p for p in self.people if p.id == person_id), None)


# --------------------------------------------------------------------------- parsing


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema())
    cls.check_schema(schema())
    return cls(schema(), format_checker=cls.FORMAT_CHECKER)


def _patterns_as_formats(node: Any, formats: dict[str, Callable[[str], bool]]) -> Any:
    """The schema with every ``pattern`` turned into a named format that Python's ``re.search`` checks.

    So the fast validator matches exactly what the reference validator (jsonschema, which uses
    ``re.search``) matches: Rust's regex classes differ from Python's at the edges (which characters
    ``\\s`` covers, what ``$`` matches before).  A format, like a pattern, constrains strings only.
    """
    if isinstance(node, list):
        return [_patterns_as_formats(item, formats) for item in node]
    if not isinstance(node, dict):
        return node
    keyword = isinstance(node.get("pattern"), str)  # a property *named* pattern holds a schema, not a string
    out = {key: _patterns_as_formats(value, formats) for key, value in node.items() if not (keyword and key == "pattern")}
    if keyword:
        if "format" in node:
            raise ValueError("a schema node with both pattern and format cannot be checked by the fast validator")
        name = f"casus-pattern-{len(formats)}"
        formats[name] = _matcher(node["pattern"])
        out["format"] = name
    return out


def _matcher(pattern: str) -> Callable[[str], bool]:
    search = re.compile(pattern).search
    return lambda value: search(value) is not None


@lru_cache(maxsize=1)
def _fast_validator() -> jsonschema_rs.Validator:
    """A compiled validator of the same schema, about a hundred times faster than jsonschema on a valid form.

    It only says yes or no; a form it rejects is checked again by ``_validator`` for the issues, with their
    paths and messages.  Stored forms are read back through ``parse_form`` on the decision path, so this is
    what keeps a patient's first decision (and every bulk load) cheap.
    """
    formats: dict[str, Callable[[str], bool]] = {}
    converted = _patterns_as_formats(copy.deepcopy(schema()), formats)
    return jsonschema_rs.validator_for(converted, formats=formats, validate_formats=True, ignore_unknown_formats=False)


@lru_cache(maxsize=1)
def information_type_codes() -> frozenset[str]:
    """The closed CASUS list of information types, as the published schema states it."""
    return frozenset(schema()["$defs"]["person"]["properties"]["informationTypes"]["items"]["enum"])


@lru_cache(maxsize=1)
def person_role_codes() -> frozenset[str]:
    return frozenset(schema()["$defs"]["person"]["properties"]["role"]["enum"])


def json_path(path: Any) -> str:
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def schema_issues(document: Any) -> list[Issue]:
    """Every JSON Schema violation, each naming the JSON path of the offending field."""
    fast = _fast_validator()
    try:
        if fast.is_valid(document):
            return []
    except (ValueError, TypeError, OverflowError):  # not plain JSON data (a huge integer, a lone surrogate...)
        pass  # the reference validator below decides and names the issues
    issues = []
    for err in sorted(_validator().iter_errors(document), key=lambda e: list(map(str, e.absolute_path))):
        where = json_path(err.absolute_path)
        message = err.message if len(err.message) <= 300 else err.message[:297] + "..."
        code = "required" if err.validator == "required" else "value" if err.validator in ("enum", "pattern", "const") else "structure"
        issues.append(error(code, where, message))
    return issues


def _date(value: str, where: str, issues: list[Issue]) -> date | None:
    try:
        return date.fromisoformat(value)
    except ValueError:
        issues.append(error("value", where, f"'{value}' is not a calendar date"))
        return None


def _datetime(value: str, where: str, issues: list[Issue]) -> datetime | None:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        issues.append(error("value", where, f"'{value}' is not a valid date and time"))
        return None


def _identifiers(items: list[dict[str, str]] | None) -> tuple[Identifier, ...]:
    return tuple(Identifier(i["system"], i["value"]) for i in items or ())


def _professional(doc: dict[str, Any]) -> Professional:
    return Professional(doc["name"], _identifiers(doc.get("identifiers")))


def _period(doc: dict[str, str] | None, where: str, issues: list[Issue]) -> Period | None:
    if doc is None:
        return None
    start = _date(doc["start"], f"{where}.start", issues) if "start" in doc else None
    end = _date(doc["end"], f"{where}.end", issues) if "end" in doc else None
    return Period(start, end)


def parse_form(document: Any) -> ConsentForm:
    """Check a CASUS form document (schema, then cross-field rules) and build the domain model.

    Raises InvalidInput with every issue found.
    """
    issues = schema_issues(document)
    if issues:
        raise InvalidInput(issues)
    yp = document["youngPerson"]
    rec = document["recorded"]
    dm = document["decisionMaker"]
    exc = document["exceptions"]
    birth = _date(yp["birthDate"], "$.youngPerson.birthDate", issues)
    recorded_at = _datetime(rec["date"], "$.recorded.date", issues)
    competence = None
    if "competence" in dm:
        assessed_on = _date(dm["competence"]["assessedOn"], "$.decisionMaker.competence.assessedOn", issues)
        competence = Competence(_professional(dm["competence"]["assessedBy"]), assessed_on)  # type: ignore[arg-type]
    people = []
    for n, p in enumerate(document["people"]):
        org = p.get("organisation")
        people.append(
            Person(
                id=p["id"],
                name=p["name"],
                role=p["role"],
                sharing=p["sharing"],
                organisation=Organisation(org["name"], org.get("odsCode")) if org else None,
                identifiers=_identifiers(p.get("identifiers")),
                information_types=tuple(p.get("informationTypes", ())),
                period=_period(p.get("period"), f"$.people[{n}].period", issues),
            )
        )
    explained_on = _date(exc["explainedOn"], "$.exceptions.explainedOn", issues) if "explainedOn" in exc else None
    if issues:
        raise InvalidInput(issues)
    form = ConsentForm(
        form_id=document["formId"],
        status=document["status"],
        young_person=YoungPerson(yp["nhsNumber"], yp["name"], birth, yp.get("localId")),  # type: ignore[arg-type]
        recorded=Recorded(recorded_at, _professional(rec["by"])),  # type: ignore[arg-type]
        decision_maker=DecisionMaker(dm["basis"], competence, dm.get("personId")),
        people=tuple(people),
        exceptions=Exceptions(exc["explained"], explained_on, tuple(exc["provisions"])),
    )
    check(form)
    return form


def check(form: ConsentForm) -> None:
    """Raise InvalidInput if the domain object breaks a rule of the form (whatever built it)."""
    issues = cross_field_issues(form)
    if issues:
        raise InvalidInput(issues)


#: Statuses of a version that records a choice (one that is, or is proposed to be, in force).  The rules on who
#: may decide at what age apply to these; a withdrawal or an entry in error records no choice, so a young person
#: who has since turned 16 or 18 can still withdraw a consent given under an earlier basis.
CHOICE_STATUSES = frozenset({"draft", "active"})


def cross_field_issues(form: ConsentForm) -> list[Issue]:
    """Rules between fields, reported against the form's JSON paths."""
    issues: list[Issue] = []
    yp = form.young_person
    if not nhs_number.is_valid(yp.nhs_number):
        issues.append(error("value", "$.youngPerson.nhsNumber", "NHS number fails the Modulus 11 check digit"))
    recorded_on = form.recorded.date.date()
    if form.recorded.date.tzinfo is None:
        issues.append(error("value", "$.recorded.date", "the recording time must carry a time zone"))
    if recorded_on < yp.birth_date:
        issues.append(error("invariant", "$.recorded.date", "the form is recorded before the young person's date of birth"))
    if form.status in CHOICE_STATUSES:  # who may decide, by age, matters for a choice; a withdrawal records none
        issues += _basis_issues(form, recorded_on)
    seen_ids: set[str] = set()
    seen_people: set[tuple[str, str]] = set()
    for n, p in enumerate(form.people):
        where = f"$.people[{n}]"
        if p.id in seen_ids:
            issues.append(error("duplicate", f"{where}.id", f"person id '{p.id}' is used twice"))
        seen_ids.add(p.id)
        key = (p.name.casefold(), p.role)
        if key in seen_people:
            issues.append(error("duplicate", where, f"the same person ({p.role}) is listed twice"))
        seen_people.add(key)
        if p.sharing == "do-not-share" and p.information_types:
            issues.append(error("invariant", f"{where}.informationTypes", "a do-not-share person cannot list information types to share"))
        if p.sharing == "share" and not p.information_types:
            issues.append(error("required", f"{where}.informationTypes", "a share person must list at least one information type"))
        if p.organisation and p.is_family:
            issues.append(error("invariant", f"{where}.organisation", f"an organisation is recorded for professionals, not for a {p.role}"))
        if p.id.endswith("-practitioner") or p.id in ("young-person", "recorded-by", "competence-assessor"):
            issues.append(error("value", f"{where}.id", f"person id '{p.id}' is reserved"))
        if p.period and p.period.start and p.period.end and p.period.start > p.period.end:
            issues.append(error("invariant", f"{where}.period", "the period ends before it starts"))
    exc = form.exceptions
    if set(exc.provisions) != set(EXCEPTION_PROVISIONS) or len(exc.provisions) != len(EXCEPTION_PROVISIONS):
        issues.append(error("value", "$.exceptions.provisions", "the policy exceptions are exactly risk-of-significant-harm and court-order"))
    if exc.explained_on and not exc.explained:
        issues.append(error("invariant", "$.exceptions.explainedOn", "an explanation date is given but explained is false"))
    if form.status == "active" and not exc.explained:
        issues.append(error("invariant", "$.exceptions.explained", "an active consent requires that the exceptions were explained"))
    return issues


def _basis_issues(form: ConsentForm, recorded_on: date) -> list[Issue]:
    age = form.young_person.age_on(recorded_on)
    dm = form.decision_maker
    where = "$.decisionMaker.basis"
    if age >= 18:
        return [error("invariant", "$.youngPerson.birthDate", f"the young person was {age} on the recording date; CASUS consents are for under-18s")]
    if dm.basis == "aged-16-17" and age < 16:
        return [error("invariant", where, f"basis aged-16-17 but the young person was {age} on the recording date")]
    if dm.basis != "aged-16-17" and age >= 16:
        return [error("invariant", where, f"the young person was {age} on the recording date and decides for themselves (aged-16-17)")]
    if dm.basis == "competent-under-16" and dm.competence:
        if dm.competence.assessed_on > recorded_on:
            return [error("invariant", "$.decisionMaker.competence.assessedOn", "competence is assessed after the form was recorded")]
        if dm.competence.assessed_on < form.young_person.birth_date:
            return [error("invariant", "$.decisionMaker.competence.assessedOn", "competence is assessed before the date of birth")]
    if dm.basis == "parental-responsibility":
        person = form.person(dm.person_id or "")
        if person is None:
            return [error("invariant", "$.decisionMaker.personId", f"no person with id '{dm.person_id}' in people")]
        if person.role not in PARENTAL_RESPONSIBILITY_ROLES:
            return [error("invariant", "$.decisionMaker.personId", f"a {person.role} does not hold parental responsibility")]
    return []


# --------------------------------------------------------------------------- rendering


def _identifiers_json(ids: tuple[Identifier, ...]) -> list[dict[str, str]]:
    return [{"system": i.system, "value": i.value} for i in ids]


def _professional_json(p: Professional) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": p.name}
    if p.identifiers:
        doc["identifiers"] = _identifiers_json(p.identifiers)
    return doc


def _period_json(p: Period) -> dict[str, str]:
    doc = {}
    if p.start:
        doc["start"] = p.start.isoformat()
    if p.end:
        doc["end"] = p.end.isoformat()
    return doc


def _person_json(p: Person) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": p.id, "name": p.name, "role": p.role, "sharing": p.sharing}
    if p.organisation:
        doc["organisation"] = {"name": p.organisation.name}
        if p.organisation.ods_code:
            doc["organisation"]["odsCode"] = p.organisation.ods_code
    if p.identifiers:
        doc["identifiers"] = _identifiers_json(p.identifiers)
    if p.information_types:
        doc["informationTypes"] = list(p.information_types)
    if p.period:
        doc["period"] = _period_json(p.period)
    return doc


def form_to_json(form: ConsentForm) -> dict[str, Any]:
    """The form as the schema's JSON document (the inverse of parse_form)."""
    yp = form.young_person
    young: dict[str, Any] = {"nhsNumber": yp.nhs_number, "name": yp.name, "birthDate": yp.birth_date.isoformat()}
    if yp.local_id:
        young["localId"] = yp.local_id
    dm: dict[str, Any] = {"basis": form.decision_maker.basis}
    if form.decision_maker.competence:
        c = form.decision_maker.competence
        dm["competence"] = {"assessedBy": _professional_json(c.assessed_by), "assessedOn": c.assessed_on.isoformat()}
    if form.decision_maker.person_id:
        dm["personId"] = form.decision_maker.person_id
    exc: dict[str, Any] = {"explained": form.exceptions.explained, "provisions": list(form.exceptions.provisions)}
    if form.exceptions.explained_on:
        exc["explainedOn"] = form.exceptions.explained_on.isoformat()
    return {
        "formId": form.form_id,
        "status": form.status,
        "youngPerson": young,
        "recorded": {"date": form.recorded.date.isoformat(), "by": _professional_json(form.recorded.by)},
        "decisionMaker": dm,
        "people": [_person_json(p) for p in form.people],
        "exceptions": exc,
    }
