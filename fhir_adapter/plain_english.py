"""A consent in words: the young person's summary, and what changed between two versions for the team.

The young person's sentences are written for a 12-to-17-year-old ("Your mum can
know when you come to appointments, until 20 May 2027.  Your dad won't be told
anything.") and say what the decision engine's summary says is in force, never
more.  The two exceptions are worded as the CASUS confidentiality policy words
them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from .decision import PersonChange, RecipientSummary, person_changes
from .form import ConsentForm, Period
from .mappings.codes import INFORMATION_TYPES, PERSON_ROLES

#: What each information type means to the young person.
YOUNG_PERSON_TYPES: dict[str, str] = {
    "attendance": "when you come to appointments",
    "engagement-progress": "how you are getting on with us",
    "substance-use": "what you tell us about drugs or alcohol",
    "treatment-plan": "your treatment plan",
    "risk-safety": "any worries about your safety",
    "medication": "any medicine you are given",
    "health-wellbeing": "your health and how you are feeling",
    "family-social": "things about your family, friends and home",
    "correspondence": "copies of letters about you",
}
#: How the young person would name each person on the form.
YOUNG_PERSON_ROLES: dict[str, str] = {
    "mother": "your mum",
    "father": "your dad",
    "parent": "your parent",
    "step-parent": "your step-parent",
    "foster-parent": "your foster parent",
    "grandparent": "your grandparent",
    "guardian": "your guardian",
    "sibling": "your brother or sister",
    "other-family": "someone in your family",
    "carer": "your carer",
    "friend": "your friend",
    "gp": "your GP",
    "school": "your school or college",
    "social-worker": "your social worker",
    "youth-justice": "your youth justice worker",
    "health-professional": "another health worker",
    "other-professional": "another professional",
}
#: The policy's two exceptions, in its words.
EXCEPTIONS: tuple[str, ...] = (
    "If we believe you or another person is at risk of significant harm.",
    "If there is a court order for us to do so.",
)
EXCEPTIONS_AFTER = (
    "If this happens, wherever possible, we will let you know what we are going to share, "
    "who we are going to share it with, and what might happen as a result."
)


def long_date(day: date) -> str:
    """The date as people write it in a letter, with no leading zero.

    >>> long_date(date(2027, 5, 6))
    '6 May 2027'
    """
    return f"{day.day} {day:%B %Y}"


def listed(items: Sequence[str]) -> str:
    """Items as a sentence lists them.

    >>> listed(["a", "b", "c"])
    'a, b and c'
    """
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


@dataclass(frozen=True)
class Sentence:
    """One person, in the young person's words; ``shares`` says which kind, so a page need not rely on colour."""

    person_name: str
    text: str
    shares: bool


def young_person_sentences(form: ConsentForm, in_force: Sequence[RecipientSummary], today: date) -> list[Sentence]:
    """One sentence per person on the form in force, from the engine's summary of it."""
    out = []
    for entry in in_force:
        person = form.person(entry.person_id)
        who = YOUNG_PERSON_ROLES.get(entry.role, "someone")
        name = person.name if person else ""
        label = f"{who[0].upper()}{who[1:]} ({name})" if name else who.capitalize()
        if entry.sharing != "share":
            out.append(Sentence(name, f"{label} won't be told anything.", False))
            continue
        told = listed([YOUNG_PERSON_TYPES[t] for t in (person.information_types if person else ())])
        period = entry.period
        if not entry.in_period and period is not None and period.start is not None and period.start > today:
            out.append(
                Sentence(
                    name, f"{label} can know {told}, from {long_date(period.start)}{_until(period)}. Until then they won't be told anything.", True
                )
            )
        elif not entry.in_period:
            out.append(Sentence(name, f"{label} won't be told anything now: the time you agreed has ended.", False))
        else:
            out.append(Sentence(name, f"{label} can know {told}{_until(period)}. Nothing else.", True))
    return out


def _until(period: Period | None) -> str:
    return f", until {long_date(period.end)}" if period is not None and period.end is not None else ""


# --------------------------------------------------------------------------- for the team


def change_lines(before: ConsentForm | None, after: ConsentForm) -> list[str]:
    """What a version changed against the one before it, one line each, for the version history."""
    if before is None:
        count = len(after.people)
        return [f"First recorded ({after.status}), with {count} {'person' if count == 1 else 'people'}."]
    lines = []
    if before.status != after.status:
        lines.append(f"Status: {before.status} → {after.status}.")
    if before.decision_maker != after.decision_maker:
        lines.append(f"Who decides: {before.decision_maker.basis} → {after.decision_maker.basis}.")
    if before.exceptions.explained != after.exceptions.explained:
        lines.append("Exceptions explained: " + ("yes" if after.exceptions.explained else "no") + ".")
    names = {p.id: p.name for p in (*before.people, *after.people)}
    lines += [_person_line(c, names.get(c.person_id, c.person_id)) for c in person_changes(before.people, after.people)]
    if before.young_person != after.young_person:
        lines.append("The young person's details changed.")
    return lines or ["No change to the choices (saved again)."]


def _types(codes: Sequence[str]) -> str:
    return listed([INFORMATION_TYPES.row(c).display.lower() for c in codes])


def _person_line(change: PersonChange, name: str) -> str:
    role = PERSON_ROLES.row(change.role).display
    who = f"{name} ({role})"
    if change.change == "removed":
        return f"{who} removed."
    parts = []
    if change.change == "added":
        parts.append(f"{who} added: " + ("share" if change.sharing_after == "share" else "do not share"))
    elif change.sharing_before != change.sharing_after:
        parts.append(f"{who}: {change.sharing_before} → {change.sharing_after}")
    else:
        parts.append(f"{who} changed")
    if change.gains:
        parts.append(f"may now know {_types(change.gains)}")
    if change.losses:
        parts.append(f"no longer {_types(change.losses)}")
    if change.change == "changed" and change.period_before != change.period_after:
        parts.append(f"time limit {_period(change.period_before)} → {_period(change.period_after)}")
    return "; ".join(parts) + "."


def _period(period: Period | None) -> str:
    if period is None:
        return "none"
    start = long_date(period.start) if period.start else "the start"
    end = long_date(period.end) if period.end else "no end"
    return f"{start} to {end}"
