"""Problems found in input, and their FHIR OperationOutcome rendering.

Every layer reports bad input the same way: a list of ``Issue`` naming the
element (a FHIRPath-style location for FHIR, a JSON path for the CASUS form)
and why.  Callers decide whether that becomes an HTTP 4xx, a CLI exit code or
a sync rejection; nobody ever sees a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["fatal", "error", "warning", "information"]


@dataclass(frozen=True)
class Issue:
    """One problem, in OperationOutcome.issue terms."""

    severity: Severity
    code: str  # http://hl7.org/fhir/issue-type: structure, required, value, invariant, code-invalid, ...
    expression: str
    diagnostics: str

    def to_fhir(self) -> dict[str, Any]:
        rendered: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            rendered["expression"] = [self.expression]
        return rendered


def error(code: str, expression: str, diagnostics: str) -> Issue:
    return Issue("error", code, expression, diagnostics)


@dataclass
class InvalidInput(Exception):
    """Raised when input cannot be accepted; carries every issue found, not just the first."""

    issues: list[Issue] = field(default_factory=list)

    def __str__(self) -> str:
        return "; ".join(f"{i.expression}: {i.diagnostics}" for i in self.issues)


def is_blocking(issues: Iterable[Issue]) -> bool:
    return any(i.severity in ("fatal", "error") for i in issues)


def operation_outcome(issues: Iterable[Issue]) -> dict[str, Any]:
    """A FHIR OperationOutcome; an empty list reads as 'all OK' (information)."""
    rendered = [i.to_fhir() for i in issues]
    if not rendered:
        rendered = [{"severity": "information", "code": "informational", "diagnostics": "No issues found."}]
    return {"resourceType": "OperationOutcome", "issue": rendered}
