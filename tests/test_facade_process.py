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
    env = {**os.environ, "CASUS_DATABASE_URL": f"sqlite:///{tmp_path}/served.db",
           "CASUS_TOKENS": json.dumps([{"name": "it", "token": TOKEN, "scopes": ["admin"]}])}
    process = subprocess.Popen([sys.executable, "-m", "fhir_adapter", "serve", "--port", str(port), "--threads", "4"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, process)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_a_served_facade_records_a_form_answers_a_decision_and_serves_fhir(served):
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    form = example_form()
    created = session.post(f"{served}/api/forms", json=form, timeout=10)
    assert created.status_code == 201 and created.headers["ETag"] == 'W/"1"'
    verdict = session.get(f"{served}/api/decision", timeout=10, params={
        "patient": form["youngPerson"]["nhsNumber"], "recipient-role": "gp", "information-type": "medication", "purpose": "TREAT"}).json()
    assert verdict["decision"] == "permit"
    consent = session.get(f"{served}/fhir/R4/Consent/{form['formId']}", timeout=10)
    assert consent.headers["Content-Type"].startswith("application/fhir+json") and consent.json()["id"] == form["formId"]
    assert session.get(f"{served}/fhir/R5/Consent/{form['formId']}", timeout=10).json()["decision"] == "deny"


def test_a_served_facade_refuses_requests_without_a_token(served):
    response = requests.get(f"{served}/fhir/metadata", timeout=10)
    assert response.status_code == 401
    assert response.json()["resourceType"] == "OperationOutcome"


def test_serve_refuses_to_start_without_tokens(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASUS_TOKENS")}
    env["CASUS_DATABASE_URL"] = f"sqlite:///{tmp_path}/x.db"
    result = subprocess.run([sys.executable, "-m", "fhir_adapter", "serve", "--port", str(free_port())],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "no bearer tokens" in result.stderr and "Traceback" not in result.stderr


def test_the_demo_starts_with_sample_forms_and_answers_over_http(tmp_path: Path):
    result = subprocess.run([sys.executable, "-m", "fhir_adapter", "demo", "--smoke", "--port", "0",
                             "--database", str(tmp_path / "demo.db")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    smoke = json.loads(result.stdout)
    assert smoke["activeConsents"] == 3
    assert smoke["sampleDecision"]["decision"] in ("permit", "deny") and smoke["sampleDecision"]["reason"]
    token_file = tmp_path / "demo-tokens.env"
    assert token_file.stat().st_mode & 0o077 == 0
    tokens = [line.split("=", 1)[1] for line in token_file.read_text().splitlines()]
    assert not any(t in result.stdout or t in result.stderr for t in tokens)
