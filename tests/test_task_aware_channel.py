"""waitress connections ask the event loop to poll for writing only when it can use the answer (serving.TaskAwareChannel)."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
from waitress.parser import HTTPRequestParser
from waitress.server import create_server as waitress_server

from fhir_adapter.serving import ServingLimits, TaskAwareChannel, create_server, use_task_aware_channels

CHUNK = 65_536


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


@pytest.fixture
def channel() -> Iterator[TaskAwareChannel]:
    """A channel of a real server, on one end of a socket pair, with nothing buffered and no task."""
    server = create_server(hello, "127.0.0.1", 0, ServingLimits(threads=1))
    ours, theirs = socket.socketpair()
    made = TaskAwareChannel(server, ours, ("127.0.0.1", 0), server.adj, map={})
    try:
        yield made
    finally:
        made.close()
        theirs.close()
        server.close()


@contextmanager
def held_by_another_thread(lock: Any) -> Iterator[None]:
    """``lock`` held by a task thread for the block (the channel's lock is re-entrant, so not by this thread)."""
    taken, done = threading.Event(), threading.Event()

    def task() -> None:
        with lock:
            taken.set()
            done.wait(10)

    thread = threading.Thread(target=task)
    thread.start()
    taken.wait(10)
    try:
        yield
    finally:
        done.set()
        thread.join(10)


def buffered(channel: TaskAwareChannel, size: int, *, task_running: bool) -> TaskAwareChannel:
    channel.total_outbufs_len = size
    channel.requests = [HTTPRequestParser(channel.adj)] if task_running else []
    return channel


def test_a_channel_with_nothing_to_send_is_not_polled_for_writing(channel: TaskAwareChannel) -> None:
    assert not channel.writable()


def test_a_channel_is_not_polled_for_writing_while_its_task_is_sending(channel: TaskAwareChannel) -> None:
    buffered(channel, 500, task_running=True)
    with held_by_another_thread(channel.outbuf_lock):
        assert not channel.writable()


def test_bytes_a_running_task_could_not_send_are_polled_for_once_it_lets_go(channel: TaskAwareChannel) -> None:
    assert buffered(channel, 500, task_running=True).writable()


def test_bytes_left_after_the_task_ended_are_polled_for(channel: TaskAwareChannel) -> None:
    assert buffered(channel, 500, task_running=False).writable()


def test_above_the_high_water_mark_the_channel_is_polled_for_even_while_the_task_holds_the_lock(channel: TaskAwareChannel) -> None:
    buffered(channel, channel.adj.outbuf_high_watermark + 1, task_running=True)
    with held_by_another_thread(channel.outbuf_lock):
        assert channel.writable()


def test_a_channel_that_is_to_close_is_polled_for_writing(channel: TaskAwareChannel) -> None:
    channel.will_close = True
    assert channel.writable()


def test_the_servers_create_server_makes_accept_into_task_aware_channels() -> None:
    server = create_server(hello, "127.0.0.1", 0, ServingLimits(threads=1))
    try:
        assert server.channel_class is TaskAwareChannel
    finally:
        server.close()


@contextmanager
def running(server: Any) -> Iterator[int]:
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield server.effective_port
    finally:
        server.close()
        server.task_dispatcher.shutdown()


def test_a_streamed_response_far_above_the_high_water_mark_arrives_whole() -> None:
    chunks = 128

    def stream(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(chunks * CHUNK))])
        for i in range(chunks):
            yield bytes([i % 256]) * CHUNK

    # a small high-water mark: the task waits for the event loop to drain the buffer many times over
    server = use_task_aware_channels(waitress_server(stream, host="127.0.0.1", port=0, threads=2, outbuf_high_watermark=4 * CHUNK))
    with running(server) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        conn.request("GET", "/")
        time.sleep(0.5)  # a slow reader: the socket's buffers fill, so the task must wait for the loop to send
        body = conn.getresponse().read()
        conn.close()
    assert len(body) == chunks * CHUNK
    assert body[-1] == (chunks - 1) % 256


def test_concurrent_keep_alive_clients_get_every_answer() -> None:
    server = create_server(hello, "127.0.0.1", 0, ServingLimits(threads=4))

    def client(port: int) -> list[bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        answers = []
        for _ in range(200):
            conn.request("GET", "/")
            answers.append(conn.getresponse().read())
        conn.close()
        return answers

    with running(server) as port, ThreadPoolExecutor(4) as pool:
        results = list(pool.map(client, [port] * 4))
    assert [answer for answers in results for answer in answers] == [b"hello"] * 800
