"""Several waitress worker processes accepting on one listening socket: the facade on more than one core.

One Python process runs one request's Python at a time (the GIL), so one process keeps one core busy
however many threads it has.  ``serve --workers N`` binds the socket once, then forks N processes that each
build their own app and store (engines and connection pools are never shared across a fork) and run waitress
on the inherited socket.  Each new connection goes to the process holding the fewest open connections
(least connections, see ``connection_balance``): a persistent connection stays with the process that accepted it.

Why waitress processes rather than gunicorn: the same server, options and proxy-header handling as the
single-process mode, and no further dependency; gunicorn's extra features (graceful reloads, worker
recycling) are the process manager's job here.  It needs ``fork``, so it is for Linux and other POSIX systems.

Consistency between the processes needs nothing extra: every process reads the store's change marker on
every decision (see ``store/engine.py``), so a form written through one process is seen by the next decision
in any other.

The parent only supervises: if a worker exits, the others are stopped and the parent exits non-zero, so the
service manager (systemd, a container runtime) restarts the whole service rather than it running short of
workers unnoticed.  SIGTERM or SIGINT to the parent stops every worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from .connection_balance import BalancedServer, ConnectionTable

log = logging.getLogger("fhir_adapter.workers")

#: How long stopping workers may take before they are killed.
STOP_TIMEOUT_SECONDS = 10.0
#: Exit status of a worker whose app or server could not start.
WORKER_FAILED = 3


def listening_socket(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A TCP socket bound to host:port (0 picks a free port) and listening, to be shared by the workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def run_workers(make_app: Callable[[], Any], sock: socket.socket, workers: int, **waitress_options: Any) -> int:
    """Fork ``workers`` processes serving ``make_app()`` on ``sock``; supervise them; return the exit status."""
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if not hasattr(os, "fork"):
        raise OSError("several worker processes need fork (Linux or another POSIX system)")
    children: set[int] = set()
    stopping = False
    table = ConnectionTable(workers)

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        _signal_all(children, signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for index in range(workers):
            pid = os.fork()
            if pid == 0:
                _worker(make_app, sock, table, index, waitress_options)  # never returns
            children.add(pid)
        status = 0
        while children:
            try:
                pid, code = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            children.discard(pid)
            if not stopping:
                log.error("worker %d exited (status %d); stopping the others", pid, os.waitstatus_to_exitcode(code))
                status, stopping = 1, True
                _signal_all(children, signal.SIGTERM)
                _reap(children)
        return status
    finally:
        _signal_all(children, signal.SIGKILL)
        _reap(children)
        for s, handler in previous.items():
            signal.signal(s, handler)
        table.close()


def _worker(make_app: Callable[[], Any], sock: socket.socket, table: ConnectionTable, index: int, options: dict[str, Any]) -> None:
    """A worker's whole life: its own app (and store), waitress on the shared socket, exit without returning."""
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, signal.SIG_DFL)
    code = 0
    try:
        BalancedServer(make_app(), sock, table, index, **options).run()
    except KeyboardInterrupt:
        pass
    except BaseException as exc:  # a worker must never return into the parent's code after a fork
        log.error("worker failed to serve: %s", type(exc).__name__)
        code = WORKER_FAILED
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _signal_all(children: set[int], signum: int) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _reap(children: set[int]) -> None:
    """Wait for the workers to exit, killing those still there after STOP_TIMEOUT_SECONDS."""
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while children:
        for pid in list(children):
            with contextlib.suppress(ChildProcessError):
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done == 0:
                    continue
            children.discard(pid)
        if children and time.monotonic() > deadline:
            _signal_all(children, signal.SIGKILL)
            deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        if children:
            time.sleep(0.05)
