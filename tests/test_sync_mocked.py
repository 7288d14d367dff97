"""Sync edge cases a real server will not produce on demand, with the FHIR server mocked by ``responses``.

Rate limits, malformed Bundles, HTML error pages, expiring tokens, a 412 that persists, a batch the server
refuses: in every case the run either completes correctly or stops with a clear error and durable progress
that never runs ahead of what actually happened.  Plus the pure helpers the job is built from.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
import responses
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fhir_adapter.fhir_auth import SmartBackendAuth, StaticBearer
from fhir_adapter.fhir_client import FhirClient
from fhir_adapter.form import ConsentForm
from fhir_adapter.mappings import codes
from fhir_adapter.mappings.r4 import form_to_r4
from fhir_adapter.store import Store
from fhir_adapter.store.sync_state import SyncRecord, server_key
from fhir_adapter.sync import (
    MAX_IDENTIFIER_QUERY_CHARS,
    PULL_CURSOR,
    PUSH_CURSOR,
    PullCursor,
    RemoteState,
    SyncAborted,
    SyncJob,
    committed_state,
    identifier_chunks,
    search_escape,
)
from tests.test_sync import changed, new_form

BASE = "http://127.0.0.1:8099/fhir"
SERVER = server_key(BASE)
CONSENT = f"{BASE}/Consent"
SEARCH = f"{CONSENT}/_search"  # identifier look-ups: POST [type]/_search, a whole batch in the body
TOKEN_URL = "http://127.0.0.1:8099/token"
FHIR_JSON = {"Content-Type": "application/fhir+json"}
HTML_PAGE = "<html><body><h1>Service unavailable</h1></body></html>"


# --------------------------------------------------------------------------- helpers


def searchset(*resources: dict[str, Any], next_url: str | None = None) -> dict[str, Any]:
    links = [{"relation": "next", "url": next_url}] if next_url else []
    return {"resourceType": "Bundle", "type": "searchset", "link": links, "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources]}


def as_remote(form: ConsentForm, resource_id: str, version_id: str, last_updated: str) -> dict[str, Any]:
    resource = form_to_r4(form)
    resource["id"] = resource_id
    resource["meta"] = {**resource.get("meta", {}), "versionId": version_id, "lastUpdated": last_updated}
    return resource


def transaction_response(count: int) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [
            {
                "response": {
                    "status": "201 Created",
                    "location": f"{BASE}/Consent/srv-{n}/_history/1",
                    "etag": 'W/"1"',
                    "lastModified": "2026-11-25T10:00:00.000Z",
                }
            }
            for n in range(count)
        ],
    }


def outcome(diagnostics: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid", "diagnostics": diagnostics}]}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path / 'casus.sqlite3'}") as s:
        yield s


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(sleeps: list[float]) -> Iterator[FhirClient]:
    with FhirClient(BASE, sleep=sleeps.append, max_retries=3, rng=random.Random(0)) as c:
        yield c


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


# --------------------------------------------------------------------------- transient failures and auth


def test_retry_after_is_honoured_during_sync_and_counted_in_the_summary(
    store: Store, client: FhirClient, mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    mocked.get(CONSENT, status=429, headers={"Retry-After": "7"}, json=outcome("slow down"))
    mocked.get(CONSENT, json=searchset(), headers=FHIR_JSON)

    summary = SyncJob(store, client).run(push=False)

    assert sleeps == [7.0]
    assert (summary.retries, summary.requests, summary.exit_code()) == (1, 2, 0)


def _rsa_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def test_an_expired_smart_token_is_refreshed_mid_run_and_the_run_completes(store: Store, mocked: responses.RequestsMock) -> None:
    store.create_form(new_form(), actor="clinician")
    mocked.post(TOKEN_URL, json={"access_token": "first-token", "token_type": "bearer", "expires_in": 3600})
    mocked.post(TOKEN_URL, json={"access_token": "second-token", "token_type": "bearer", "expires_in": 3600})
    mocked.post(SEARCH, json=searchset(), headers=FHIR_JSON)
    mocked.post(BASE, status=401, json=outcome("token expired"))  # the server revoked the token before its expiry time
    transaction = mocked.post(BASE, json=transaction_response(1), headers=FHIR_JSON)
    auth = SmartBackendAuth(TOKEN_URL, "casus-sync", _rsa_pem(), "key-1")

    with FhirClient(BASE, auth=auth, sleep=lambda _s: None) as smart_client:
        summary = SyncJob(store, smart_client).run(pull=False)

    assert (summary.pushed, auth.token_requests) == (1, 2)
    assert transaction.calls[-1].request.headers["Authorization"] == "Bearer second-token"


def test_a_bearer_token_the_server_refuses_stops_the_run_without_naming_the_token(store: Store, mocked: responses.RequestsMock) -> None:
    store.create_form(new_form(), actor="clinician")
    mocked.post(SEARCH, status=401, json=outcome("unknown token"))

    with FhirClient(BASE, auth=StaticBearer("s3cret-bearer-value")) as bearer_client, pytest.raises(SyncAborted) as stopped:
        SyncJob(store, bearer_client).run()

    assert "401" in str(stopped.value)
    assert "s3cret" not in str(stopped.value)
    assert store.get_cursor(SERVER, PUSH_CURSOR) is None


# --------------------------------------------------------------------------- malformed answers


def test_a_malformed_bundle_stops_the_pull_and_leaves_the_cursor_where_it_was(
    store: Store, client: FhirClient, mocked: responses.RequestsMock
) -> None:
    saved = PullCursor("2026-01-01T00:00:00Z").dump()
    store.set_cursor(SERVER, PULL_CURSOR, saved)
    mocked.get(CONSENT, json={"resourceType": "Bundle", "type": "searchset", "entry": "not a list"}, headers=FHIR_JSON)

    with pytest.raises(SyncAborted, match=r"Bundle\.entry"):
        SyncJob(store, client).run(push=False)

    assert store.get_cursor(SERVER, PULL_CURSOR) == saved


def test_an_html_page_in_place_of_a_later_page_keeps_the_cursor_at_the_last_complete_page(
    store: Store, client: FhirClient, mocked: responses.RequestsMock
) -> None:
    form = new_form()
    first = as_remote(form, "srv-1", "1", "2026-11-25T10:00:00.000Z")
    mocked.get(CONSENT, json=searchset(first, next_url=f"{CONSENT}?page=2"), headers=FHIR_JSON)
    mocked.get(CONSENT, body=HTML_PAGE, status=200, content_type="text/html")

    with pytest.raises(SyncAborted, match="not FHIR JSON"):
        SyncJob(store, client).run(push=False)

    assert PullCursor.parse(store.get_cursor(SERVER, PULL_CURSOR)).last_updated == "2026-11-25T10:00:00.000Z"
    assert store.get(form.form_id).form == form


def test_an_html_error_page_stops_the_push_with_nothing_recorded(store: Store, client: FhirClient, mocked: responses.RequestsMock) -> None:
    form = store.create_form(new_form(), actor="clinician").form
    mocked.post(SEARCH, body=HTML_PAGE, status=404, content_type="text/html")
    mocked.get(CONSENT, body=HTML_PAGE, status=404, content_type="text/html")

    with pytest.raises(SyncAborted, match="not FHIR JSON"):
        SyncJob(store, client).run()

    assert (store.get_cursor(SERVER, PUSH_CURSOR), store.sync_record(SERVER, form.form_id)) == (None, None)


def test_an_html_answer_to_the_transaction_leaves_the_push_cursor_and_records_untouched(
    store: Store, client: FhirClient, mocked: responses.RequestsMock
) -> None:
    form = store.create_form(new_form(), actor="clinician").form
    mocked.post(SEARCH, json=searchset(), headers=FHIR_JSON)
    mocked.post(BASE, body=HTML_PAGE, status=200, content_type="text/html")

    with pytest.raises(SyncAborted):
        SyncJob(store, client).run()

    assert (store.get_cursor(SERVER, PUSH_CURSOR), store.sync_record(SERVER, form.form_id)) == (None, None)


def test_a_transaction_response_missing_entries_is_malformed_and_records_nothing(
    store: Store, client: FhirClient, mocked: responses.RequestsMock
) -> None:
    forms = [store.create_form(new_form(), actor="clinician").form for _ in range(2)]
    mocked.post(SEARCH, json=searchset(), headers=FHIR_JSON)
    mocked.post(BASE, json=transaction_response(1), headers=FHIR_JSON)

    with pytest.raises(SyncAborted, match="1 entries for 2 requests"):
        SyncJob(store, client).run()

    assert store.get_cursor(SERVER, PUSH_CURSOR) is None
    assert [store.sync_record(SERVER, f.form_id) for f in forms] == [None, None]


def test_search_results_out_of_last_updated_order_stop_the_run(store: Store, client: FhirClient, mocked: responses.RequestsMock) -> None:
    newer = as_remote(new_form(), "srv-1", "1", "2026-11-25T10:00:05.000Z")
    older = as_remote(new_form(), "srv-2", "1", "2026-11-25T10:00:01.000Z")
    mocked.get(CONSENT, json=searchset(newer, next_url=f"{CONSENT}?page=2"), headers=FHIR_JSON)
    mocked.get(CONSENT, json=searchset(older), headers=FHIR_JSON)

    with pytest.raises(SyncAborted, match="_lastUpdated order"):
        SyncJob(store, client).run(push=False)

    assert PullCursor.parse(store.get_cursor(SERVER, PULL_CURSOR)).last_updated == "2026-11-25T10:00:05.000Z"


# --------------------------------------------------------------------------- refusals


def _synced_then_changed_locally(store: Store) -> tuple[ConsentForm, dict[str, Any]]:
    """A form pushed earlier (server copy srv-1 at version 1) and withdrawn locally since."""
    form = store.create_form(new_form(), actor="clinician").form
    store.save_sync_record(SyncRecord(SERVER, form.form_id, pushed_version=1, remote_id="srv-1", remote_version_id="1"))
    store.set_cursor(SERVER, PUSH_CURSOR, "1")
    store.update_form(changed(form, status="withdrawn"), expected_version=1, actor="clinician")
    return form, as_remote(form, "srv-1", "1", "2026-11-25T10:00:00.000Z")


def test_a_412_is_reclassified_once_and_a_second_412_is_a_conflict_that_holds_the_cursor(
    store: Store, client: FhirClient, mocked: responses.RequestsMock
) -> None:
    form, remote = _synced_then_changed_locally(store)
    searches = mocked.post(SEARCH, json=searchset(remote), headers=FHIR_JSON)
    sends = mocked.post(BASE, status=412, json=outcome("version conflict"))

    summary = SyncJob(store, client).run(pull=False)

    assert [c["formId"] for c in summary.conflicts] == [form.form_id]
    assert (len(searches.calls), len(sends.calls)) == (2, 2)
    assert store.get_cursor(SERVER, PUSH_CURSOR) == "1"


def test_the_update_of_a_known_server_copy_carries_its_version_in_if_match(store: Store, client: FhirClient, mocked: responses.RequestsMock) -> None:
    _form, remote = _synced_then_changed_locally(store)
    mocked.post(SEARCH, json=searchset(remote), headers=FHIR_JSON)
    sends = mocked.post(BASE, json=transaction_response(1), headers=FHIR_JSON)

    SyncJob(store, client).run(pull=False)

    entry = json.loads(sends.calls[0].request.body)["entry"][0]
    assert entry["request"] == {"method": "PUT", "url": "Consent/srv-1", "ifMatch": 'W/"1"'}
    assert entry["resource"]["id"] == "srv-1"


def test_a_form_the_server_has_not_seen_is_written_by_a_conditional_update_on_its_identifier(
    store: Store, client: FhirClient, mocked: responses.RequestsMock
) -> None:
    form = store.create_form(new_form(), actor="clinician").form
    mocked.post(SEARCH, json=searchset(), headers=FHIR_JSON)
    sends = mocked.post(BASE, json=transaction_response(1), headers=FHIR_JSON)

    SyncJob(store, client).run(pull=False)

    request = json.loads(sends.calls[0].request.body)["entry"][0]["request"]
    assert request["method"] == "PUT"
    assert request["url"] == "Consent?" + urlencode({"identifier": f"{codes.ID_CONSENT_FORM}|{form.form_id}"})
    assert "ifMatch" not in request


def test_a_batch_the_server_refuses_is_sent_form_by_form_and_only_the_bad_form_is_rejected(
    store: Store, client: FhirClient, mocked: responses.RequestsMock
) -> None:
    good, bad = (store.create_form(new_form(), actor="clinician").form for _ in range(2))
    mocked.post(SEARCH, json=searchset(), headers=FHIR_JSON)

    def server(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        entries = json.loads(request.body or b"{}")["entry"]
        if any(e["resource"]["identifier"][0]["value"] == bad.form_id for e in entries):
            return 422, FHIR_JSON, json.dumps(outcome("Consent.provision: not acceptable here"))
        return 200, FHIR_JSON, json.dumps(transaction_response(len(entries)))

    mocked.add_callback(responses.POST, BASE, callback=server)

    summary = SyncJob(store, client).run(pull=False)

    assert summary.pushed == 1
    assert store.sync_record(SERVER, good.form_id) is not None
    assert [(r["formId"], r["outcome"]["issue"][0]["diagnostics"]) for r in summary.rejected] == [
        (bad.form_id, "Consent.provision: not acceptable here")
    ]
    assert store.sync_record(SERVER, bad.form_id) is None


def test_a_server_that_refuses_post_search_is_asked_by_get_for_the_rest_of_the_run(
    store: Store, client: FhirClient, mocked: responses.RequestsMock
) -> None:
    store.bulk_load(([new_form()] for _ in range(150)), actor="clinician")  # two batches of 100 and 50
    refused = mocked.post(SEARCH, status=405, json=outcome("POST search is not supported"))
    searches = mocked.get(CONSENT, json=searchset(), headers=FHIR_JSON)
    mocked.add_callback(
        responses.POST, BASE, callback=lambda r: (200, FHIR_JSON, json.dumps(transaction_response(len(json.loads(r.body or b"{}")["entry"]))))
    )

    summary = SyncJob(store, client).run(pull=False)

    assert (summary.pushed, summary.exit_code()) == (150, 0)
    assert len(refused.calls) == 1
    assert all(len(c.request.url or "") < MAX_IDENTIFIER_QUERY_CHARS * 3 for c in searches.calls)
    assert len(searches.calls) >= 7  # URL-sized chunks: 100 identifiers do not fit one URL


# --------------------------------------------------------------------------- pure helpers


def _remote(resource_id: str, version_id: str, last_updated: str) -> RemoteState:
    return RemoteState(resource_id, version_id, last_updated, {})


def test_the_pull_cursor_moves_to_the_newest_instant_and_remembers_what_it_saw_there() -> None:
    page = [_remote("a", "1", "2026-11-25T10:00:00Z"), _remote("b", "3", "2026-11-25T10:00:02Z"), _remote("c", "1", "2026-11-25T10:00:02Z")]

    cursor = PullCursor().advanced(page)

    assert cursor.last_updated == "2026-11-25T10:00:02Z"
    assert cursor.seen == {"b/_history/3", "c/_history/1"}


def test_the_pull_cursor_skips_a_version_seen_at_its_instant_but_not_a_newer_version_there() -> None:
    cursor = PullCursor().advanced([_remote("b", "3", "2026-11-25T10:00:02Z")])

    assert cursor.already_seen(_remote("b", "3", "2026-11-25T10:00:02.000+00:00"))
    assert not cursor.already_seen(_remote("b", "4", "2026-11-25T10:00:02Z"))
    assert not cursor.already_seen(_remote("d", "1", "2026-11-25T10:00:02Z"))


def test_the_pull_cursor_keeps_earlier_sightings_when_a_page_ends_at_the_same_instant() -> None:
    cursor = PullCursor().advanced([_remote("a", "1", "2026-11-25T10:00:02Z")])

    cursor = cursor.advanced([_remote("b", "1", "2026-11-25T10:00:02Z")])

    assert cursor.seen == {"a/_history/1", "b/_history/1"}


def test_the_pull_cursor_survives_being_saved_and_read_back() -> None:
    cursor = PullCursor().advanced([_remote("a", "1", "2026-11-25T10:00:02Z")])

    assert PullCursor.parse(cursor.dump()) == cursor


def test_identifier_searches_are_split_so_no_query_exceeds_the_limit() -> None:
    form_ids = [f"{n:08d}-0000-4000-8000-000000000000" for n in range(60)]

    chunks = identifier_chunks(form_ids)

    assert [f for chunk in chunks for f in chunk] == form_ids
    assert len(chunks) > 1
    assert all(len(",".join(f"{codes.ID_CONSENT_FORM}|{f}" for f in chunk)) <= MAX_IDENTIFIER_QUERY_CHARS for chunk in chunks)


def test_search_separators_in_identifier_values_are_escaped() -> None:
    assert search_escape("a,b|c$d\\e") == "a\\,b\\|c\\$d\\\\e"


def test_a_committed_entry_without_a_resource_is_read_from_its_location_and_etag() -> None:
    entry = {"response": {"status": "200 OK", "location": f"{BASE}/Consent/abc/_history/4", "etag": 'W/"4"'}}

    state = committed_state(entry)

    assert (state.resource_id, state.version_id) == ("abc", "4")
