"""Serving limits: waitress is started so that idle or slow clients, or validations, cannot stop the facade."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from fhir_adapter.config import ConfigurationError, Settings
from fhir_adapter.facade.fhir_rest import MAX_VALIDATE_ELEMENTS
from fhir_adapter.server import create_app
from fhir_adapter.serving import SPARE_DESCRIPTORS, ServingLimits, create_server
from fhir_adapter.store import Store
from fhir_adapter.validation_workers import ValidationWorkers, _pool
from tests.support.facade import EXAMPLES, bearer, grants
from tests.support.processes import stop_process
from tests.test_facade_process import free_port, wait_until_ready


def test_waitress_is_started_with_the_limits_and_poll() -> None:
    options = ServingLimits(threads=4, connection_limit=500, channel_timeout_seconds=20, max_body_bytes=1000).waitress_options()
    assert options["connection_limit"] == 500 and options["channel_timeout"] == 20 and options["cleanup_interval"] == 10
    assert options["asyncore_use_poll"] is True and options["threads"] == 4
    assert options["max_request_body_size"] == 2000 and options["clear_untrusted_proxy_headers"] is True


def test_the_limits_are_settings() -> None:
    settings = Settings.from_env({"CASUS_CONNECTION_LIMIT": "300", "CASUS_CHANNEL_TIMEOUT_SECONDS": "5", "CASUS_VALIDATE_CONCURRENCY": "1"})
    assert (settings.connection_limit, settings.channel_timeout_seconds, settings.validate_concurrency) == (300, 5, 1)


def test_the_switch_interval_is_a_setting_of_100_microseconds_by_default() -> None:
    assert Settings.from_env({}).switch_interval_microseconds == 100
    assert Settings.from_env({"CASUS_SWITCH_INTERVAL_MICROSECONDS": "1000"}).switch_interval_microseconds == 1000


def test_a_switch_interval_that_is_no_positive_whole_number_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="CASUS_SWITCH_INTERVAL_MICROSECONDS"):
        Settings.from_env({"CASUS_SWITCH_INTERVAL_MICROSECONDS": "0"})


def test_creating_the_server_sets_the_processes_switch_interval() -> None:
    before = sys.getswitchinterval()
    try:
        create_server(_address_echo, "127.0.0.1", 0, ServingLimits(switch_interval_microseconds=300)).close()
        assert sys.getswitchinterval() == pytest.approx(0.0003)
    finally:
        sys.setswitchinterval(before)


def test_worker_processes_are_forked_with_the_switch_interval_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Set in the parent before the fork, so every worker inherits it (``serve --workers``)."""
    from click.testing import CliRunner

    import fhir_adapter.worker_processes as worker_processes
    from fhir_adapter.cli import main

    seen: list[float] = []

    def record(*_args: Any, **_kwargs: Any) -> int:
        seen.append(sys.getswitchinterval())
        return 0

    monkeypatch.setattr(worker_processes, "run_workers", record)
    environment = {
        "CASUS_DATABASE_URL": f"sqlite:///{tmp_path / 'casus.db'}",
        "CASUS_TOKENS": json.dumps([{"name": "t", "token": "a-token-long-enough-0123", "scopes": ["decision.read"]}]),
        "CASUS_SWITCH_INTERVAL_MICROSECONDS": "700",
    }
    before = sys.getswitchinterval()
    try:
        done = CliRunner().invoke(main, ["serve", "--port", "0", "--workers", "2"], env=environment)
    finally:
        sys.setswitchinterval(before)
    assert done.exit_code == 0, done.output
    assert seen == [pytest.approx(0.0007)]


@pytest.mark.parametrize("value", ["0", "-1", "many", "\u00b2", "9" * 40])
def test_a_limit_that_is_no_positive_whole_number_is_a_configuration_error(value: str) -> None:
    with pytest.raises(ConfigurationError, match="CASUS_CONNECTION_LIMIT"):
        Settings.from_env({"CASUS_CONNECTION_LIMIT": value})


def _limit_open_files_to_200() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))


def test_the_connection_limit_is_lowered_to_fit_a_low_open_file_limit() -> None:
    code = "from fhir_adapter.serving import fitted_connection_limit; print(fitted_connection_limit(1000))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, preexec_fn=_limit_open_files_to_200)
    assert int(done.stdout) == 200 - SPARE_DESCRIPTORS


def test_a_served_facade_closes_a_connection_that_stays_silent(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "CASUS_DATABASE_URL": f"sqlite:///{tmp_path}/t.db",
        "CASUS_CHANNEL_TIMEOUT_SECONDS": "2",
        "CASUS_TOKENS": json.dumps([{"name": "it", "token": "serving-test-token-0123456789", "scopes": ["admin"]}]),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "fhir_adapter", "serve", "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", process)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
            started = time.monotonic()
            assert silent.recv(1) == b""  # closed by the server
            assert 1.5 <= time.monotonic() - started <= 8
    finally:
        stop_process(process)


