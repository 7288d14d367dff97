"""What a scheduled sync tells the machine that runs it: exit codes, a summary on every outcome, reasons that say
what to check, and counts that mean what they say.  Against real FHIR servers (sekmet-fhir on loopback) except a
refused credential, which sekmet cannot produce (it has no auth), answered by ``responses``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import responses
from click.testing import CliRunner, Result

from fhir_adapter.cli import main
from fhir_adapter.fhir_client import FhirClient
from fhir_adapter.store import Store
from fhir_adapter.sync import SyncJob
from fhir_adapter.sync_cli import write_atomically
from tests.support.fault_proxy import running_fault_proxy
from tests.support.fhir_server import SekmetServer, free_port
from tests.test_sync import dad_now_shares, new_form, only_on_server


@pytest.fixture
def database(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'casus.sqlite3'}"


@pytest.fixture
def store(database: str) -> Iterator[Store]:
    with Store.open(database) as s:
        yield s


def sync(database: str, base_url: str, *args: str) -> Result:
    env = {
        "CASUS_FHIR_BASE_URL": base_url,
        "CASUS_DATABASE_URL": database,
        "CASUS_FHIR_AUTH": "none",
        "CASUS_FHIR_TOKEN": None,
        "CASUS_FHIR_MAX_RETRIES": "0",
    }
    return CliRunner().invoke(main, ["sync", *args], env=env)


@pytest.mark.integration
def test_the_summary_names_the_server_run_times_and_exit_code(store: Store, database: str, fresh_fhir_server: SekmetServer) -> None:
    store.create_form(new_form(), actor="clinician")

    summary = json.loads(sync(database, fresh_fhir_server.base_url + "/").stdout)

    assert (summary["server"], summary["exitCode"], summary["outcome"], summary["failure"]) == (fresh_fhir_server.base_url, 0, "in-step", None)
    assert summary["startedAt"] <= summary["endedAt"] and len(summary["runId"]) == 32


@pytest.mark.integration
def test_a_failed_run_replaces_the_previous_summary_file_with_its_own(
    store: Store, database: str, fresh_fhir_server: SekmetServer, tmp_path: Path
) -> None:
    target = tmp_path / "sync.json"
    assert sync(database, fresh_fhir_server.base_url, "--summary-file", str(target)).exit_code == 0
    store.create_form(new_form(), actor="clinician")
    stopped = f"http://127.0.0.1:{free_port()}/fhir"

    result = sync(database, stopped, "--summary-file", str(target))

    summary = json.loads(target.read_text())
    assert (result.exit_code, summary["exitCode"], summary["outcome"], summary["server"]) == (2, 2, "failed", stopped)
    assert "could not be reached" in summary["failure"]


def test_a_run_skipped_for_a_held_lease_still_writes_its_summary_file(store: Store, database: str, tmp_path: Path) -> None:
    assert store.acquire_lock("sync", "another-run", 600)
    target = tmp_path / "sync.json"

    result = sync(database, "http://127.0.0.1:9/fhir", "--summary-file", str(target))

    assert (result.exit_code, json.loads(target.read_text())["exitCode"]) == (75, 75)


def test_credentials_refused_on_the_first_request_say_so_and_not_part_way(store: Store, database: str) -> None:
    store.create_form(new_form(), actor="clinician")
    base = "http://127.0.0.1:8099/fhir"
    with responses.RequestsMock() as mocked:
        mocked.post(
            f"{base}/Consent/_search",
            status=401,
            json={"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "login", "diagnostics": "invalid token"}]},
        )

        result = sync(database, base)

    assert result.exit_code == 2
    assert "refused the credentials (401)" in result.stderr and "part-way" not in result.stderr


@pytest.mark.integration
def test_a_404_on_the_first_request_hints_that_the_base_url_is_wrong(store: Store, database: str, fresh_fhir_server: SekmetServer) -> None:
    store.create_form(new_form(), actor="clinician")
    without_fhir_path = fresh_fhir_server.base_url.removesuffix("/fhir")

    result = sync(database, without_fhir_path)

    assert result.exit_code == 2
    assert "is CASUS_FHIR_BASE_URL the FHIR base URL?" in result.stderr


@pytest.mark.integration
def test_a_push_whose_answer_was_lost_and_whose_retry_met_412_counts_as_pushed(store: Store, fresh_fhir_server: SekmetServer) -> None:
    form = store.create_form(new_form(), actor="clinician").form
    with (
        running_fault_proxy(fresh_fhir_server.base_url, rate=0.0, kinds=("drop-after",), writes_only=True, max_faults=1) as proxy,
        FhirClient(proxy.base_url, backoff_base=0.0) as client,
        FhirClient(fresh_fhir_server.base_url) as direct,
    ):
        SyncJob(store, client).run()
        store.update_form(dad_now_shares(form), expected_version=1, actor="clinician")
        proxy.rate = 1.0  # from now on: the next write lands on the server, and its answer is lost

        summary = SyncJob(store, client).run(pull=False)

        assert (proxy.counts.writes_dropped_after, only_on_server(direct, form.form_id)["meta"]["versionId"]) == (1, "2")
    assert (summary.pushed, summary.in_step, summary.conflicts) == (1, 0, [])


@pytest.mark.integration
def test_json_logs_are_one_object_a_line_with_a_utc_time_and_the_run_id_and_no_identifying_content(
    store: Store, database: str, fresh_fhir_server: SekmetServer
) -> None:
    form = store.create_form(new_form(), actor="clinician").form
    env = {
        **os.environ,
        "CASUS_FHIR_BASE_URL": fresh_fhir_server.base_url,
        "CASUS_DATABASE_URL": database,
        "CASUS_FHIR_AUTH": "none",
        "CASUS_LOG_LEVEL": "DEBUG",
    }

    done = subprocess.run(
        [sys.executable, "-m", "fhir_adapter", "sync", "--log-format", "json"], env=env, capture_output=True, text=True, timeout=120, check=False
    )

    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    run_id = json.loads(done.stdout)["runId"]
    assert lines and all(line["time"].endswith("Z") for line in lines)
    assert any(line.get("runId") == run_id and line["logger"] == "fhir_adapter.sync" for line in lines)
    assert form.young_person.nhs_number not in done.stderr


@pytest.mark.integration
def test_full_on_the_command_line_walks_everything_and_writes_nothing_to_a_server_in_step(
    store: Store, database: str, fresh_fhir_server: SekmetServer
) -> None:
    store.create_form(new_form(), actor="clinician")
    assert sync(database, fresh_fhir_server.base_url).exit_code == 0

    summary = json.loads(sync(database, fresh_fhir_server.base_url, "--full").stdout)

    assert (summary["full"], summary["pushed"], summary["inStep"], summary["exitCode"]) == (True, 0, 1, 0)


def test_the_summary_file_is_replaced_in_one_step_leaving_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "sync.json"
    target.write_text("previous")

    write_atomically(target, "next")

    assert (target.read_text(), sorted(p.name for p in tmp_path.iterdir())) == ("next", ["sync.json"])
