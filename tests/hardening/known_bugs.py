"""Bugs the hardening tests found that are not fixed yet: what triggers each, so a fuzzer can tell them from new ones.

Each bug has a strict-xfail reproducer in ``test_known_bugs.py``: when the lead fixes it, the reproducer
passes, strict xfail turns that into a failure, and the entry here is deleted.  Until then a 5xx that
matches a trigger is counted as "5xx from known bugs" and any other 5xx fails the fuzz tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sent:
    """What a test sent, reduced to what the triggers look at."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any


@dataclass(frozen=True)
class KnownBug:
    key: str
    summary: str
    triggered_by: Callable[[Sent], bool]


#: Bugs found and not yet fixed. Empty: the three the first run found (a version beyond 64 bits, an impossible
#: disclosure time, a contained resource of no FHIR type) are fixed and kept as tests in test_known_bugs.py.
KNOWN_BUGS: tuple[KnownBug, ...] = ()


def known_bug(sent: Sent) -> KnownBug | None:
    """The known bug this request triggers, if any."""
    return next((bug for bug in KNOWN_BUGS if bug.triggered_by(sent)), None)
