"""Many writers on one form with If-Match, decisions asked meanwhile: SQLite (threads, and processes) and PostgreSQL.

No lost update: the final version is 1 + the acknowledged writes, every refused write is a 412, and
every acknowledged write is stored exactly as sent at the version it was acknowledged as.  No
decision from a half-written version: each verdict cites a version that exists, and the engine
given that exact stored version offline reaches the same verdict.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask

from fhir_adapter.config import Settings
from fhir_adapter.server import create_app
from fhir_adapter.store import Store
from tests.hardening.contention import SeenVerdict, WriteResult, inconsistent, keep_deciding, lost, read_version, write, writer_process
from tests.hardening.figures import FigureBook, budget
from tests.support.facade import bearer, example_form, grants

BARRIER_TIMEOUT_SECONDS = 120
PROCESSES = 2


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_database_url")
    return f"sqlite:///{tmp_path / 'casus.db'}"


@pytest.fixture
def shared(database_url: str) -> Iterator[tuple[Flask, Store, str]]:
    store = Store.open(database_url)
    yield create_app(Settings(grants=grants()), store=store), store, database_url
    store.close()


def _stored_form(app: Flask) -> tuple[str, str]:
    form = example_form()
    assert app.test_client().post("/api/forms", json=form, headers=bearer("clinician")).status_code == 201
    return form["formId"], form["youngPerson"]["nhsNumber"]


def _record(figures: FigureBook, section: str, writes: list[WriteResult], seen: list[SeenVerdict], lost_count: int, wrong: list[str]) -> None:
    figures.add(section, "writers", len({w.writer for w in writes}))
    figures.add(section, "writes tried", len(writes))
    figures.add(section, "writes acknowledged (200)", sum(w.status == 200 for w in writes))
    figures.add(section, "412s", sum(w.status == 412 for w in writes))
    figures.add(section, "other statuses", sum(w.status not in (200, 412) for w in writes))
    figures.add(section, "lost updates", lost_count)
    figures.add(section, "decisions asked", len(seen))
    figures.add(section, "distinct versions cited", len({v.version for v in seen}))
    figures.add(section, "inconsistent decisions", len(wrong))


def _while_deciding(app: Flask, nhs: str, at: datetime, work: Callable[[], list[WriteResult]]) -> tuple[list[WriteResult], list[SeenVerdict]]:
    """Run ``work`` (the writers) while decider threads ask the same question; stop them when it ends."""
    stop, seen = threading.Event(), []  # type: ignore[var-annotated]
    with ThreadPoolExecutor(max_workers=budget().decider_threads) as pool:
        deciders = [pool.submit(keep_deciding, app.test_client(), nhs, at, stop, seen) for _ in range(budget().decider_threads)]
        try:
            writes = work()
        finally:
            stop.set()
        for done in deciders:
            done.result()
    return writes, seen


def _verify(store: Store, form_id: str, nhs: str, at: datetime, writes: list[WriteResult], seen: list[SeenVerdict]) -> tuple[int, int, list[str]]:
    final = store.get(form_id).version
    lost_count = sum(lost(store, w) for w in writes if w.status == 200)
    wrong = [why for v in set(seen) if (why := inconsistent(store, nhs, at, v))]
    return final, lost_count, wrong


def test_threads_writing_in_lockstep_lose_nothing_and_decisions_follow_whole_versions(shared: tuple[Flask, Store, str], figures: FigureBook) -> None:
    app, store, _url = shared
    section = f"2. concurrency ({store.backend}, threads)"
    form_id, nhs = _stored_form(app)
    at = datetime.now(UTC) + timedelta(hours=1)
    writers, rounds = budget().writer_threads, budget().write_rounds
    barrier = threading.Barrier(writers, timeout=BARRIER_TIMEOUT_SECONDS)

    def writer(index: int) -> list[WriteResult]:
        client, results = app.test_client(), []
        for _ in range(rounds):
            version, current = read_version(client, form_id)
            barrier.wait()  # everyone has read the same version: exactly one write per round can win
            results.append(write(client, form_id, f"thread-{index}", index, version, current))
            barrier.wait()  # everyone has written before anyone reads again
        return results

    def all_writers() -> list[WriteResult]:
        with ThreadPoolExecutor(max_workers=writers) as pool:
            futures: list[Future[list[WriteResult]]] = [pool.submit(writer, i) for i in range(writers)]
            return [w for f in futures for w in f.result()]

    writes, seen = _while_deciding(app, nhs, at, all_writers)
    final, lost_count, wrong = _verify(store, form_id, nhs, at, writes, seen)
    _record(figures, section, writes, seen, lost_count, wrong)
    acknowledged = sum(w.status == 200 for w in writes)
    assert {w.status for w in writes} <= {200, 412}
    assert acknowledged == rounds  # one winner per round, no more (a lost update) and no fewer (a spurious refusal)
    assert final == 1 + acknowledged
    assert lost_count == 0
    assert seen and not wrong, wrong[:5]


def test_processes_and_threads_writing_one_sqlite_file_lose_nothing(tmp_path: Path, figures: FigureBook) -> None:
    url = f"sqlite:///{tmp_path / 'casus.db'}"
    store = Store.open(url)
    try:
        app = create_app(Settings(grants=grants()), store=store)
        section = "2. concurrency (sqlite, processes + threads)"
        form_id, nhs = _stored_form(app)
        at = datetime.now(UTC) + timedelta(hours=1)
        attempts = budget().process_writes

        def thread_writer(index: int) -> list[WriteResult]:
            client = app.test_client()
            return [write(client, form_id, f"thread-{index}", index, *read_version(client, form_id)) for _ in range(attempts)]

        def all_writers() -> list[WriteResult]:
            context = multiprocessing.get_context("spawn")  # a fresh interpreter: no connection or lock inherited
            with (
                ProcessPoolExecutor(max_workers=PROCESSES, mp_context=context) as processes,
                ThreadPoolExecutor(max_workers=budget().writer_threads) as threads,
            ):
                children = [processes.submit(writer_process, url, form_id, 100 + i, attempts) for i in range(PROCESSES)]
                local = [threads.submit(thread_writer, i) for i in range(budget().writer_threads)]
                return [w for f in (*children, *local) for w in f.result()]

        writes, seen = _while_deciding(app, nhs, at, all_writers)
        final, lost_count, wrong = _verify(store, form_id, nhs, at, writes, seen)
        _record(figures, section, writes, seen, lost_count, wrong)
        assert {w.status for w in writes} <= {200, 412}
        assert any(w.writer.startswith("process-") and w.status == 200 for w in writes)  # the other processes really wrote
        assert final == 1 + sum(w.status == 200 for w in writes)
        assert lost_count == 0
        assert seen and not wrong, wrong[:5]
    finally:
        store.close()
