"""The consent page's HTML form <-> the CASUS form document, and each rule's issue -> the field it concerns.

The page posts plain fields (no JavaScript needed); they become the same JSON
document the forms API takes, which ``form.parse_form`` checks with the same
schema and cross-field rules, so the page enforces no rule of its own and
misses none: every issue it gets back is shown beside the field its JSON path
names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from werkzeug.datastructures import MultiDict

from ..form import EXCEPTION_PROVISIONS, ConsentForm
from ..outcome import Issue

#: New person rows a blank page offers, and how many rows one request may carry (the schema's limit is 50).
BLANK_ROWS = 1
MAX_ROWS = 50


#: What a posted form offers (werkzeug's MultiDict).
FormFields = MultiDict[str, str]


@dataclass
class PersonRow:
    id: str
    name: str = ""
    role: str = ""
    organisation: str = ""
    ods_code: str = ""
    identifier_system: str = ""
    identifier_value: str = ""
    sharing: str = ""
    information_types: list[str] = field(default_factory=list)
    start: str = ""
    end: str = ""
    remove: bool = False

    @property
    def is_blank(self) -> bool:
        return not any(
            (
                self.name,
                self.role,
                self.organisation,
                self.ods_code,
                self.identifier_value,
                self.sharing,
                self.information_types,
                self.start,
                self.end,
            )
        )


@dataclass
class PageValues:
    """Everything the record/change page shows in its fields."""

    form_id: str
    nhs_number: str
    version: int | None = None
    name: str = ""
    birth_date: str = ""
    local_id: str = ""
    recorded_by: str = ""
    basis: str = ""
    competence_by: str = ""
    competence_on: str = ""
    decider: str = ""
    explained: bool = False
    explained_on: str = ""
    people: list[PersonRow] = field(default_factory=list)


def values_from_form(form: ConsentForm, version: int, recorded_by: str) -> PageValues:
    dm = form.decision_maker
    rows = [
        PersonRow(
            id=p.id,
            name=p.name,
            role=p.role,
            organisation=p.organisation.name if p.organisation else "",
            ods_code=(p.organisation.ods_code or "") if p.organisation else "",
            identifier_system=p.identifiers[0].system if p.identifiers else "",
            identifier_value=p.identifiers[0].value if p.identifiers else "",
            sharing=p.sharing,
            information_types=list(p.information_types),
            start=p.period.start.isoformat() if p.period and p.period.start else "",
            end=p.period.end.isoformat() if p.period and p.period.end else "",
        )
        for p in form.people
    ]
    return PageValues(
        form_id=form.form_id,
        nhs_number=form.young_person.nhs_number,
        version=version,
        name=form.young_person.name,
        birth_date=form.young_person.birth_date.isoformat(),
        local_id=form.young_person.local_id or "",
        recorded_by=recorded_by,
        basis=dm.basis,
        competence_by=dm.competence.assessed_by.name if dm.competence else "",
        competence_on=dm.competence.assessed_on.isoformat() if dm.competence else "",
        decider=dm.person_id or "",
        explained=form.exceptions.explained,
        explained_on=form.exceptions.explained_on.isoformat() if form.exceptions.explained_on else "",
        people=with_blank_rows(rows),
    )


def with_blank_rows(rows: list[PersonRow], blank: int = BLANK_ROWS) -> list[PersonRow]:
    """The rows, with empty ones added until ``blank`` of them are empty, each with an id no other row has."""
    taken = {r.id for r in rows}
    out = list(rows)
    missing = blank - sum(1 for r in rows if r.is_blank)
    n = 1
    while missing > 0 and len(out) < MAX_ROWS:
        if f"person-{n}" not in taken:
            out.append(PersonRow(id=f"person-{n}"))
            taken.add(f"person-{n}")
            missing -= 1
        n += 1
    return out


def _text(fields: FormFields, key: str) -> str:
    value = fields.get(key, "")
    return value.strip() if isinstance(value, str) else ""


def values_from_post(fields: FormFields, form_id: str, nhs_number: str) -> PageValues:
    rows = []
    rows_text = _text(fields, "rows")
    count = min(int(rows_text), MAX_ROWS) if rows_text.isascii() and rows_text.isdigit() and len(rows_text) <= 3 else 0
    for i in range(count):
        p = f"p-{i}-"
        rows.append(
            PersonRow(
                id=_text(fields, p + "id") or f"person-{i + 1}",
                name=_text(fields, p + "name"),
                role=_text(fields, p + "role"),
                organisation=_text(fields, p + "organisation"),
                ods_code=_text(fields, p + "ods").upper(),
                identifier_system=_text(fields, p + "idsys"),
                identifier_value=_text(fields, p + "idval"),
                sharing=_text(fields, p + "sharing"),
                information_types=[t for t in fields.getlist(p + "types") if t],
                start=_text(fields, p + "start"),
                end=_text(fields, p + "end"),
                remove=bool(fields.get(p + "remove")),
            )
        )
    version = _text(fields, "version")
    return PageValues(
        form_id=form_id,
        nhs_number=nhs_number,
        version=version_number(version),
        name=_text(fields, "yp-name"),
        birth_date=_text(fields, "yp-birthDate"),
        local_id=_text(fields, "yp-localId"),
        recorded_by=_text(fields, "recorded-by"),
        basis=_text(fields, "basis"),
        competence_by=_text(fields, "competence-by"),
        competence_on=_text(fields, "competence-on"),
        decider=_text(fields, "decider"),
        explained=bool(fields.get("exceptions-explained")),
        explained_on=_text(fields, "exceptions-on"),
        people=rows,
    )


def version_number(text: str) -> int | None:
    """A version the page carried, or None; a number no store could hold is no version at all."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 9 else None


