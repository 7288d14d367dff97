"""Pull walks the server's Consents by keyset (``_lastUpdated=ge<cursor>``), against a real FHIR server (sekmet-fhir).

Each test has a server of its own, because pull reads every CASUS Consent on it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from fhir_adapter.fhir_client import FhirClient
from fhir_adapter.form import ConsentForm
from fhir_adapter.mappings import codes
from fhir_adapter.mappings.r4 import form_to_r4
from fhir_adapter.store import Store
from fhir_adapter.sync import SyncJob
from tests.support.fhir_server import SekmetServer
from tests.test_sync import change_on_server, dad_now_shares, new_form

pytestmark = pytest.mark.integration

PAGE = 5


class RecordingSession(requests.Session):
    """Remembers the query of every ``GET Consent`` search, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.searches: list[dict[str, str]] = []

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        response = super().request(method, url, *args, **kwargs)
        if str(method).upper() == "GET" and urlsplit(response.url).path.endswith("/Consent"):
            self.searches.append(dict(parse_qsl(urlsplit(response.url).query)))
        return response


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path / 'casus.sqlite3'}") as s:
        yield s


@pytest.fixture
def session() -> RecordingSession:
    return RecordingSession()


@pytest.fixture
def client(fresh_fhir_server: SekmetServer, session: RecordingSession) -> Iterator[FhirClient]:
    with FhirClient(fresh_fhir_server.base_url, session=session) as c:
        yield c


def put_on_server(client: FhirClient, count: int) -> list[ConsentForm]:
    """``count`` new Consents written one by one, as another system would."""
    forms = [new_form() for _ in range(count)]
    for form in forms:
        client.conditional_update(form_to_r4(form), f"identifier={codes.ID_CONSENT_FORM}|{form.form_id}")
    return forms


def stamp_every_consent(server: SekmetServer, instant: str) -> None:
    """Give every Consent on the server the same ``meta.lastUpdated``.

    sekmet stamps each write with its own clock to the millisecond, so Consents sharing one instant cannot be
    made through its API; its SQLite store is rewritten instead (the resource, its row and its search index).
    """
    lo = datetime.fromisoformat(instant).timestamp()
    (database,) = [p for p in server.data_dir.rglob("*") if p.is_file() and p.read_bytes()[:16] == b"SQLite format 3\x00"]
    with sqlite3.connect(database) as db:
        db.execute(
            "UPDATE resources SET last_updated = ?, json = json_set(json, '$.meta.lastUpdated', ?) WHERE type = 'Consent'",
            (instant, instant),
        )
        db.execute("UPDATE idx SET lo = ?, hi = ? WHERE type = 'Consent' AND param = '_lastUpdated'", (lo, lo + 0.001))


def test_a_pull_over_several_pages_imports_every_consent_once(store: Store, client: FhirClient) -> None:
    forms = put_on_server(client, 12)

    summary = SyncJob(store, client, page_size=PAGE).run()

    assert (summary.pulled, summary.in_step) == (12, 0)
    assert all(store.get(f.form_id).form == f and store.get(f.form_id).version == 1 for f in forms)


def test_each_page_after_the_first_is_asked_from_the_last_instant_pulled_not_by_next_link(
    store: Store, client: FhirClient, session: RecordingSession
) -> None:
    put_on_server(client, 12)

    SyncJob(store, client, page_size=PAGE).run()

    assert len(session.searches) == 3
    assert all(search.get("_lastUpdated", "").startswith("ge") for search in session.searches[1:])
    assert not any("_offset" in search for search in session.searches)  # sekmet's next links page by _offset


def test_a_consent_changed_on_the_server_mid_pull_is_not_missed_nor_any_after_it(store: Store, client: FhirClient) -> None:
    forms = put_on_server(client, 12)
    moved = dad_now_shares(forms[1])
    pages: list[int] = []

    def change_after_the_first_page(stage: str, count: int) -> None:
        if stage == "pull":
            pages.append(count)
            if len(pages) == 1:
                change_on_server(client, moved)  # it now sorts last: offset paging would shift the rest by one

    SyncJob(store, client, page_size=PAGE, progress=change_after_the_first_page).run()

    assert store.get(moved.form_id).form == moved
    assert all(store.get(f.form_id).form == f for f in forms if f.form_id != moved.form_id)


def test_more_consents_at_one_instant_than_a_page_holds_are_each_pulled_once(
    store: Store, client: FhirClient, fresh_fhir_server: SekmetServer
) -> None:
    same_instant = put_on_server(client, 2 * PAGE + 2)
    stamp_every_consent(fresh_fhir_server, "2026-11-25T10:00:00.000+00:00")
    later = put_on_server(client, 3)

    summary = SyncJob(store, client, page_size=PAGE).run()

    assert (summary.pulled, summary.in_step) == (len(same_instant) + len(later), 0)
    assert all(store.get(f.form_id).version == 1 for f in same_instant + later)


def test_a_re_sync_after_a_crowded_instant_pulls_nothing(store: Store, client: FhirClient, fresh_fhir_server: SekmetServer) -> None:
    put_on_server(client, 2 * PAGE + 2)
    stamp_every_consent(fresh_fhir_server, "2026-11-25T10:00:00.000+00:00")
    SyncJob(store, client, page_size=PAGE).run()

    again = SyncJob(store, client, page_size=PAGE).run()

    assert (again.pulled, again.in_step, again.exit_code()) == (0, 0, 0)
