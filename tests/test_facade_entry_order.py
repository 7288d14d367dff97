"""Over HTTP, at/known-at answers never depend on the order versions were entered in beyond what the rule says.

The rule: the version in force at ``at`` is the one whose choice was made last by then, among the versions
stored by ``known-at``.  So once everything is stored the entry order cannot matter, and an answer as known at
a moment equals the answer of an adapter that had only the versions stored by then.  Each history is typed in,
through the forms API, one version a day on the store's clock.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_adapter.config import Settings
from fhir_adapter.server import create_app
from fhir_adapter.store import Store
from tests.support.facade import bearer, example_form, grants

FORM_ID = "0b6c3f4e-2d1a-4c8b-9e7f-1a2b3c4d5e6f"
NHS = "9434765919"
# Choices made in the past (a future one is refused), while the sample young person is under 16.
moments = st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2026, 11, 1), timezones=st.just(UTC))
Choice = tuple[datetime, str, str]  # when made, status, the mother's sharing


class StoreClock:
    """The store's clock: versions are stored at exact, chosen moments."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


@st.composite
def histories(draw: st.DrawFn) -> list[Choice]:
    made = draw(st.lists(moments, min_size=1, max_size=4, unique_by=lambda m: m.date()))
    statuses = st.sampled_from(["active", "active", "withdrawn", "entered-in-error", "draft"])
    return [(at, draw(statuses), draw(st.sampled_from(["share", "do-not-share"]))) for at in made]


@st.composite
def questions(draw: st.DrawFn) -> dict[str, str]:
    return {
        "patient": NHS,
        "recipient-role": draw(st.sampled_from(["mother", "parent", "father", "court"])),
        "information-type": draw(st.sampled_from(["attendance", "medication"])),
        "purpose": draw(st.sampled_from(["TREAT", "THREAT"])),
        "at": draw(moments).isoformat(),
    }


def form_for(choice: Choice) -> dict[str, Any]:
    made, status, sharing = choice
    form = example_form()
    form["status"] = status
    form["recorded"]["date"] = made.isoformat()
    form["decisionMaker"]["competence"]["assessedOn"] = form["exceptions"]["explainedOn"] = made.date().isoformat()
    form["people"][0] = {
        "id": "mum",
        "name": "Pat Example",
        "role": "mother",
        "sharing": sharing,
        **({"informationTypes": ["attendance"]} if sharing == "share" else {}),
    }
    return form


@contextmanager
def adapter_with(history: list[Choice], order: list[int], first_entry: datetime) -> Iterator[FlaskClient]:
    """An adapter on a fresh store into which the choices were typed in ``order``, one a day from ``first_entry``."""
    with tempfile.TemporaryDirectory() as folder:
        clock = StoreClock(first_entry)
        with Store.open(f"sqlite:///{folder}/entry.db", clock=clock) as store:
            client = create_app(Settings(grants=grants()), store=store).test_client()
            for n, i in enumerate(order):
                clock.now = first_entry + timedelta(days=n)
                if n == 0:
                    response = client.post("/api/forms", json=form_for(history[i]), headers=bearer("clinician"))
                else:
                    response = client.put(f"/api/forms/{FORM_ID}", json=form_for(history[i]), headers={**bearer("clinician"), "If-Match": f'W/"{n}"'})
                assert response.status_code in (200, 201), response.json
            yield client


def ask(client: FlaskClient, question: dict[str, str]) -> dict[str, Any]:
    response = client.get(f"/api/decision?{urlencode(question)}", headers=bearer("ehr"))
    assert response.status_code == 200, response.json
    return response.json


def meaning(answer: dict[str, Any], history: list[Choice], order: list[int]) -> tuple[Any, ...]:
    """The answer with the cited version named by when its choice was made (version numbers follow entry order)."""
    cited = history[order[answer["consent"]["version"] - 1]][0] if answer["consent"] else None
    return (answer["decision"], answer["basis"], answer["provision"], cited, answer["perType"], answer["obligations"], answer["matchedPeople"])


SLOW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SLOW
@given(history=histories(), data=st.data(), question=questions(), first_entry=moments)
def test_once_everything_is_stored_the_entry_order_never_changes_the_answer(
    history: list[Choice], data: st.DataObject, question: dict[str, str], first_entry: datetime
) -> None:
    one = data.draw(st.permutations(range(len(history))))
    other = data.draw(st.permutations(range(len(history))))
    with adapter_with(history, one, first_entry) as a, adapter_with(history, other, first_entry) as b:
        assert meaning(ask(a, question), history, one) == meaning(ask(b, question), history, other)


@SLOW
@given(history=histories(), data=st.data(), question=questions(), first_entry=moments, known_after=st.integers(-1, 4))
def test_known_at_answers_as_an_adapter_holding_only_what_was_stored_by_then(
    history: list[Choice], data: st.DataObject, question: dict[str, str], first_entry: datetime, known_after: int
) -> None:
    order = data.draw(st.permutations(range(len(history))))
    known_at = first_entry + timedelta(days=known_after, hours=12)
    stored_by_then = order[: max(0, min(len(order), known_after + 1))]
    with adapter_with(history, order, first_entry) as everything, adapter_with(history, stored_by_then, first_entry) as then:
        assert ask(everything, {**question, "known-at": known_at.isoformat()}) == ask(then, question)