def kept_rows(values: PageValues) -> list[tuple[int, PersonRow]]:
    """The rows that become people on the form (row number, row): not blank, not marked for removal."""
    return [(i, r) for i, r in enumerate(values.people) if not r.is_blank and not r.remove]


def document(values: PageValues, *, status: str, recorded_at: datetime) -> dict[str, Any]:
    """The CASUS form document the page's fields describe; a blank field is left out, so its rule names it."""
    young: dict[str, Any] = {"nhsNumber": values.nhs_number}
    _put(young, "name", values.name)
    _put(young, "birthDate", values.birth_date)
    _put(young, "localId", values.local_id)
    by: dict[str, Any] = {}
    _put(by, "name", values.recorded_by)
    decider: dict[str, Any] = {}
    _put(decider, "basis", values.basis)
    if values.basis == "competent-under-16" and (values.competence_by or values.competence_on):
        competence: dict[str, Any] = {}
        if values.competence_by:
            competence["assessedBy"] = {"name": values.competence_by}
        _put(competence, "assessedOn", values.competence_on)
        decider["competence"] = competence
    if values.basis == "parental-responsibility":
        _put(decider, "personId", values.decider)
    exceptions: dict[str, Any] = {"explained": values.explained, "provisions": list(EXCEPTION_PROVISIONS)}
    _put(exceptions, "explainedOn", values.explained_on)
    return {
        "formId": values.form_id,
        "status": status,
        "youngPerson": young,
        "recorded": {"date": recorded_at.isoformat(timespec="seconds"), "by": by},
        "decisionMaker": decider,
        "people": [_person(r) for _, r in kept_rows(values)],
        "exceptions": exceptions,
    }


def _put(target: dict[str, Any], key: str, value: str) -> None:
    if value:
        target[key] = value


def _person(row: PersonRow) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": row.id}
    _put(doc, "name", row.name)
    _put(doc, "role", row.role)
    if row.organisation or row.ods_code:
        organisation: dict[str, Any] = {}
        _put(organisation, "name", row.organisation)
        _put(organisation, "odsCode", row.ods_code)
        doc["organisation"] = organisation
    if row.identifier_value:
        doc["identifiers"] = [{"system": row.identifier_system, "value": row.identifier_value}]
    _put(doc, "sharing", row.sharing)
    if row.information_types:
        doc["informationTypes"] = row.information_types
    if row.start or row.end:
        period: dict[str, str] = {}
        _put(period, "start", row.start)
        _put(period, "end", row.end)
        doc["period"] = period
    return doc


