"""A real `fhir-adapter serve` process held by many idle and slow connections, or busy validating, still answers.

Health checks and decisions are timed on their own before the pressure and again under it; the figures are
the medians and the slowest of each, and the test fails when a request times out or the median under
pressure is more than a few times the one before.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.hardening.figures import FigureBook
from tests.support.facade import example_form
from tests.support.processes import stop_process
from tests.test_facade_process import free_port, wait_until_ready

TOKEN = "serving-pressure-token-0123456789"
SECTION = "7. serving under pressure"
HELD_CONNECTIONS = 300
SAMPLES = 40
QUESTION = "/api/decision?patient=9434765919&recipient-role=mother&information-type=attendance&purpose=TREAT"
#: A request slower than this is a stall, not a slow answer.
STALL_SECONDS = 5.0


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {
        **os.environ,
        "CASUS_DATABASE_URL": f"sqlite:///{tmp_path}/pressure.db",
        "CASUS_TOKENS": json.dumps([{"name": "pressure", "token": TOKEN, "scopes": ["admin"]}]),
    }
    with open(tmp_path / "server.log", "w") as server_log:
        process = subprocess.Popen(
            [sys.executable, "-m", "fhir_adapter", "serve", "--port", str(port), "--threads", "4"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=server_log,
            text=True,
        )
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", process)
        status, _ = _request(port, "POST", "/api/forms", json.dumps(example_form()).encode())
        assert status == 201
        yield "127.0.0.1", port
    finally:
        stop_process(process)


def _request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = STALL_SECONDS) -> tuple[int, float]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/fhir+json"}
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    except OSError:
        return 0, time.perf_counter() - started
    finally:
        conn.close()


def _timings(port: int, path: str) -> tuple[list[int], list[float]]:
    statuses, seconds = [], []
    for _ in range(SAMPLES):
        status, took = _request(port, "GET", path)
        statuses.append(status)
        seconds.append(took)
    return statuses, seconds


def _record(figures: FigureBook, label: str, seconds: list[float]) -> float:
    median = statistics.median(seconds)
    figures.add(SECTION, f"{label}: median (ms)", round(median * 1000))
    figures.add(SECTION, f"{label}: slowest (ms)", round(max(seconds) * 1000))
    return median


def _hold_connections(port: int, count: int) -> list[socket.socket]:
    """Half idle (connected, nothing sent), half slow (a request line and one header, then nothing)."""
    held = []
    for n in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=STALL_SECONDS)
        if n % 2:
            sock.sendall(b"GET /api/decision?patient=9434765919 HTTP/1.1\r\nHost: casus\r\n")
        held.append(sock)
    return held


@pytest.mark.integration
def test_health_and_decisions_keep_their_latency_while_300_idle_and_slow_connections_are_held(served: tuple[str, int], figures: FigureBook) -> None:
    _, port = served
    quiet = {path: _timings(port, path) for path in ("/health/live", QUESTION)}
    held = _hold_connections(port, HELD_CONNECTIONS)
    try:
        time.sleep(0.5)  # let the server accept them all
        pressed = {path: _timings(port, path) for path in ("/health/live", QUESTION)}
    finally:
        for sock in held:
            sock.close()
    figures.add(SECTION, "connections held (half idle, half mid-request)", HELD_CONNECTIONS)
    for path, label in (("/health/live", "health"), (QUESTION, "decision")):
        before = _record(figures, f"{label}, quiet", quiet[path][1])
        during = _record(figures, f"{label}, {HELD_CONNECTIONS} connections held", pressed[path][1])
        figures.add(SECTION, f"{label} requests failed or stalled under pressure", sum(s != 200 for s in pressed[path][0]))
        assert set(quiet[path][0]) == {200} and set(pressed[path][0]) == {200}
        assert during <= 3 * before + 0.02, (label, before, during)


def _in_threads(count: int, work: Callable[[], Any], seconds: float) -> tuple[list[Any], Callable[[], None]]:
    results: list[Any] = []
    stop = threading.Event()

    def loop() -> None:
        deadline = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < deadline:
            results.append(work())

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()

    def finish() -> None:
        stop.set()
        for thread in threads:
            thread.join(timeout=STALL_SECONDS * 4)

    return results, finish


@pytest.mark.integration
def test_decisions_keep_answering_while_16_clients_validate_the_largest_consent_allowed(
    served: tuple[str, int], figures: FigureBook, tmp_path: Path
) -> None:
    _, port = served
    consent = json.loads(
        (Path(__file__).resolve().parents[2] / "profiles" / "examples" / "Consent-casus-example-withdrawn.json").read_text(encoding="utf-8")
    )
    consent["extension"] = [{"url": f"https://example.org/unknown-{n}"} for n in range(370)]  # just under the bound
    body = json.dumps(consent).encode()
    quiet = _timings(port, QUESTION)

    def validate_as_a_client_would() -> tuple[int, float]:
        status, took = _request(port, "POST", "/fhir/Consent/$validate", body, timeout=60)
        if status == 503:
            time.sleep(2)  # the Retry-After the answer gives
        return status, took

    validations, finish = _in_threads(16, validate_as_a_client_would, seconds=60)
    try:
        time.sleep(3.0)  # the worker processes started and busy
        pressed = _timings(port, QUESTION)
    finally:
        finish()
    statuses = [status for status, _ in validations]
    validated = [took for status, took in validations if status == 200]
    figures.add(SECTION, "slowest validation answered 200 (ms)", round(max(validated, default=0) * 1000))
    figures.add(SECTION, "validations of a ~1,000-value Consent sent by 16 clients", len(statuses))
    figures.add(SECTION, "validations answered 503 (busy, Retry-After)", statuses.count(503))
    before = _record(figures, "decision, quiet (validation test)", quiet[1])
    during = _record(figures, "decision, 16 clients validating", pressed[1])
    figures.add(SECTION, "decisions failed or stalled while validating", sum(s != 200 for s in pressed[0]))
    assert set(pressed[0]) == {200} and set(statuses) <= {200, 503}
    assert during <= 10 * before + 0.1, (before, during)
