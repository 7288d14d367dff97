"""What a trust's monitoring reads: the facade's /metrics (Prometheus text, ``metrics.read`` scope) after real sync
runs against a real FHIR server (sekmet-fhir), and the audit log filtered by action."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from fhir_adapter.access import TokenGrant
from fhir_adapter.config import Settings, hash_token
from fhir_adapter.fhir_client import FhirClient
from fhir_adapter.server import create_app
from fhir_adapter.store import Store
from fhir_adapter.store.sync_state import server_key
from fhir_adapter.sync import LOCK_NAME, SyncJob, SyncLocked
from tests.support.facade import bearer, grants
from tests.support.fhir_server import SekmetServer
from tests.test_sync import change_on_server, changed, dad_now_shares, new_form

SCRAPER_TOKEN = "test-token-for-the-scraper-0123456789"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path / 'casus.sqlite3'}") as s:
        yield s


@pytest.fixture
def facade(store: Store) -> FlaskClient:
    scraper = TokenGrant("scraper", hash_token(SCRAPER_TOKEN), frozenset({"metrics.read"}))
    return create_app(Settings(grants=(*grants(), scraper)), store=store).test_client()


def scrape(facade: FlaskClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = facade.get("/metrics", headers={"Authorization": f"Bearer {SCRAPER_TOKEN}"})
    assert response.status_code == 200 and response.content_type.startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for s in family.samples
    }


def test_metrics_need_the_metrics_read_scope(facade: FlaskClient) -> None:
    assert facade.get("/metrics").status_code == 401
    assert facade.get("/metrics", headers=bearer("ehr")).status_code == 403


@pytest.mark.integration
def test_metrics_count_runs_by_outcome_and_the_forms_pushed(store: Store, facade: FlaskClient, fresh_fhir_server: SekmetServer) -> None:
    for _ in range(2):
        store.create_form(new_form(), actor="clinician")
    with FhirClient(fresh_fhir_server.base_url) as client:
        SyncJob(store, client).run()
        SyncJob(store, client).run()
        store.acquire_lock(LOCK_NAME, "another-host.example:1:1:00000000", 600)
        with pytest.raises(SyncLocked):
            SyncJob(store, client).run()
    server = (("server", server_key(fresh_fhir_server.base_url)),)

    metrics = scrape(facade)

    assert metrics[("casus_sync_runs_total", (("outcome", "in-step"), *server))] == 2
    assert metrics[("casus_sync_runs_total", (("outcome", "skipped"), *server))] == 1
    assert metrics[("casus_sync_forms_pushed_total", server)] == 2
    assert metrics[("casus_sync_forms_waiting", server)] == 0
    assert metrics[("casus_sync_last_success_timestamp_seconds", server)] > 0


@pytest.mark.integration
def test_metrics_show_conflicts_outstanding(store: Store, facade: FlaskClient, fresh_fhir_server: SekmetServer) -> None:
    form_id = store.create_form(new_form(), actor="clinician").form_id
    with FhirClient(fresh_fhir_server.base_url) as client:
        SyncJob(store, client).run()
        local = store.update_form(dad_now_shares(store.get(form_id).form), expected_version=1, actor="clinician")
        change_on_server(client, changed(local.form, status="withdrawn"))
        SyncJob(store, client).run()
    server = server_key(fresh_fhir_server.base_url)

    metrics = scrape(facade)

    assert metrics[("casus_sync_problems_outstanding", (("kind", "conflict"), ("server", server)))] == 1


def test_the_audit_log_filters_by_action_and_an_aborted_run_says_why_and_against_which_server(
    store: Store, facade: FlaskClient, tmp_path: Path
) -> None:
    store.create_form(new_form(), actor="clinician")
    stopped = "http://127.0.0.1:9/fhir"
    with FhirClient(stopped, max_retries=0) as client, pytest.raises(Exception, match="could not be reached"):
        SyncJob(store, client).run()

    records = facade.get("/api/audit?action=sync.run", headers=bearer("admin")).get_json()["audit"]

    assert [r["action"] for r in records] == ["sync.run"]
    assert (records[0]["outcome"], records[0]["detail"]["server"]) == ("failed", stopped)
    assert "could not be reached" in records[0]["detail"]["failure"]
