"""What ``fhir-adapter validate`` is asked to read: files, folders of ``*.json``, ``-`` (stdin), and Bundles.

Collecting inputs is kept apart from validating them so the command reads top to bottom, and so that an input
that cannot be used (missing, unreadable, not JSON) is told apart from one that is read and found invalid:
the first is exit 2 with one line naming the problem, the second exit 1 with the elements named.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .fhir_structure import load_json
from .outcome import Issue, error

STDIN = "-"
#: A local Bundle of Consents can be far larger than a request body (about 10 KB per CASUS Consent).
MAX_INPUT_BYTES = 64_000_000


@dataclass(frozen=True)
class Input:
    """One file (or stdin) to validate: its parsed document, or why it cannot be used."""

    label: str
    document: Any = None
    problems: list[Issue] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not self.problems


def _unusable(label: str, code: str, why: str) -> Input:
    return Input(label, problems=[Issue("fatal", code, "", why)])


def read_one(label: str, path: Path | None, stdin: BinaryIO) -> Input:
    """One input read and parsed (``path`` None is stdin); never raises."""
    if path is not None and path.is_dir():
        return _unusable(label, "not-found", "a folder with no *.json files")
    try:
        if path is None:
            data = stdin.read(MAX_INPUT_BYTES + 1)  # one byte over is enough to say it is too large
        else:
            with path.open("rb") as stream:
                data = stream.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        return _unusable(label, "not-found", f"cannot read: {exc.strerror or type(exc).__name__}")
    document, issues = load_json(data, MAX_INPUT_BYTES)
    if issues:
        return Input(label, problems=[Issue("fatal", i.code, i.expression, i.diagnostics) for i in issues])
    return Input(label, document)


def plan(arguments: Sequence[str]) -> list[tuple[str, Path | None]]:
    """(label, path) for every file the arguments name, in order; a folder gives its ``*.json`` files, sorted.

    ``-`` gives (``<stdin>``, None).  A folder with no ``*.json`` is kept as itself, so that reading it
    reports the problem instead of silently validating nothing.
    """
    out: list[tuple[str, Path | None]] = []
    for argument in arguments:
        if argument == STDIN:
            out.append(("<stdin>", None))
            continue
        path = Path(argument)
        found = sorted(p for p in path.glob("*.json") if p.is_file()) if path.is_dir() else []
        if found:
            out.extend((str(p), p) for p in found)
        else:
            out.append((argument, path))
    return out


def read_inputs(planned: Sequence[tuple[str, Path | None]], stdin: BinaryIO) -> Iterator[Input]:
    """Each planned input read and parsed, lazily (a folder of thousands is never held in memory at once)."""
    for label, path in planned:
        yield read_one(label, path, stdin)


def detect_kind(document: Any) -> str:
    """'form', 'r4' or 'r5' from the document's shape (R5 Consents have decision/subject/grantor)."""
    if not isinstance(document, dict) or document.get("resourceType") != "Consent":
        return "form"
    r5_only = {"decision", "subject", "grantor", "grantee", "controller", "policyBasis", "regulatoryBasis", "manager", "date"}
    return "r5" if r5_only & document.keys() else "r4"


def is_bundle(document: Any) -> bool:
    return isinstance(document, dict) and document.get("resourceType") == "Bundle"


def bundle_resources(bundle: dict[str, Any]) -> tuple[list[tuple[str, Any]], list[Issue]]:
    """(location, resource) for each entry of a Bundle, and issues for entries that hold no resource."""
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        return [], [error("structure", "Bundle.entry", "entry must be a list")]
    found: list[tuple[str, Any]] = []
    issues: list[Issue] = []
    for n, entry in enumerate(entries):
        where = f"Bundle.entry[{n}]"
        if isinstance(entry, dict) and "resource" in entry:
            found.append((f"{where}.resource", entry["resource"]))
        else:
            issues.append(error("required", where, "a Bundle entry without a resource"))
    if not found and not issues:
        issues.append(Issue("warning", "informational", "Bundle.entry", "the Bundle holds no Consents"))
    return found, issues


def relocate(issue: Issue, location: str) -> Issue:
    """``issue`` (located within a Consent) located within a Bundle entry instead: Consent.x -> <location>.x."""
    expression = issue.expression
    if not expression:
        moved = location
    elif expression == "Consent" or expression.startswith(("Consent.", "Consent[")):
        moved = location + expression.removeprefix("Consent")
    else:
        moved = f"{location}.{expression}"
    return Issue(issue.severity, issue.code, moved, issue.diagnostics)
