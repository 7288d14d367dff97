"""Requests take turns at running in a serving process: first come, first served, and a long wait steps aside."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fhir_adapter.config import ConfigurationError, Settings
from fhir_adapter.request_turns import Turns, stepped_aside
from fhir_adapter.serving import ServingLimits, taking_turns

#: Long enough for a started thread to reach the point it was started for, on a slow CI machine.
SETTLE_SECONDS = 0.2


def started(target: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_running_one_request_at_a_time_is_the_default_setting() -> None:
    assert Settings.from_env({}).running_requests == 1 and ServingLimits().running_requests == 1
    assert Settings.from_env({"CASUS_RUNNING_REQUESTS": "3"}).running_requests == 3


def test_running_requests_that_is_no_positive_whole_number_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="CASUS_RUNNING_REQUESTS"):
        Settings.from_env({"CASUS_RUNNING_REQUESTS": "0"})


def test_turns_refuse_a_limit_that_would_let_nothing_run() -> None:
    with pytest.raises(ValueError):
        Turns(0)


def test_a_request_waits_while_every_turn_is_taken() -> None:
    turns = Turns(1)
    turns.take()
    second = started(turns.take)
    second.join(SETTLE_SECONDS)
    assert second.is_alive()
    turns.give()
    second.join(SETTLE_SECONDS * 10)
    assert not second.is_alive()


def test_as_many_requests_run_at_once_as_there_are_turns() -> None:
    turns = Turns(2)
    turns.take()
    second = started(turns.take)
    second.join(SETTLE_SECONDS * 10)
    assert not second.is_alive()


def test_waiting_requests_get_their_turns_in_the_order_they_asked() -> None:
    turns = Turns(1)
    turns.take()
    order: list[int] = []

    def wait_then_record(n: int) -> None:
        turns.take()
        order.append(n)
        turns.give()

    waiters = []
    for n in range(5):
        waiters.append(started(lambda n=n: wait_then_record(n)))  # type: ignore[misc]
        time.sleep(SETTLE_SECONDS / 4)  # each in the queue before the next asks
    turns.give()
    for waiter in waiters:
        waiter.join(SETTLE_SECONDS * 10)
    assert order == [0, 1, 2, 3, 4]


def test_a_request_that_steps_aside_lets_the_next_one_run_and_then_gets_its_turn_back() -> None:
    turns = Turns(1)
    next_ran, back = threading.Event(), threading.Event()

    def next_request() -> None:
        with turns.turn():
            next_ran.set()

    with turns.turn():
        with stepped_aside():
            started(next_request)
            assert next_ran.wait(SETTLE_SECONDS * 10)
        back.set()
    assert back.is_set()


def test_stepping_aside_without_a_turn_changes_nothing() -> None:
    turns = Turns(1)
    with stepped_aside():
        pass
    turns.take()  # the only turn is still free
    turns.give()


def served_by(app: Callable[..., Any], at_once: int = 1) -> Callable[..., Any]:
    return taking_turns(app, ServingLimits(running_requests=at_once))


def test_a_served_request_keeps_its_turn_until_the_server_closes_its_response() -> None:
    gate = threading.Event()

    def app(_environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"body"]

    wsgi = served_by(app)
    body = wsgi({}, lambda *_: None)
    assert list(body) == [b"body"]

    def second_request() -> None:
        wsgi({}, lambda *_: None).close()
        gate.set()

    started(second_request)
    assert not gate.wait(SETTLE_SECONDS)
    body.close()
    assert gate.wait(SETTLE_SECONDS * 10)


def test_a_response_closed_twice_gives_its_turn_back_once() -> None:
    wsgi = served_by(lambda _e, start: [start("200 OK", []) or b""], at_once=1)
    body = wsgi({}, lambda *_: None)
    body.close()
    body.close()
    held = wsgi({}, lambda *_: None)  # the one turn, taken again
    waiter = started(lambda: wsgi({}, lambda *_: None).close())
    waiter.join(SETTLE_SECONDS)
    assert waiter.is_alive(), "a second give() made a turn out of nothing"
    held.close()
    waiter.join(SETTLE_SECONDS * 10)
    assert not waiter.is_alive()


def test_the_app_bodys_own_close_is_still_called() -> None:
    closed: list[bool] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            return iter([b"x"])

        def close(self) -> None:
            closed.append(True)

    served_by(lambda _e, _s: Body())({}, lambda *_: None).close()
    assert closed == [True]


def test_a_request_whose_app_raises_gives_its_turn_back() -> None:
    def failing(_environ: dict[str, Any], _start_response: Any) -> Any:
        raise RuntimeError("boom")

    wsgi = served_by(failing)
    with pytest.raises(RuntimeError):
        wsgi({}, lambda *_: None)
    with pytest.raises(RuntimeError):  # would wait for ever if the first had kept the turn
        wsgi({}, lambda *_: None)


def test_a_served_process_runs_one_request_at_a_time_however_many_threads_it_has() -> None:
    """Through waitress itself (create_server, as ``fhir-adapter serve`` starts it): four clients, four threads."""
    import http.client

    from fhir_adapter.serving import create_server

    running, most = 0, 0
    lock = threading.Lock()

    def app(_environ: dict[str, Any], start_response: Any) -> list[bytes]:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    before = sys.getswitchinterval()
    server = create_server(app, "127.0.0.1", 0, ServingLimits(threads=4))
    serving = started(server.run)
    try:

        def ask() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=10)
            conn.request("GET", "/")
            assert conn.getresponse().read() == b"ok"
            conn.close()

        clients = [started(ask) for _ in range(4)]
        for client in clients:
            client.join(10)
        assert most == 1
    finally:
        server.close()
        serving.join(5)
        sys.setswitchinterval(before)
