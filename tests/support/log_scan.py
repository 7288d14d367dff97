"""The whole test suite runs with DEBUG logging captured, and the log is scanned for identifying values at the end.

The privacy-of-logs check over everything the suite does: every record at DEBUG and above from the adapter and the
frameworks it runs in (Flask/werkzeug, waitress, SQLAlchemy) during the whole test run is kept, then searched
for every name, NHS number (plain and spaced), date of birth, local id and free-text value of the example
forms and the hardening workload's disclosure.  Records of urllib3/requests are left out: the *tests'* own
HTTP clients log their request lines there, and those carry NHS numbers in decision queries by design (the
adapter's outbound FHIR client never puts patient data in a URL: it searches by the form's business id).
A hit fails the test run.
"""

from __future__ import annotations

import logging

import pytest

SCANNED = ("fhir_adapter", "werkzeug", "flask", "waitress", "sqlalchemy")


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(SCANNED):
            try:
                self.lines.append(self.format(record))
            except Exception:  # a record that cannot be formatted is a test problem, not a leak
                self.lines.append(f"{record.name} {record.levelname} <unformattable>")


COLLECTOR = _Collector()
RESULT: dict[str, object] = {}


def pytest_configure(config: pytest.Config) -> None:
    root = logging.getLogger()
    root.addHandler(COLLECTOR)
    root.setLevel(logging.DEBUG)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from tests.hardening.workload import sensitive_values

    values = sensitive_values()
    hits = sorted({(value, line[:120]) for line in COLLECTOR.lines for value in values if value in line})
    RESULT.update(lines=len(COLLECTOR.lines), values=len(values), hits=hits)
    if hits and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULT:
        return
    hits = RESULT["hits"]
    terminalreporter.write_line(
        f"whole-suite log scan: {RESULT['lines']} log records at DEBUG scanned for {RESULT['values']} identifying values: {len(hits)} hits"
    )  # type: ignore[arg-type]
    for value, line in hits:  # type: ignore[union-attr]
        terminalreporter.write_line(f"  LEAK {value!r} in: {line}")
