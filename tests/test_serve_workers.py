"""`fhir-adapter serve --workers N`: several waitress processes on one socket and one store."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def serving(database: Path | str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``fhir-adapter serve --workers 2`` on the SQLite file ``database`` (or a database URL), stopped on leaving."""
    port = free_port()
    env = {
        **os.environ,
        "CASUS_DATABASE_URL": database if isinstance(database, str) else f"sqlite:///{database}",
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


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    with serving(tmp_path / "served.db") as server:
        yield server


def sign_in_page_session(base: str) -> str:
    """Sign in on the consent pages with the API token; the session cookie's value.

    The cookies are ``Secure``, so a client on plain HTTP would not send them back by itself: the test carries them.
    """
    page = requests.get(f"{base}/consent/sign-in", timeout=10, headers={"Connection": "close"})
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    signed = requests.post(
        f"{base}/consent/sign-in",
        data={"csrf_token": csrf, "token": TOKEN},
        cookies={"casus_sign_in": page.cookies["casus_sign_in"]},
        headers={"Connection": "close"},
        allow_redirects=False,
        timeout=10,
    )
    assert signed.status_code == 303, signed.text
    return signed.cookies["casus_session"]


def page_status(base: str, session_cookie: str) -> int:
    """The consent pages' start page on a fresh connection, so the kernel may hand it to any worker."""
    response = requests.get(
        f"{base}/consent/", cookies={"casus_session": session_cookie}, headers={"Connection": "close"}, allow_redirects=False, timeout=10
    )
    return response.status_code


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


def test_a_page_session_signed_in_through_one_worker_is_honoured_by_every_worker(served: tuple[str, subprocess.Popen[str]]) -> None:
    base, _ = served
    cookie = sign_in_page_session(base)
    assert [page_status(base, cookie) for _ in range(30)] == [200] * 30


def test_a_page_session_outlives_a_restart_of_the_service(tmp_path: Path) -> None:
    with serving(tmp_path / "served.db") as (base, _):
        cookie = sign_in_page_session(base)
    with serving(tmp_path / "served.db") as (base, _):
        assert page_status(base, cookie) == 200


@pytest.mark.integration
def test_a_page_session_is_honoured_by_every_worker_on_postgresql(postgres_database_url: str) -> None:
    with serving(postgres_database_url) as (base, _):
        cookie = sign_in_page_session(base)
        assert [page_status(base, cookie) for _ in range(30)] == [200] * 30
