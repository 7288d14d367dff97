"""The decision endpoint under sustained load on 127.0.0.1 while sync runs push and pull on the same store.

A real `fhir-adapter serve` process (waitress) answers decisions for many young people; meanwhile
`fhir-adapter sync` runs back to back against the real FHIR server started by the suite, on the same
SQLite database, while new forms keep arriving through the API so every sync run has work.  Figures:
requests, errors (must be 0), p50/p99 latency, sync runs and failed sync runs (must be 0).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

import pytest

from fhir_adapter import nhs_number
from tests.hardening.figures import FigureBook, budget
from tests.support.facade import example_form
from tests.support.processes import stop_process
from tests.test_facade_process import free_port, wait_until_ready

TOKEN = "load-test-token-0123456789abcdef"
SECTION = "5. load (decision endpoint + concurrent sync)"
CLIENTS = 2


def _nhs_numbers(count: int, seed: int) -> list[str]:
    rng, out = random.Random(seed), []
    while len(out) < count:
        first = "".join(rng.choice("0123456789") for _ in range(9))
        digit = nhs_number.check_digit(first)
        if digit is not None:
            out.append(first + str(digit))
    return out


def _new_form(nhs: str) -> dict:
    form = example_form()
    form["formId"] = str(uuid.uuid4())
    form["youngPerson"]["nhsNumber"] = nhs
    return form


def _request(conn: http.client.HTTPConnection, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=payload, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


@pytest.mark.integration
def test_decisions_under_sustained_load_with_a_concurrent_sync_have_no_errors(fhir_server, tmp_path: Path, figures: FigureBook) -> None:
    seconds = budget().load_seconds
    patients = _nhs_numbers(60, seed=5)
    port = free_port()
    env = {
        **os.environ,
        "CASUS_DATABASE_URL": f"sqlite:///{tmp_path}/load.db",
        "CASUS_FHIR_BASE_URL": fhir_server.base_url,
        "CASUS_TOKENS": json.dumps([{"name": "load", "token": TOKEN, "scopes": ["admin"]}]),
    }
    # stderr to a file: waitress warns while its task queue is deep, and a pipe nobody reads would fill and stop it.
    with open(tmp_path / "server.log", "w") as server_log:
        server = subprocess.Popen(
            [sys.executable, "-m", "fhir_adapter", "serve", "--port", str(port), "--threads", "4"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=server_log,
            text=True,
        )
    base = f"http://127.0.0.1:{port}"
    latencies: list[float] = []
    errors = {"count": 0}
    sync_runs = {"ok": 0, "failed": 0}
    lock = threading.Lock()
    try:
        wait_until_ready(base, server)
        setup = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for nhs in patients[:40]:
            assert _request(setup, "POST", "/api/forms", _new_form(nhs))[0] == 201
        deadline = time.monotonic() + seconds

        def load(seed: int) -> None:
            rng = random.Random(seed)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            while time.monotonic() < deadline:
                query = {
                    "patient": rng.choice(patients),
                    "recipient-role": rng.choice(["mother", "gp", "father"]),
                    "information-type": rng.choice(["attendance", "medication"]),
                    "purpose": "TREAT",
                }
                started = time.perf_counter()
                try:
                    status, _ = _request(conn, "GET", f"/api/decision?{urlencode(query)}")
                except (OSError, http.client.HTTPException):
                    status = 0
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                with lock:
                    if status == 200:
                        latencies.append(time.perf_counter() - started)
                    else:
                        errors["count"] += 1

        def sync_loop() -> None:
            arriving = iter(patients[40:])
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            while time.monotonic() < deadline:
                nhs = next(arriving, None)
                if nhs is not None and _request(conn, "POST", "/api/forms", _new_form(nhs))[0] != 201:
                    with lock:
                        errors["count"] += 1
                run = subprocess.run(
                    [sys.executable, "-m", "fhir_adapter", "sync", "--batch-size", "10"],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=max(60, seconds * 2),
                )
                sync_runs["ok" if run.returncode == 0 else "failed"] += 1

        threads = [threading.Thread(target=load, args=(n,)) for n in range(CLIENTS)] + [threading.Thread(target=sync_loop)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=seconds * 4 + 120)
        assert not any(t.is_alive() for t in threads), "the load did not stop by itself"
    finally:
        stop_process(server)
    p = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    figures.add(SECTION, "seconds of load", seconds)
    figures.add(SECTION, "decision requests", len(latencies) + errors["count"])
    figures.add(SECTION, "errors", errors["count"])
    figures.add(SECTION, "p50 latency (µs)", round(p[49] * 1e6))
    figures.add(SECTION, "p99 latency (µs)", round(p[98] * 1e6))
    figures.add(SECTION, "sync runs completed in step", sync_runs["ok"])
    figures.add(SECTION, "sync runs failed", sync_runs["failed"])
    assert errors["count"] == 0
    assert sync_runs["failed"] == 0 and sync_runs["ok"] >= 1
    assert len(latencies) > seconds * 10, "the load generator barely ran"
    assert p[98] < 0.25, f"p99 {p[98] * 1000:.1f} ms is beyond any sane bound under load"
