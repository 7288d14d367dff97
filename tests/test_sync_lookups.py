"""What a sync run costs in requests, counted against a real FHIR R4 server (sekmet-fhir) on loopback.

The identifier look-up before each batch is one ``POST Consent/_search`` carrying the whole OR-list of business
identifiers in its form-encoded body (the specification's POST form of search), not one GET per URL-sized chunk.
sekmet-fhir takes that form as the specification describes (body parameters joined to any in the URL) and
answers with GET next links, which is also what the specification expects.  A server that refuses POST search
cannot be made from sekmet, so that fallback is shown with ``responses`` in tests/test_sync_mocked.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from fhir_adapter.fhir_client import FhirClient
from fhir_adapter.store import Store
from fhir_adapter.sync import SyncJob, identifier_chunks
from tests.support.fhir_server import SekmetServer
from tests.test_sync import new_form

pytestmark = pytest.mark.integration

FORMS = 250
BATCH = 100


class CountingSession(requests.Session):
    """Counts HTTP attempts by method and path below the base URL (``POST Consent/_search``, ``GET Consent`` ...)."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.base_path = urlsplit(base_url).path.rstrip("/")
        self.counts: Counter[str] = Counter()

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        path = urlsplit(str(url)).path.removeprefix(self.base_path).strip("/")
        self.counts[f"{str(method).upper()} {path or '[base]'}"] += 1
        return super().request(method, url, *args, **kwargs)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path / 'casus.sqlite3'}") as s:
        s.bulk_load(([new_form()] for _ in range(FORMS)), actor="clinician")
        yield s


@pytest.fixture
def session(fresh_fhir_server: SekmetServer) -> CountingSession:
    return CountingSession(fresh_fhir_server.base_url)


@pytest.fixture
def client(fresh_fhir_server: SekmetServer, session: CountingSession) -> Iterator[FhirClient]:
    with FhirClient(fresh_fhir_server.base_url, session=session) as c:
        yield c


def test_a_batch_of_100_form_ids_would_need_several_get_searches_to_fit_urls(store: Store) -> None:
    form_ids = [form_id for _seq, form_id in store.form_ids_changed_since(0, BATCH)]

    assert len(identifier_chunks(form_ids)) >= 4  # what each batch cost before: the reason for POST search


def test_a_push_looks_up_each_batch_with_one_post_search(store: Store, client: FhirClient, session: CountingSession) -> None:
    summary = SyncJob(store, client, batch_size=BATCH).run(pull=False)

    assert summary.pushed == FORMS
    assert session.counts == Counter({"POST Consent/_search": 3, "POST [base]": 3})


def test_a_full_run_checks_forms_the_server_holds_with_one_post_search_per_batch(store: Store, client: FhirClient, session: CountingSession) -> None:
    SyncJob(store, client, batch_size=BATCH).run(pull=False)
    session.counts.clear()

    summary = SyncJob(store, client, batch_size=BATCH).run(pull=False, full=True)

    assert (summary.pushed, summary.in_step) == (0, FORMS)
    assert session.counts == Counter({"POST Consent/_search": 3})


def test_a_no_change_re_sync_makes_one_request_per_page_it_reads(store: Store, client: FhirClient, session: CountingSession) -> None:
    SyncJob(store, client, batch_size=BATCH, page_size=BATCH).run()
    SyncJob(store, client, batch_size=BATCH, page_size=BATCH).run()  # settles the pull cursor past our own pushes
    session.counts.clear()

    summary = SyncJob(store, client, batch_size=BATCH, page_size=BATCH).run()

    assert (summary.pushed, summary.pulled, summary.exit_code()) == (0, 0, 0)
    assert session.counts == Counter({"GET Consent": 1, "GET Consent/_history": 1})  # the page of changes, the page of deletions
