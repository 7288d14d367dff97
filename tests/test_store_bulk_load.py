"""Bulk load: many forms with their histories through the store, stored and audited as single writes would be."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fhir_adapter.form import ConsentForm, parse_form
from fhir_adapter.outcome import InvalidInput
from fhir_adapter.store import Store
from fhir_adapter.store.forms import STORED_FORM_VERSION, AlreadyExists
from tests.support.facade import example_form
from tests.test_store import FakeClock, form_id, nhs_numbers

SAMPLE: dict[str, Any] = example_form()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_database_url")
    with Store.open(url, clock=FakeClock()) as opened:
        yield opened


def history(n: int, nhs: str, versions: int = 3) -> list[ConsentForm]:
    """Form n's versions: drafts first, the last one active."""
    out = []
    for v in range(1, versions + 1):
        doc = copy.deepcopy(SAMPLE)
        doc["formId"] = form_id(n)
        doc["youngPerson"]["nhsNumber"] = nhs
        doc["status"] = "active" if v == versions else "draft"
        out.append(parse_form(doc))
    return out


def test_bulk_loaded_forms_read_back_like_written_ones(store: Store) -> None:
    numbers = nhs_numbers(5)
    assert store.bulk_load((history(n, numbers[n]) for n in range(5)), actor="loader") == 15
    latest = store.get(form_id(2))
    assert (latest.version, latest.form.status, latest.actor) == (3, "active", "loader")
    assert [v.version for v in store.history(form_id(2))] == [1, 2, 3]
    assert [(v.form_id, v.version) for v in store.versions_for_patient(numbers[4])] == [(form_id(4), 1), (form_id(4), 2), (form_id(4), 3)]
    found, total = store.search(nhs_number=numbers[1])
    assert total == 1 and found[0].version == 3


def test_every_bulk_loaded_version_is_audited(store: Store) -> None:
    numbers = nhs_numbers(2)
    store.bulk_load([history(0, numbers[0]), history(1, numbers[1], versions=2)], actor="loader")
    records = [r for r in store.audit_log(limit=100) if r.action == STORED_FORM_VERSION]
    assert sorted((r.resource, r.detail["version"], r.outcome) for r in records) == [
        (f"form/{form_id(0)}", 1, "created"),
        (f"form/{form_id(0)}", 2, "updated"),
        (f"form/{form_id(0)}", 3, "updated"),
        (f"form/{form_id(1)}", 1, "created"),
        (f"form/{form_id(1)}", 2, "updated"),
    ]


def test_bulk_load_numbers_versions_after_earlier_writes_and_later_writes_follow(store: Store) -> None:
    numbers = nhs_numbers(3)
    store.create_form(history(0, numbers[0], versions=1)[0], actor="clinician")
    before = store.db.change_marker()
    store.bulk_load([history(1, numbers[1]), history(2, numbers[2])], actor="loader")
    assert store.db.change_marker() == before + 6
    assert [(seq, v.form_id, v.version) for seq, v in store.versions_changed_since(before, 100)] == [
        (before + 1 + i, form_id(1 + i // 3), 1 + i % 3) for i in range(6)
    ]
    store.update_form(history(1, numbers[1])[0], expected_version=3, actor="clinician")
    assert store.get(form_id(1)).version == 4


def test_a_batch_naming_a_stored_form_stores_nothing_of_itself(store: Store) -> None:
    numbers = nhs_numbers(4)
    store.create_form(history(2, numbers[2], versions=1)[0], actor="clinician")
    with pytest.raises(AlreadyExists):
        store.forms.bulk_load((history(n, numbers[n]) for n in range(4)), actor="loader", batch_forms=2)
    assert [v.version for v in store.history(form_id(0))] == [1, 2, 3]  # the first batch stays
    assert store.search(nhs_number=numbers[3])[1] == 0
    assert store.get(form_id(2)).version == 1


def test_a_form_breaking_a_rule_stops_the_load_with_nothing_of_its_batch_stored(store: Store) -> None:
    numbers = nhs_numbers(2)
    form = history(1, numbers[1], versions=1)[0]
    broken = dataclasses.replace(form, young_person=dataclasses.replace(form.young_person, nhs_number="9434765918"))  # bad check digit
    with pytest.raises(InvalidInput):
        store.bulk_load([history(0, numbers[0]), [broken]], actor="loader")
    assert store.search(limit=0)[1] == 0


def test_a_history_mixing_forms_is_refused(store: Store) -> None:
    numbers = nhs_numbers(2)
    with pytest.raises(ValueError, match="same form id"):
        store.bulk_load([[*history(0, numbers[0], versions=1), *history(1, numbers[1], versions=1)]], actor="loader")
    assert store.search(limit=0)[1] == 0
