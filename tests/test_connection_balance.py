"""Worker processes on one socket share persistent connections evenly: each new one goes to the least loaded worker."""

from __future__ import annotations

import http.client
import os
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from fhir_adapter.connection_balance import NOT_SERVING, STALE_AFTER_SECONDS, ConnectionTable
from tests.support.processes import stop_process

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="worker processes need fork")
#: Time for a closed connection to reach its worker's count.
SETTLE_SECONDS = 0.5

# Worker processes answering every request with their process id, under the real supervisor and waitress.
_WORKERS_SCRIPT = """
import os, sys
from fhir_adapter.worker_processes import listening_socket, run_workers

def make_app():
    def app(environ, start_response):
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    return app

sock = listening_socket("127.0.0.1", 0)
print(sock.getsockname()[1], flush=True)
sys.exit(run_workers(make_app, sock, int(sys.argv[1]), threads=2))
"""


@contextmanager
def workers_answering_with_their_pid(workers: int) -> Iterator[int]:
    """``workers`` processes serving on one socket; yields its port once every worker answers."""
    process = subprocess.Popen([sys.executable, "-c", _WORKERS_SCRIPT, str(workers)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        wait_for_every_worker(port, workers)
        yield port
    finally:
        stop_process(process)


def wait_for_every_worker(port: int, workers: int) -> None:
    """Open connections until every worker has answered one (each is serving), then close them all."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        opened = [connect(port) for _ in range(workers)]
        answered = {pid for _, pid in opened}
        for conn, _ in opened:
            conn.close()
        if len(answered) == workers:
            time.sleep(SETTLE_SECONDS)  # the closes reach the workers' counts
            return
        time.sleep(0.1)
    raise AssertionError("the workers did not all start")


def connect(port: int) -> tuple[http.client.HTTPConnection, str]:
    """A persistent connection, and the process id of the worker that accepted it (its first answer)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/")
    return conn, conn.getresponse().read().decode()


def open_one_after_another(port: int, count: int) -> list[tuple[http.client.HTTPConnection, str]]:
    return [connect(port) for _ in range(count)]


def test_connections_opened_one_after_another_are_shared_evenly_by_two_workers() -> None:
    with workers_answering_with_their_pid(2) as port:
        opened = open_one_after_another(port, 8)
        assert sorted(Counter(pid for _, pid in opened).values()) == [4, 4]


def test_connections_are_shared_evenly_by_three_workers() -> None:
    with workers_answering_with_their_pid(3) as port:
        opened = open_one_after_another(port, 9)
        assert sorted(Counter(pid for _, pid in opened).values()) == [3, 3, 3]


def test_a_worker_whose_connections_closed_gets_the_next_ones() -> None:
    with workers_answering_with_their_pid(2) as port:
        opened = open_one_after_another(port, 4)
        emptied = opened[0][1]
        for conn, pid in opened:
            if pid == emptied:
                conn.close()
        time.sleep(SETTLE_SECONDS)  # the closes reach that worker's event loop
        assert {pid for _, pid in open_one_after_another(port, 2)} == {emptied}


def test_a_stopped_worker_does_not_keep_the_others_from_accepting() -> None:
    with workers_answering_with_their_pid(2) as port:
        opened = open_one_after_another(port, 2)  # one each: both are the least loaded
        stopped = opened[0][1]
        os.kill(int(stopped), signal.SIGSTOP)
        try:
            later = open_one_after_another(port, 3)  # the first makes the other worker the busier one
        finally:
            os.kill(int(stopped), signal.SIGCONT)
        assert stopped not in {pid for _, pid in later}


@pytest.fixture
def tables() -> Iterator[Callable[[int], ConnectionTable]]:
    """Make connection tables (for that many workers), closed after the test."""
    made: list[ConnectionTable] = []

    def make(workers: int) -> ConnectionTable:
        made.append(ConnectionTable(workers))
        return made[-1]

    yield make
    for table in made:
        table.close()


def test_a_worker_not_yet_serving_is_never_the_least_loaded(tables: Callable[[int], ConnectionTable]) -> None:
    table = tables(2)
    assert table.counts() == [NOT_SERVING, NOT_SERVING]
    assert table.publish(0, 5, now=100.0)


def test_a_worker_holding_more_connections_than_another_does_not_accept(tables: Callable[[int], ConnectionTable]) -> None:
    table = tables(2)
    table.publish(1, 1, now=100.0)
    assert not table.publish(0, 2, now=100.0)


def test_workers_holding_as_many_connections_all_accept(tables: Callable[[int], ConnectionTable]) -> None:
    table = tables(3)
    table.publish(0, 2, now=100.0)
    table.publish(1, 2, now=100.0)
    assert table.publish(2, 2, now=100.0)
    assert table.publish(0, 2, now=100.0)


def test_a_worker_whose_loop_stopped_turning_does_not_hold_the_others_back(tables: Callable[[int], ConnectionTable]) -> None:
    table = tables(2)
    table.publish(1, 0, now=100.0)
    assert not table.publish(0, 3, now=100.0 + STALE_AFTER_SECONDS / 2)
    assert table.publish(0, 3, now=100.0 + STALE_AFTER_SECONDS * 2)


def test_waking_the_others_rings_every_bell_but_the_wakers(tables: Callable[[int], ConnectionTable]) -> None:
    table = tables(3)
    table.wake_others(1)
    readable, _, _ = select.select([table.bell(i) for i in range(3)], [], [], 0)
    assert readable == [table.bell(0), table.bell(2)]


def test_a_worker_keeps_only_its_own_bell_and_the_others_ringers(tables: Callable[[int], ConnectionTable]) -> None:
    table = tables(2)
    table.keep_for(0)
    assert table.bell(0).fileno() != -1
    assert table.bell(1).fileno() == -1
