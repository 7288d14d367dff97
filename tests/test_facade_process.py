"""The facade as a real server process: `fhir-adapter serve` (waitress) and `fhir-adapter demo`, which `make demo` runs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.facade import example_form
from tests.support.processes import stop_process

TOKEN = "process-test-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(base: str, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early: {process.stderr.read() if process.stderr else ''}")
        try:
            if requests.get(f"{base}/health/ready", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise AssertionError("server did not become ready")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "CASUS_DATABASE_URL": f"sqlite:///{tmp_path}/served.db",
        "CASUS_TOKENS": json.dumps([{"name": "it", "token": TOKEN, "scopes": ["admin"]}]),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "fhir_adapter", "serve", "--port", str(port), "--threads", "4"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, process)
        yield base
    finally:
        stop_process(process)


def test_a_served_facade_records_a_form_answers_a_decision_and_serves_fhir(served):
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    form = example_form()
    created = session.post(f"{served}/api/forms", json=form, timeout=10)
    assert created.status_code == 201 and created.headers["ETag"] == 'W/"1"'
    verdict = session.get(
        f"{served}/api/decision",
        timeout=10,
        params={"patient": form["youngPerson"]["nhsNumber"], "recipient-role": "gp", "information-type": "medication", "purpose": "TREAT"},
    ).json()
    assert verdict["decision"] == "permit"
    consent = session.get(f"{served}/fhir/R4/Consent/{form['formId']}", timeout=10)
    assert consent.headers["Content-Type"].startswith("application/fhir+json") and consent.json()["id"] == form["formId"]
    assert session.get(f"{served}/fhir/R5/Consent/{form['formId']}", timeout=10).json()["decision"] == "deny"


def test_a_served_facade_refuses_requests_without_a_token(served):
    response = requests.get(f"{served}/fhir/Consent", timeout=10)
    assert response.status_code == 401
    assert response.json()["resourceType"] == "OperationOutcome"


def test_a_served_facade_answers_its_capability_statement_without_a_token(served):
    response = requests.get(f"{served}/fhir/metadata", timeout=10)
    assert response.status_code == 200 and response.json()["resourceType"] == "CapabilityStatement"


def test_serve_refuses_to_start_without_tokens(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASUS_TOKENS")}
    env["CASUS_DATABASE_URL"] = f"sqlite:///{tmp_path}/x.db"
    result = subprocess.run(
        [sys.executable, "-m", "fhir_adapter", "serve", "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "no bearer tokens" in result.stderr and "Traceback" not in result.stderr


def test_the_demo_starts_with_sample_forms_and_answers_over_http(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "fhir_adapter", "demo", "--smoke", "--port", "0", "--database", str(tmp_path / "demo.db")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    smoke = json.loads(result.stdout)
    assert smoke["activeConsents"] == 3
    assert smoke["sampleDecision"]["decision"] in ("permit", "deny") and smoke["sampleDecision"]["reason"]
    token_file = tmp_path / "demo-tokens.env"
    assert token_file.stat().st_mode & 0o077 == 0
    tokens = [line.split("=", 1)[1] for line in token_file.read_text().splitlines()]
    assert not any(t in result.stdout or t in result.stderr for t in tokens)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fhir_adapter", *args], env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=60
    )


def serve_env(tmp_path: Path, database_url: str | None = None) -> dict[str, str]:
    return {
        "CASUS_DATABASE_URL": database_url or f"sqlite:///{tmp_path}/x.db",
        "CASUS_TOKENS": json.dumps([{"name": "it", "token": TOKEN, "scopes": ["admin"]}]),
    }


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def test_serve_on_a_port_in_use_says_so_in_one_line_and_exits_2(tmp_path: Path, busy_port: int):
    result = run_cli("serve", "--port", str(busy_port), env=serve_env(tmp_path))
    assert result.returncode == 2
    assert result.stderr == f"cannot listen on 127.0.0.1:{busy_port}: Address already in use\n"


def test_demo_on_a_port_in_use_says_so_in_one_line_and_exits_2(tmp_path: Path, busy_port: int):
    result = run_cli("demo", "--port", str(busy_port), "--database", str(tmp_path / "demo.db"))
    assert result.returncode == 2
    assert result.stderr == f"cannot listen on 127.0.0.1:{busy_port}: Address already in use\n"


def test_serve_with_an_unsupported_database_says_so_in_one_line_and_exits_2(tmp_path: Path):
    result = run_cli("serve", "--port", "0", env=serve_env(tmp_path, "mysql://casus:secret-pw@db.example/casus"))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "configuration error: CASUS_DATABASE_URL: unsupported database 'mysql': use sqlite:///path/file.db or postgresql+psycopg://..."
    ]


def test_serve_reports_the_port_it_picked_when_asked_for_any(tmp_path: Path):
    process = subprocess.Popen(
        [sys.executable, "-m", "fhir_adapter", "serve", "--port", "0"],
        env={**os.environ, **serve_env(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stderr.readline() if process.stderr else ""
        port = int(line.split("http://127.0.0.1:", 1)[1].split(" ", 1)[0])
        assert port > 0
        wait_until_ready(f"http://127.0.0.1:{port}", process)
    finally:
        process.terminate()
        process.wait(timeout=10)
