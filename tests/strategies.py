"""Hypothesis strategies for valid CASUS forms (used by the property and fuzz tests)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta, timezone

from hypothesis import strategies as st

from fhir_adapter import nhs_number
from fhir_adapter.form import (
    FAMILY_ROLES,
    PARENTAL_RESPONSIBILITY_ROLES,
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
)
from fhir_adapter.mappings import codes

ALL_ROLES = codes.PERSON_ROLES.values()
PROFESSIONAL_ROLES = tuple(r for r in ALL_ROLES if r not in FAMILY_ROLES)
INFO_TYPES = codes.INFORMATION_TYPES.values()

names = (
    st.text(alphabet=st.characters(codec="utf-8", categories=("L", "Zs"), exclude_characters="\u2028\u2029\x85"), min_size=1, max_size=30)
    .map(lambda s: " ".join(s.split()) or "X")
    .filter(bool)
)


@st.composite
def valid_nhs_numbers(draw: st.DrawFn) -> str:
    first = draw(st.text(alphabet="0123456789", min_size=9, max_size=9).filter(lambda s: nhs_number.check_digit(s) is not None))
    return first + str(nhs_number.check_digit(first))


identifiers = st.builds(Identifier, st.sampled_from(codes.IDENTIFIER_SYSTEMS.values()), st.text(alphabet="ABC0123456789", min_size=1, max_size=12))
professionals = st.builds(Professional, names, st.lists(identifiers, max_size=2).map(tuple))
days = st.dates(min_value=date(2020, 1, 1), max_value=date(2030, 12, 31))


@st.composite
def periods(draw: st.DrawFn) -> Period | None:
    kind = draw(st.sampled_from(["none", "start", "end", "both"]))
    if kind == "none":
        return None
    a, b = sorted([draw(days), draw(days)])
    return Period(a if kind in ("start", "both") else None, b if kind in ("end", "both") else None)


@st.composite
def people(draw: st.DrawFn) -> tuple[Person, ...]:
    count = draw(st.integers(0, 6))
    out = []
    for n in range(count):
        role = draw(st.sampled_from(ALL_ROLES))
        sharing = draw(st.sampled_from(["share", "do-not-share"]))
        types = tuple(draw(st.lists(st.sampled_from(INFO_TYPES), min_size=1, max_size=4, unique=True))) if sharing == "share" else ()
        org = None
        if role in PROFESSIONAL_ROLES and draw(st.booleans()):
            org = Organisation(draw(names), draw(st.one_of(st.none(), st.text(alphabet="ABCDEFGH0123456789", min_size=3, max_size=8))))
        out.append(
            Person(
                id=f"p{n}",
                name=f"{draw(names)} {n}",
                role=role,
                sharing=sharing,
                organisation=org,
                identifiers=tuple(draw(st.lists(identifiers, max_size=2))),
                information_types=types,
                period=draw(periods()),
            )
        )
    return tuple(out)


@st.composite
def consent_forms(draw: st.DrawFn) -> ConsentForm:
    recorded_day = draw(days)
    offset = draw(st.sampled_from([UTC, timezone(timedelta(hours=1)), timezone(timedelta(hours=-5, minutes=-30))]))
    recorded_at = datetime.combine(recorded_day, draw(st.times()).replace(microsecond=0), offset)
    age = draw(st.integers(8, 17))
    birth = recorded_day - timedelta(days=age * 366 + draw(st.integers(0, 360)))
    while YoungPerson("", "", birth).age_on(recorded_day) > age:
        birth += timedelta(days=1)
    young = YoungPerson(draw(valid_nhs_numbers()), draw(names), birth, draw(st.one_of(st.none(), st.just("CASUS-1"))))
    folks = list(draw(people()))
    if age >= 16:
        dm = DecisionMaker("aged-16-17")
    elif draw(st.booleans()):
        dm = DecisionMaker("competent-under-16", Competence(draw(professionals), recorded_day))
    else:
        folks.append(
            Person(
                id="decider",
                name="Parent Decider",
                role=draw(st.sampled_from(sorted(PARENTAL_RESPONSIBILITY_ROLES))),
                sharing="share",
                information_types=("attendance",),
            )
        )
        dm = DecisionMaker("parental-responsibility", person_id="decider")
    status = draw(st.sampled_from(["draft", "active", "withdrawn", "entered-in-error"]))
    explained = status == "active" or draw(st.booleans())
    return ConsentForm(
        form_id=str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1)), version=4)),
        status=status,
        young_person=young,
        recorded=Recorded(recorded_at, draw(professionals)),
        decision_maker=dm,
        people=tuple(folks),
        exceptions=Exceptions(
            explained,
            recorded_day if explained and draw(st.booleans()) else None,
            tuple(draw(st.permutations(["risk-of-significant-harm", "court-order"]))),
        ),
    )
