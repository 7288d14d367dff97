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

Built before the fork, inherited by every worker; a worker counts as holding no connections only once it
serves, so a worker still starting does not hold the others back.
"""

from __future__ import annotations

import contextlib
import mmap
import socket
from typing import Any

from waitress.adjustments import Adjustments
from waitress.server import TcpWSGIServer
from waitress.wasyncore import dispatcher

#: A worker's count before it serves: never the least.
NOT_SERVING = 2**31 - 1


class ConnectionTable:
    """Each worker's open connections, in shared memory, and a pipe per worker to wake its event loop."""

    def __init__(self, workers: int) -> None:
        self._counts = memoryview(mmap.mmap(-1, 4 * workers)).cast("i")
        for index in range(workers):
            self._counts[index] = NOT_SERVING
        self._bells = [socket.socketpair() for _ in range(workers)]
        for pair in self._bells:
            for end in pair:
                end.setblocking(False)

    def counts(self) -> list[int]:
        return list(self._counts)

    def publish(self, index: int, connections: int) -> bool:
        """Record worker ``index``'s connections; whether it holds no more than any other (so may accept)."""
        self._counts[index] = connections
        return connections <= min(self._counts)

    def wake_others(self, index: int) -> None:
        for other, (_, ringer) in enumerate(self._bells):
            if other != index:
                with contextlib.suppress(BlockingIOError):  # a full buffer already wakes it
                    ringer.send(b"\x00")

    def bell(self, index: int) -> socket.socket:
        """The socket worker ``index`` hears its wake-ups on."""
        return self._bells[index][0]

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


class BalancedServer(TcpWSGIServer):
    """waitress on a shared socket, listening only while its worker holds the fewest connections."""

    def __init__(self, application: Any, sock: socket.socket, table: ConnectionTable, index: int, **options: Any) -> None:
        self._table, self._index = table, index
        self._channels: dict[int, Any] = {}  # waitress's socket map: its event loop's every socket
        self._fixed = 0
        self._published = NOT_SERVING
        adj = Adjustments(sockets=[sock], **options)
        sockinfo = (sock.family, sock.type, sock.proto, sock.getsockname())
        super().__init__(application, self._channels, True, sock, adj=adj, bind_socket=False, sockinfo=sockinfo)
        _WakeUp(table.bell(index), map=self._channels)
        self._fixed = len(self._channels)  # this server, waitress's trigger and the wake-up bell: not connections

    def connections(self) -> int:
        return len(self._channels) - self._fixed

    def readable(self) -> bool:
        """Asked by the event loop before every wait: listen only while waitress would and this worker is least loaded."""
        accepting = bool(super().readable())  # waitress's own connection limit and channel clean-up
        return self._publish() and accepting

    def handle_accept(self) -> None:
        super().handle_accept()
        self._publish()  # at once, not at the loop's next turn: the other workers must not count on the old figure

    def _publish(self) -> bool:
        connections = self.connections()
        least = self._table.publish(self._index, connections)
        if connections != self._published:
            self._published = connections
            self._table.wake_others(self._index)
        return least
