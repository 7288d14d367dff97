"""Who holds the sync lease, and whether that holder is still alive.

A lease owner is ``host:pid:start:nonce``: the host name, the process id, a token for when the process started
(Linux: field 22 of ``/proc/<pid>/stat``, clock ticks since boot; ``-`` where it cannot be read) and a random
nonce so two runs of one process never share a lease.  On the same host a holder is dead when no process has
its pid, or the process with that pid started at another time (the pid was reused).  A holder on another host,
or one whose liveness cannot be judged, is left to its lease's expiry.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path


def process_start_token(pid: int) -> str | None:
    """When process ``pid`` started, as a token that differs for a reused pid; None if unknown or no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return fields[19] if len(fields) > 19 else None


def lease_owner() -> str:
    """The owner string for a lease taken by this process now."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{process_start_token(pid) or '-'}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class OwnerIdentity:
    host: str
    pid: int
    start: str | None


def parse_owner(owner: str) -> OwnerIdentity | None:
    """The host, pid and start token of an owner string; None for owners in another form.

    >>> parse_owner("db1:4242:98765:0a1b2c3d")
    OwnerIdentity(host='db1', pid=4242, start='98765')
    >>> parse_owner("another-run") is None
    True
    """
    parts = owner.rsplit(":", 3)
    if len(parts) != 4 or not parts[1].isdigit():
        return None
    return OwnerIdentity(parts[0], int(parts[1]), None if parts[2] == "-" else parts[2])


def pid_exists(pid: int) -> bool:
    """Whether a process ``pid`` exists here; where that cannot be asked safely, it is taken to exist.

    On Windows signal 0 is CTRL_C_EVENT, not a probe, so a lease held there is left to expire.
    """
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user; anything else: cannot tell
        return True
    return True


def holder_is_dead(owner: str, *, host: str | None = None) -> bool:
    """True only when ``owner`` is a process on this host that has certainly ended."""
    identity = parse_owner(owner)
    if identity is None or identity.host != (host or socket.gethostname()):
        return False
    if not pid_exists(identity.pid):
        return True
    if identity.start is None:
        return False
    current = process_start_token(identity.pid)
    return current is not None and current != identity.start
