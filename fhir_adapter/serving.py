"""Serving the facade under waitress with limits, so that a few clients cannot stop it for everyone.

waitress reads every request on one I/O thread and hands only complete requests to its worker threads, so an
idle or slow connection costs a file descriptor, not a worker.  Its defaults still let a handful of clients
stop the server: at 100 open connections (``connection_limit``) it stops accepting, so a health check waits
behind idle sockets, and ``select()`` cannot watch more than 1,024 descriptors.  Here the limit is high (and
the process's open-file limit raised to fit it), ``poll()`` is used, a silent connection is closed after
``channel_timeout`` seconds, and request headers and bodies are capped.  What is left — many clients from
many addresses, or a client that trickles bytes forever — is the reverse proxy's job (docs/operators.md).

The process's thread switch interval is shortened too (``use_switch_interval``): waitress's I/O thread and its
workers share one GIL, and at CPython's default (5 ms) a worker that has finished its I/O can wait that long
for the GIL while the I/O thread keeps it; under load from a few keep-alive clients on a small machine that
wait compounds into tens of milliseconds per request and collapses throughput (docs/benchmarks.md).  Even at a
short interval, worker threads that compute at the same time keep the I/O thread waiting, so requests take
turns at running (``taking_turns``, see request_turns.py): one at a time in each process by default.
"""

from __future__ import annotations

import logging
import select
import sys
from dataclasses import dataclass
from typing import Any

from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer

from .request_turns import Turns

try:
    import resource
except ImportError:  # Windows: no rlimits; its socket limits are the system's own
    resource = None  # type: ignore[assignment]

log = logging.getLogger("fhir_adapter.serving")

#: File descriptors the process needs besides its connections: the listening socket, the database, logs, imports.
SPARE_DESCRIPTORS = 64
#: Largest request header block (request line, headers, query string); a bearer token is at most 4 KB.
MAX_HEADER_BYTES = 65_536