@pytest.fixture
def validating_app(tmp_path: Path) -> Any:
    store = Store.open(f"sqlite:///{tmp_path}/v.db")
    yield create_app(Settings(grants=grants(), validate_concurrency=1), store=store)
    store.close()


def _consent_with(values: int) -> dict[str, Any]:
    consent = json.loads((EXAMPLES / "Consent-casus-example-withdrawn.json").read_text(encoding="utf-8"))
    consent["extension"] = [{"url": f"https://example.org/unknown-{n}"} for n in range(values // 2)]
    return consent


def test_validate_refuses_a_resource_of_more_values_than_it_takes(validating_app: Any) -> None:
    response = validating_app.test_client().post("/fhir/Consent/$validate", json=_consent_with(2 * MAX_VALIDATE_ELEMENTS), headers=bearer("engineer"))
    assert response.status_code == 413 and response.json["issue"][0]["code"] == "too-long"


def test_validate_answers_503_with_retry_after_while_every_worker_is_busy(validating_app: Any) -> None:
    client = validating_app.test_client()
    large = _consent_with(MAX_VALIDATE_ELEMENTS - 300)
    answers: list[Any] = []

    def validate() -> None:
        answers.append(client.post("/fhir/Consent/$validate", json=large, headers=bearer("engineer")))

    running = threading.Thread(target=validate)
    running.start()
    while running.is_alive() and len(answers) < 50:
        validate()
    running.join()
    statuses = [a.status_code for a in answers]
    busy = next(a for a in answers if a.status_code == 503)
    assert set(statuses) == {200, 503}
    assert busy.headers["Retry-After"] == "2" and busy.json["issue"][0]["code"] == "throttled"


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads child processes from /proc")
def test_validation_workers_leave_when_the_serving_process_is_killed(tmp_path: Path) -> None:
    port = free_port()
    token = "serving-test-token-0123456789"
    env = {
        **os.environ,
        "CASUS_DATABASE_URL": f"sqlite:///{tmp_path}/t.db",
        "CASUS_TOKENS": json.dumps([{"name": "it", "token": token, "scopes": ["admin"]}]),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "fhir_adapter", "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", process)
        consent = (EXAMPLES / "Consent-casus-example-withdrawn.json").read_bytes()
        response = requests.post(
            f"http://127.0.0.1:{port}/fhir/Consent/$validate",
            data=consent,
            timeout=60,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
        )
        assert response.status_code == 200
        workers = _children(process.pid)
        assert workers
        process.kill()  # SIGKILL: no cleanup runs in the server
        process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in workers)
    finally:
        stop_process(process)


def _address_echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [environ["REMOTE_ADDR"].encode()]


def _address_seen(limits: ServingLimits, forwarded_for: str) -> str:
    """What a WSGI app served with ``limits`` is told the client's address is, for a request through a proxy."""
    server = create_server(_address_echo, "127.0.0.1", 0, limits)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        answer = requests.get(f"http://127.0.0.1:{server.effective_port}/", headers={"X-Forwarded-For": forwarded_for}, timeout=10)
        return answer.text
    finally:
        server.close()
        thread.join(timeout=10)


def test_the_trusted_proxys_forwarded_for_names_the_client() -> None:
    assert _address_seen(ServingLimits(trusted_proxy="127.0.0.1"), "203.0.113.9") == "203.0.113.9"


def test_a_forwarded_for_from_an_untrusted_address_is_ignored() -> None:
    assert _address_seen(ServingLimits(trusted_proxy="192.0.2.1"), "203.0.113.9") == "127.0.0.1"
    assert _address_seen(ServingLimits(), "203.0.113.9") == "127.0.0.1"


def test_the_trusted_proxy_is_one_ip_address() -> None:
    assert Settings.from_env({"CASUS_TRUSTED_PROXY": "10.0.0.5"}).trusted_proxy == "10.0.0.5"
    with pytest.raises(ConfigurationError, match="CASUS_TRUSTED_PROXY"):
        Settings.from_env({"CASUS_TRUSTED_PROXY": "proxy.trust.nhs.uk"})


def test_validation_recovers_when_a_worker_process_dies() -> None:
    workers = ValidationWorkers(1)
    document = json.loads((EXAMPLES / "Consent-casus-example-competent-under-16.json").read_text(encoding="utf-8"))
    assert workers.validate(document, "r4", None) is not None
    for process in list(_pool(1)._processes.values()):  # the pool's own record of its worker processes
        os.kill(process.pid, signal.SIGKILL)
        process.join(timeout=10)
    assert workers.validate(document, "r4", None) is not None
