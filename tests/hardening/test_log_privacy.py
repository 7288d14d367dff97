"""With every logger at DEBUG, a representative workload (and its error paths) logs no name, NHS number,
date of birth or free text; the audit trail still says who asked what and the verdict."""

from __future__ import annotations

import logging

import pytest

from tests.hardening import workload
from tests.hardening.conftest import Facade
from tests.hardening.figures import FigureBook
from tests.support.facade import bearer

SECTION = "3. privacy of logs"
FORMATTER = logging.Formatter("%(name)s %(levelname)s %(message)s")


def _lines(records: list[logging.LogRecord]) -> list[str]:
    """Each record as a handler would write it, exception text included (that is where quoted input hides)."""
    return [FORMATTER.format(record) for record in records]


def _hits(lines: list[str], values: set[str]) -> list[tuple[str, str]]:
    return [(value, line[:200]) for line in lines for value in values if value in line]


def _fail_inside(facade: Facade, monkeypatch: pytest.MonkeyPatch, message: str) -> int:
    """Force a 500 on a search: the store raises an exception whose message quotes identifying input."""

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError(message)

    monkeypatch.setattr(facade.store, "search", broken)
    nhs = workload.example_form()["youngPerson"]["nhsNumber"]
    response = facade.client.get(f"/api/patients/{nhs}/forms", headers=bearer("clinician"))
    monkeypatch.undo()
    return response.status_code


def test_a_debug_log_of_the_workload_holds_no_identifying_value(
    facade: Facade, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, figures: FigureBook
) -> None:
    caplog.set_level(logging.DEBUG)
    values = workload.sensitive_values()
    statuses = workload.run(facade.client)
    forced = _fail_inside(facade, monkeypatch, f"cannot search for {sorted(values)[0]} ({sorted(values)[-1]})")
    lines = _lines(caplog.records)
    hits = _hits(lines, values)
    figures.add(SECTION, "log lines captured (root at DEBUG)", len(lines))
    figures.add(SECTION, "identifying values looked for", len(values))
    figures.add(SECTION, "hits", len(hits))
    assert forced == 500 and {"200", "201", "400", "401", "403", "404", "412", "415"} <= set(statuses), statuses
    assert any("incident=" in line for line in lines)  # the 500 was logged, by incident id
    assert lines and not hits, hits[:10]


def test_the_audit_trail_still_says_who_asked_what_and_the_verdict_without_names(facade: Facade, figures: FigureBook) -> None:
    workload.run(facade.client)
    nhs = workload.example_form()["youngPerson"]["nhsNumber"]
    records = facade.store.audit_log(limit=1000)
    decisions = [r for r in records if r.action == "decision"]
    assert {r.actor for r in decisions} == {"ehr"}
    assert all(r.subject == nhs and r.outcome in ("permit", "deny") for r in decisions)
    assert {r.detail["purpose"] for r in decisions} == {"TREAT", "THREAT"}
    assert all(r.detail["informationTypes"] == ["attendance"] for r in decisions)
    names_and_text = {v for v in workload.sensitive_values() if not v.replace(" ", "").isdigit()}
    leaked = [(v, r.action) for r in records for v in names_and_text if v in f"{r.resource} {r.detail}"]
    figures.add(SECTION, "audit records checked", len(records))
    figures.add(SECTION, "identifying values in audit resource/detail", len(leaked))
    assert not leaked, leaked[:10]