@dataclass(frozen=True)
class ServingLimits:
    """What one client, or a few, may hold of the server; every figure is a setting (docs/operators.md)."""

    threads: int = 8
    connection_limit: int = 1_000
    channel_timeout_seconds: int = 30
    max_body_bytes: int = 1_000_000
    trusted_proxy: str | None = None  # only this address's X-Forwarded-For is believed (its last hop: the client)
    switch_interval_microseconds: int = 100  # the longest a thread holds the GIL while another waits for it
    running_requests: int = 1  # requests running Python at once; the other threads wait their turn (request_turns.py)

    def waitress_options(self) -> dict[str, Any]:
        """Keyword arguments for ``waitress.create_server``.

        waitress's body limit is set at twice the facade's, so a body just over the facade's limit gets the
        facade's 413 OperationOutcome, and a body far over it is cut off by waitress before it is buffered.
        """
        return {
            "threads": self.threads,
            "connection_limit": fitted_connection_limit(self.connection_limit),
            "channel_timeout": self.channel_timeout_seconds,
            "cleanup_interval": max(1, min(30, self.channel_timeout_seconds // 2)),
            "max_request_body_size": 2 * self.max_body_bytes,
            "max_request_header_size": MAX_HEADER_BYTES,
            "asyncore_use_poll": hasattr(select, "poll"),  # Windows has only select()
            "clear_untrusted_proxy_headers": True,
            **self._proxy_options(),
        }

    def _proxy_options(self) -> dict[str, Any]:
        """The client's address from the trusted proxy's X-Forwarded-For, so sign-in throttling and logs see clients.

        Without it every client behind the proxy shares the proxy's address; from anyone else the header is dropped.
        """
        if self.trusted_proxy is None:
            return {}
        return {"trusted_proxy": self.trusted_proxy, "trusted_proxy_count": 1, "trusted_proxy_headers": {"x-forwarded-for"}}


def fitted_connection_limit(wanted: int) -> int:
    """``wanted``, after raising the soft open-file limit to hold it; less, with a warning, if the hard limit is lower.

    A connection limit above the open-file limit would make accept() fail instead of queueing new clients.
    """
    if resource is None:
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + SPARE_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            log.warning("cannot raise the open-file limit from %d", soft)
    if soft != resource.RLIM_INFINITY and soft < needed:
        fitted = max(1, soft - SPARE_DESCRIPTORS)
        log.warning("connection limit lowered from %d to %d to fit the open-file limit (%d); raise it (ulimit -n, LimitNOFILE)", wanted, fitted, soft)
        return fitted
    return wanted


def use_switch_interval(limits: ServingLimits) -> None:
    """Set the interpreter's thread switch interval for serving (process-wide; a forked worker inherits it).

    A short interval bounds how long a thread that is ready to run waits for the GIL.  The price is more
    switches between threads that are all computing, a few microseconds each: small beside requests that
    mostly wait on sockets and the database.
    """
    sys.setswitchinterval(limits.switch_interval_microseconds / 1_000_000)


def taking_turns(app: Any, limits: ServingLimits) -> Any:
    """``app`` as a WSGI app whose requests run ``limits.running_requests`` at a time, in the order they came.

    A turn lasts until the server closes the response (PEP 3333: it must, once it has written the body or
    given up): writing the response hands the GIL over at every send, and a next request computing
    meanwhile would keep this one waiting there, as in the convoy the turns are for.
    """
    turns = Turns(limits.running_requests)

    def in_turn(environ: dict[str, Any], start_response: Any) -> Any:
        turns.take()
        try:
            with turns.holding():
                body = app(environ, start_response)
        except BaseException:
            turns.give()
            raise
        return _TurnEndsOnClose(body, turns)

    return in_turn


class _TurnEndsOnClose:
    """A response body that gives its request's turn back when the server closes it (once, whatever happens)."""

    def __init__(self, body: Any, turns: Turns) -> None:
        self._body = body
        self._turns: Turns | None = turns

    def __iter__(self) -> Any:
        return iter(self._body)

    def close(self) -> None:
        try:
            if hasattr(self._body, "close"):
                self._body.close()
        finally:
            turns, self._turns = self._turns, None
            if turns is not None:
                turns.give()


class TaskAwareChannel(HTTPChannel):
    """waitress's connection, asking to be told the socket is writable only when the event loop can use it.

    While a request's task writes its response it holds the connection's output lock, and sends what it wrote
    itself.  waitress's own channel still asks the event loop to poll for writing whenever bytes are buffered,
    and the socket is writable at once, so the I/O thread goes round its loop, finds the lock taken and tries
    again, holding the GIL that the writing thread needs back after its send: measured under load, about 40
    turns of the loop per request where 2 sufficed, and two worker processes on two cores gave 1.2-1.5 times
    one process's decisions per second where they give 1.8-2.2 times with this channel (docs/benchmarks.md).
    Nothing is left unsent: a task whose send could not take everything wakes the loop itself (the trigger),
    so does every task's end, and above waitress's high-water mark, where the task waits for the loop to
    drain the buffer, the channel asks to be polled as before.
    """

    def writable(self) -> bool:
        if self.will_close or self.close_when_flushed:
            return True
        if not self.total_outbufs_len:
            return False
        if not self.requests or self.total_outbufs_len > self.adj.outbuf_high_watermark:
            return True
        if self.outbuf_lock.acquire(False):  # no task is writing right now: the loop may flush what is left
            self.outbuf_lock.release()
            return True
        return False


def use_task_aware_channels(server: Any) -> Any:
    """Make ``server`` (one waitress server, or the several of a MultiSocketServer) accept into TaskAwareChannel."""
    listeners = [server] if isinstance(server, BaseWSGIServer) else [d for d in server.map.values() if isinstance(d, BaseWSGIServer)]
    for listener in listeners:
        listener.channel_class = TaskAwareChannel
    return server


def create_server(app: Any, host: str, port: int, limits: ServingLimits, *, ident: str = "casus") -> Any:
    """A waitress server for ``app`` on host:port with ``limits`` (the switch interval set, requests taking turns);
    raises OSError when it cannot listen."""
    from waitress.server import create_server as waitress_server

    use_switch_interval(limits)
    return use_task_aware_channels(waitress_server(taking_turns(app, limits), host=host, port=port, ident=ident, **limits.waitress_options()))
