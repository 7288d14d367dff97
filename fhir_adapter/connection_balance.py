"""Least-connections accept for worker processes sharing one listening socket.

The kernel gives a new connection to whichever process reaches accept() first, so the few persistent
connections of a client's pool often land unevenly: three on one worker and one on the other leaves a core
idle while requests queue on the other, and nothing moves a connection once it is accepted.  So each worker
publishes how many connections it holds in a table in shared memory, and listens for new ones only while it
holds no more than any other worker does: the next connection goes to the least loaded worker, as a proxy's
least-connections balancing would send it.

A worker looks at the table only when something wakes its event loop, so a worker whose count changes (it
accepted a connection, or one closed) wakes all the others with a byte on each one's socket pair, and each
looks again at once: the one now holding the fewest starts listening, one now holding more stops.  That keeps
a pending connection from waiting with no worker listening for it, and from going to a worker that has just
become the busier one.  It balances; it does not promise: a connection that arrives within the few
microseconds before a woken worker looks again may still go to that one.

Nor may one worker hold up the others: if the least loaded worker's event loop stops turning (a debugger,
swapping, a long C call holding the GIL), nobody else would listen.  So every loop turns at least every
``LOOP_TURN_SECONDS``, each turn stamps the worker's entry with the time, and a worker whose stamp is older
than ``STALE_AFTER_SECONDS`` does not count: the others listen as if it were not there, and a connection waits
at most about that long.  A worker still starting has no stamp, so it does not hold the others back either.

Built before the fork, inherited by every worker.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import socket
import time
from typing import Any, cast

from waitress.adjustments import Adjustments
from waitress.server import TcpWSGIServer
from waitress.wasyncore import dispatcher

from .serving import TaskAwareChannel

log = logging.getLogger("fhir_adapter.workers")

#: Longest wait of a worker's event loop for an event: how often an idle worker stamps its entry.
LOOP_TURN_SECONDS = 0.05
#: A worker whose entry is older than this is not counted as the least loaded (its loop has stopped turning).
STALE_AFTER_SECONDS = 0.25
#: A worker's count before it first publishes one.
NOT_SERVING = 2**31 - 1


class ConnectionTable:
    """Each worker's open connections and when it last looked, in shared memory; a socket pair per worker to wake it."""

    def __init__(self, workers: int) -> None:
        self._counts = memoryview(mmap.mmap(-1, 4 * workers)).cast("i")
        self._stamps = memoryview(mmap.mmap(-1, 8 * workers)).cast("d")  # time.monotonic(): one clock for every process
        for index in range(workers):
            self._counts[index] = NOT_SERVING
            self._stamps[index] = float("-inf")
        self._bells = [socket.socketpair() for _ in range(workers)]
        for pair in self._bells:
            for end in pair:
                end.setblocking(False)

    def counts(self) -> list[int]:
        return list(self._counts)

    def publish(self, index: int, connections: int, now: float) -> bool:
        """Record worker ``index``'s connections at ``now``; whether it holds no more than any other worker whose
        loop is turning (so may accept)."""
        self._counts[index] = connections
        self._stamps[index] = now
        since = now - STALE_AFTER_SECONDS
        return all(connections <= count for count, stamp in zip(self._counts, self._stamps, strict=True) if stamp >= since)

    def wake_others(self, index: int) -> None:
        for other, (_, ringer) in enumerate(self._bells):
            if other != index:
                with contextlib.suppress(OSError):  # a full buffer already wakes it; a gone worker needs no waking
                    ringer.send(b"\x00")

    def bell(self, index: int) -> socket.socket:
        """The socket worker ``index`` hears its wake-ups on."""
        return self._bells[index][0]

    def keep_for(self, index: int) -> None:
        """In worker ``index`` after the fork: close the ends it will never use (others' bells, its own ringer)."""
        for other, (bell, ringer) in enumerate(self._bells):
            (ringer if other == index else bell).close()

    def close(self) -> None:
        for pair in self._bells:
            for end in pair:
                end.close()


class _WakeUp(dispatcher):
    """Reads (and discards) the bytes other workers send: being woken is the whole message."""

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def handle_read(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self.recv(512):
                pass

    def handle_close(self) -> None:
        """Every ringer closed: the service is stopping.  Leave the loop quietly (waitress's default logs a warning)."""
        self.close()

    def handle_error(self) -> None:
        """Keep the bell in the loop: without it the worker would hear of others' changes only at each loop turn."""
        log.warning("a worker's wake-up socket failed; the worker looks again at each loop turn meanwhile")


class BalancedServer(TcpWSGIServer):
    """waitress on a shared socket, listening only while its worker holds the fewest connections."""

    channel_class = TaskAwareChannel

    def __init__(self, application: Any, sock: socket.socket, table: ConnectionTable, index: int, **options: Any) -> None:
        self._table, self._index = table, index
        self._published = NOT_SERVING
        adj = Adjustments(sockets=[sock], **options)
        adj.asyncore_loop_timeout = LOOP_TURN_SECONDS  # type: ignore[assignment]  # set here: the option takes whole seconds only
        adj.connection_limit += 1  # waitress counts every socket in its loop, and the bell is one more
        sockinfo = (sock.family, sock.type, sock.proto, sock.getsockname())
        super().__init__(application, {}, True, sock, adj=adj, bind_socket=False, sockinfo=sockinfo)
        table.keep_for(index)
        _WakeUp(table.bell(index), map=self._map)  # type: ignore[attr-defined]  # waitress's socket map, untyped

    def connections(self) -> int:
        """The HTTP connections this worker holds open (waitress keeps them in ``active_channels``)."""
        return len(cast(dict[int, Any], self.active_channels))  # typed as one channel by waitress's stubs

    def readable(self) -> bool:
        """Asked by the event loop before every wait: listen only while waitress would and this worker is least loaded."""
        accepting = bool(super().readable())  # waitress's own connection limit and channel clean-up
        return self._publish() and accepting

    def handle_accept(self) -> None:
        super().handle_accept()
        self._publish()  # at once, not at the loop's next turn: the other workers must not count on the old figure

    def _publish(self) -> bool:
        connections = self.connections()
        least = self._table.publish(self._index, connections, time.monotonic())
        if connections != self._published:
            self._published = connections
            self._table.wake_others(self._index)
        return least