# --------------------------------------------------------------------------- issues -> fields

_FIELDS: dict[str, str] = {
    "$.youngPerson": "yp-name",
    "$.youngPerson.nhsNumber": "yp-nhsNumber",
    "$.youngPerson.name": "yp-name",
    "$.youngPerson.birthDate": "yp-birthDate",
    "$.youngPerson.localId": "yp-localId",
    "$.recorded.by": "recorded-by",
    "$.recorded.by.name": "recorded-by",
    "$.recorded.date": "yp-birthDate",  # the recording moment is now; what can be wrong is the date of birth
    "$.decisionMaker": "basis",
    "$.decisionMaker.basis": "basis",
    "$.decisionMaker.competence": "competence-by",
    "$.decisionMaker.competence.assessedBy": "competence-by",
    "$.decisionMaker.competence.assessedBy.name": "competence-by",
    "$.decisionMaker.competence.assessedOn": "competence-on",
    "$.decisionMaker.personId": "decider",
    "$.exceptions": "exceptions-explained",
    "$.exceptions.explained": "exceptions-explained",
    "$.exceptions.explainedOn": "exceptions-on",
    "$.exceptions.provisions": "exceptions-explained",
}
_PERSON_FIELDS: dict[str, str] = {
    "": "name",
    ".id": "name",
    ".name": "name",
    ".role": "role",
    ".organisation": "organisation",
    ".organisation.name": "organisation",
    ".organisation.odsCode": "ods",
    ".identifiers": "idval",
    ".sharing": "sharing",
    ".informationTypes": "types",
    ".period": "start",
    ".period.start": "start",
    ".period.end": "end",
}
_PERSON = re.compile(r"^\$\.people\[(\d+)\](.*)$")
_REQUIRED = re.compile(r"^'(\w+)' is a required property$")
_INDEX = re.compile(r"\[\d+\]")


@dataclass(frozen=True)
class FieldIssue:
    field: str  # the HTML id of the control, "" for the page as a whole
    message: str


def field_issues(issues: Sequence[Issue], values: PageValues) -> list[FieldIssue]:
    """Each issue at the control its JSON path names (the people's paths count only kept rows)."""
    rows = [i for i, _ in kept_rows(values)]
    out = []
    for issue in issues:
        where, message = issue.expression, issue.diagnostics
        if (required := _REQUIRED.match(message)) is not None:
            where = f"{where}.{required.group(1)}"
            message = f"{_LABELS.get(required.group(1), required.group(1))} is required"
        out.append(FieldIssue(_control(where, rows), message))
    return out


_LABELS = {
    "name": "a name",
    "role": "a role",
    "sharing": "share or do not share",
    "birthDate": "the date of birth",
    "basis": "who decides",
    "competence": "the competence assessment",
    "assessedBy": "who assessed competence",
    "assessedOn": "the date competence was assessed",
    "personId": "the person with parental responsibility who decides",
}


def _control(where: str, rows: Sequence[int]) -> str:
    if (person := _PERSON.match(where)) is not None:
        n = int(person.group(1))
        rest = _INDEX.sub("", person.group(2))
        row = rows[n] if n < len(rows) else n
        suffix = next((v for k, v in sorted(_PERSON_FIELDS.items(), key=lambda kv: -len(kv[0])) if rest.startswith(k)), "name")
        return f"p-{row}-{suffix}"
    trimmed = where
    while trimmed:
        if trimmed in _FIELDS:
            return _FIELDS[trimmed]
        trimmed = trimmed.rpartition(".")[0] if "." in trimmed else ""
    return ""


def issues_by_field(found: Sequence[FieldIssue]) -> Mapping[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for f in found:
        grouped.setdefault(f.field, []).append(f.message)
    return grouped
