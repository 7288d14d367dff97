"""``fhir-adapter sync`` as cron sees it: exit codes, the JSON summary, one-line failures, no secrets, no noise.

Runs in-process through click's CliRunner (whose stderr is not a terminal), against a real FHIR server
where the run should succeed and a mocked or absent one where it should not.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import responses
from click.testing import CliRunner, Result

from fhir_adapter.cli import main
from fhir_adapter.fhir_client import FhirClient
from fhir_adapter.mappings import codes
from fhir_adapter.mappings.r4 import form_to_r4
from fhir_adapter.store import Store
from fhir_adapter.sync_cli import ProgressLine, progress_for
from tests.support.fhir_server import SekmetServer, free_port
from tests.test_sync import new_form

SUMMARY_KEYS = {
    "server",
    "runId",
    "startedAt",
    "endedAt",
    "exitCode",
    "outcome",
    "failure",
    "full",
    "dryRun",
    "pushed",
    "pulled",
    "inStep",
    "conflicts",
    "rejected",
    "deletedOnServer",
    "requests",
    "retries",
    "durationSeconds",
}
TOKEN = "casus-test-token-7f3a9c1e-never-print-me"


@pytest.fixture
def database(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'casus.sqlite3'}"


@pytest.fixture
def store(database: str) -> Iterator[Store]:
    with Store.open(database) as s:
        yield s


def settings(database: str, base_url: str | None, **extra: str) -> dict[str, str | None]:
    return {"CASUS_FHIR_BASE_URL": base_url, "CASUS_DATABASE_URL": database, "CASUS_FHIR_AUTH": "none", "CASUS_FHIR_TOKEN": None, **extra}


def sync(env: dict[str, str | None], *args: str) -> Result:
    return CliRunner().invoke(main, ["sync", *args], env=env)


def one_line_reason(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# --------------------------------------------------------------------------- exit 0 and 1, the summary


@pytest.mark.integration
def test_a_run_in_step_exits_0_with_the_json_summary_on_stdout(store: Store, database: str, fresh_fhir_server: SekmetServer) -> None:
    store.create_form(new_form(), actor="clinician")

    result = sync(settings(database, fresh_fhir_server.base_url))

    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert set(summary) == SUMMARY_KEYS
    assert (summary["pushed"], summary["pulled"], summary["conflicts"], summary["dryRun"]) == (1, 0, [], False)


@pytest.mark.integration
def test_the_summary_file_receives_the_summary_and_stdout_stays_empty(
    store: Store, database: str, fresh_fhir_server: SekmetServer, tmp_path: Path
) -> None:
    store.create_form(new_form(), actor="clinician")
    target = tmp_path / "reports" / "sync.json"

    result = sync(settings(database, fresh_fhir_server.base_url), "--summary-file", str(target))

    assert (result.exit_code, result.stdout) == (0, "")
    assert json.loads(target.read_text())["pushed"] == 1


@pytest.mark.integration
def test_a_run_that_rejects_a_server_consent_exits_1(database: str, fresh_fhir_server: SekmetServer) -> None:
    broken = form_to_r4(new_form())
    del broken["policy"]
    with FhirClient(fresh_fhir_server.base_url) as client:
        client.create(broken)

    result = sync(settings(database, fresh_fhir_server.base_url))

    assert result.exit_code == 1
    assert len(json.loads(result.stdout)["rejected"]) == 1


@pytest.mark.integration
def test_pull_only_pushes_nothing(store: Store, database: str, fresh_fhir_server: SekmetServer) -> None:
    local = store.create_form(new_form(), actor="clinician").form

    result = sync(settings(database, fresh_fhir_server.base_url), "--pull-only")

    assert result.exit_code == 0
    assert json.loads(result.stdout)["pushed"] == 0
    with FhirClient(fresh_fhir_server.base_url) as client:
        assert list(client.search("Consent", {"identifier": f"{codes.ID_CONSENT_FORM}|{local.form_id}"})) == []


@pytest.mark.integration
def test_no_progress_is_drawn_when_stderr_is_not_a_terminal(store: Store, database: str, fresh_fhir_server: SekmetServer) -> None:
    for _ in range(3):
        store.create_form(new_form(), actor="clinician")

    result = sync(settings(database, fresh_fhir_server.base_url), "--batch-size", "1")

    assert (result.exit_code, result.stderr) == (0, "")


@pytest.mark.integration
def test_the_bearer_token_is_never_printed_by_a_successful_run(store: Store, database: str, fresh_fhir_server: SekmetServer) -> None:
    store.create_form(new_form(), actor="clinician")

    result = sync(settings(database, fresh_fhir_server.base_url, CASUS_FHIR_AUTH="bearer", CASUS_FHIR_TOKEN=TOKEN))

    assert result.exit_code == 0, result.stderr
    assert TOKEN not in result.stdout + result.stderr


# --------------------------------------------------------------------------- exit 2: failed


def test_a_missing_server_url_exits_2_naming_the_setting(database: str) -> None:
    result = sync(settings(database, None))

    assert result.exit_code == 2
    assert "CASUS_FHIR_BASE_URL" in one_line_reason(result)
    assert (json.loads(result.stdout)["exitCode"], json.loads(result.stdout)["failure"]) == (2, "CASUS_FHIR_BASE_URL must be set")


def test_a_held_lease_skips_the_run_with_exit_75_naming_the_holder_and_expiry(store: Store, database: str) -> None:
    assert store.acquire_lock("sync", "another-run", 600)
    expires = store.sync_state.lock_holder("sync").expires_at.isoformat(timespec="seconds")  # type: ignore[union-attr]

    result = sync(settings(database, "http://127.0.0.1:9/fhir"))

    assert result.exit_code == 75
    assert f"another-run until {expires}" in one_line_reason(result)
    assert json.loads(result.stdout)["outcome"] == "skipped"


def test_an_unreachable_server_exits_2(store: Store, database: str) -> None:
    store.create_form(new_form(), actor="clinician")

    result = sync(settings(database, f"http://127.0.0.1:{free_port()}/fhir", CASUS_FHIR_MAX_RETRIES="0"))

    assert result.exit_code == 2
    assert "ConnectionError" in one_line_reason(result)


def test_an_unreachable_server_on_a_dry_run_says_nothing_was_written(store: Store, database: str) -> None:
    store.create_form(new_form(), actor="clinician")

    result = sync(settings(database, f"http://127.0.0.1:{free_port()}/fhir", CASUS_FHIR_MAX_RETRIES="0"), "--dry-run")

    assert result.exit_code == 2
    reason = one_line_reason(result)
    assert "nothing was written (dry run)" in reason and "progress so far is kept" not in reason


def test_plain_http_to_a_remote_host_is_refused_with_exit_2(database: str) -> None:
    result = sync(settings(database, "http://fhir.example.org/fhir"))

    assert result.exit_code == 2
    assert "https" in one_line_reason(result)


def test_the_plain_http_refusal_names_the_setting_not_a_python_argument(database: str) -> None:
    result = sync(settings(database, "http://fhir.example.org/fhir"))

    assert one_line_reason(result) == (
        "sync: failed: CASUS_FHIR_BASE_URL must use https (plain http is allowed only to this machine: localhost, 127.0.0.0/8, ::1)"
    )


def test_a_plain_http_token_url_is_refused_naming_its_setting(database: str) -> None:
    result = sync(settings(database, "https://fhir.example.org/fhir", CASUS_FHIR_AUTH="smart", CASUS_FHIR_TOKEN_URL="http://auth.example.org/token"))

    assert result.exit_code == 2
    assert one_line_reason(result).startswith("sync: failed: CASUS_FHIR_TOKEN_URL must use https")


def test_a_token_the_server_refuses_exits_2_without_printing_it(store: Store, database: str) -> None:
    store.create_form(new_form(), actor="clinician")
    base = "http://127.0.0.1:8099/fhir"
    with responses.RequestsMock() as mocked:
        mocked.post(
            f"{base}/Consent/_search",
            status=401,
            json={"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "login", "diagnostics": "invalid token"}]},
        )

        result = sync(settings(database, base, CASUS_FHIR_AUTH="bearer", CASUS_FHIR_TOKEN=TOKEN))

    assert result.exit_code == 2
    assert "401" in one_line_reason(result)
    assert TOKEN not in result.stdout + result.stderr


def test_a_database_that_cannot_be_opened_exits_2_without_printing_its_password(tmp_path: Path) -> None:
    url = f"postgresql://casus:db-password-123@127.0.0.1:{free_port()}/casus"

    result = sync(settings(url, "http://127.0.0.1:9/fhir"))

    assert result.exit_code == 2
    assert "CASUS_DATABASE_URL" in one_line_reason(result)
    assert "db-password-123" not in result.stdout + result.stderr


def test_push_only_and_pull_only_together_exit_2(database: str) -> None:
    result = sync(settings(database, "http://127.0.0.1:9/fhir"), "--push-only", "--pull-only")

    assert result.exit_code == 2
    assert "exclude" in one_line_reason(result)


# --------------------------------------------------------------------------- the progress display


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_drawn_in_place_on_a_terminal() -> None:
    terminal = _Terminal()
    progress = progress_for(terminal)
    assert isinstance(progress, ProgressLine)

    progress("push", 5)
    progress("pull", 3)
    progress.close()

    assert terminal.getvalue().count("\r") == 2
    assert terminal.getvalue().endswith("5 forms checked for push, 3 Consents read\n")


def test_no_progress_display_is_made_for_a_pipe() -> None:
    pipe: Any = io.StringIO()

    assert progress_for(pipe) is None
