"""Requests take turns at running Python in a serving process: a few at once (one by default), first come, first served.

CPython's GIL favours a thread that computes over one coming back from a system call (the "convoy
effect"): a thread that gave the GIL up to read a socket may wait a whole switch interval for it, or several,
while other threads compute.  waitress reads and writes every connection on one I/O thread, which gives the GIL
up at every event; with two or more worker threads computing at once it waits behind them each time, and
the process slows down as clients are added instead of holding its rate.  Most of the collapse once measured
(a quarter of the one-client rate at four clients) was waitress's loop spinning while a task wrote, which
``serving.TaskAwareChannel`` stops; what remains is smaller: at four and eight clients the p99 is a fifth to a
quarter lower taking turns (docs/benchmarks.md).  So a request runs only in its turn, and more cores are used
by more processes (``serve --workers``), not by more threads.

The other worker threads still earn their keep: a request waiting for something slow outside this process
(a validation in a worker process) steps aside for the wait (``stepped_aside``), and the next request runs
meanwhile.  Never step aside while holding a database transaction or lock: the request that takes the turn
could wait for that lock while the one holding it waits for a turn.

>>> turns = Turns(1)
>>> with turns.turn():
...     with stepped_aside():  # another request may run here
...         pass
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

#: The turns the current thread holds one of, if any (so a wait deep in a call can step aside without being passed them).
_HELD = threading.local()


class Turns:
    """A first-come, first-served semaphore: ``at_once`` turns, handed to waiters in the order they asked.

    threading.Semaphore wakes an arbitrary waiter, so under load one request can wait many turns while
    later ones run, and the p99 grows; here a released turn goes straight to the longest waiter.
    """

    def __init__(self, at_once: int = 1) -> None:
        if at_once < 1:
            raise ValueError("at least one request must be able to run")
        self._lock = threading.Lock()
        self._free = at_once
        self._waiting: deque[threading.Lock] = deque()

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Hold a turn for the block, waiting for one first (not to be nested in one thread)."""
        self.take()
        try:
            with self.holding():
                yield
        finally:
            self.give()

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Mark this thread as holding one of these turns for the block, so that ``stepped_aside`` finds them."""
        _HELD.turns = self
        try:
            yield
        finally:
            _HELD.turns = None

    def take(self) -> None:
        """Wait for a turn, behind every request that asked before."""
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                return
            baton = threading.Lock()
            baton.acquire()
            self._waiting.append(baton)
        baton.acquire()  # released by give(): the turn is handed over, never returned to the pool in between

    def give(self) -> None:
        """Hand a turn to the longest waiter, or back to the pool."""
        with self._lock:
            if self._waiting:
                self._waiting.popleft().release()
            else:
                self._free += 1


@contextmanager
def stepped_aside() -> Iterator[None]:
    """Let the next request run while this thread waits (no turn held: nothing to do); the turn is taken back after."""
    turns: Turns | None = getattr(_HELD, "turns", None)
    if turns is None:
        yield
        return
    _HELD.turns = None
    turns.give()
    try:
        yield
    finally:
        turns.take()
        _HELD.turns = turns
