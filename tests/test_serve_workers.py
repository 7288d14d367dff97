"""`fhir-adapter serve --workers N`: several waitress processes on one socket and one store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.facade import example_form
from tests.support.processes import stop_process
from tests.test_facade_process import TOKEN, free_port, wait_until_ready

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="worker processes need fork")
WORKERS = 2


def worker_pids(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children")
    return [int(pid) for pid in children.read_text().split()] if children.exists() else []


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    env = {
        **os.environ,
        "CASUS_DATABASE_URL": f"sqlite:///{tmp_path}/served.db",
        "CASUS_TOKENS": json.dumps([{"name": "it", "token": TOKEN, "scopes": ["admin"]}]),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "fhir_adapter", "serve", "--port", str(port), "--threads", "2", "--workers", str(WORKERS)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(base, process)
        yield base, process
    finally:
        stop_process(process)


def decide(base: str, nhs: str) -> str:
    """One decision on a fresh connection, so the kernel may hand it to any worker."""
    response = requests.get(
        f"{base}/api/decision",
        timeout=10,
        headers={"Authorization": f"Bearer {TOKEN}", "Connection": "close"},
        params={"patient": nhs, "recipient-role": "gp", "information-type": "medication", "purpose": "TREAT"},
    )
    return str(response.json()["decision"])


def test_serve_with_workers_runs_that_many_processes(served: tuple[str, subprocess.Popen[str]]) -> None:
    _, process = served
    assert len(worker_pids(process.pid)) == WORKERS


def test_a_write_through_one_worker_is_seen_by_the_next_decision_in_every_worker(served: tuple[str, subprocess.Popen[str]]) -> None:
    base, _ = served
    form = example_form()
    nhs = form["youngPerson"]["nhsNumber"]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.post(f"{base}/api/forms", json=form, headers=auth, timeout=10).status_code == 201
    assert {decide(base, nhs) for _ in range(20)} == {"permit"}  # every worker now holds the patient in its cache
    form["status"] = "withdrawn"
    changed = requests.put(f"{base}/api/forms/{form['formId']}", json=form, timeout=10, headers={**auth, "If-Match": 'W/"1"'})
    assert changed.status_code == 200
    assert {decide(base, nhs) for _ in range(20)} == {"deny"}


def test_stopping_the_parent_stops_every_worker(served: tuple[str, subprocess.Popen[str]]) -> None:
    _, process = served
    workers = worker_pids(process.pid)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()]


def test_a_worker_that_dies_stops_the_service_with_a_failure(served: tuple[str, subprocess.Popen[str]]) -> None:
    _, process = served
    os.kill(worker_pids(process.pid)[0], signal.SIGKILL)
    assert process.wait(timeout=20) == 1
