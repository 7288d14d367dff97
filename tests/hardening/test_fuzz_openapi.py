"""Schemathesis against the facade's own OpenAPI document, every operation, with an admin token and with none.

Whatever is sent, the facade answers below 500, never with a traceback, every 4xx as an
OperationOutcome, and a rejected request writes no form version or disclosure.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from fhir_adapter.config import Settings
from fhir_adapter.server import create_app
from fhir_adapter.store import Store
from tests.hardening.figures import FigureBook, budget
from tests.hardening.probes import OPENAPI_PATH, RowCounter, is_operation_outcome, leaks_traceback
from tests.support.facade import bearer, grants

SECTION = "1. fuzz (schemathesis)"
# Loaded from the file, so the document's relative $refs (../profiles/*.schema.json) resolve against the repository.
SCHEMA = schemathesis.openapi.from_path(OPENAPI_PATH)
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
TOKEN_CASES: dict[str, dict[str, str]] = {"admin-token": bearer("admin"), "no-token": {}}


def _params() -> Iterator[Any]:
    for operation in OPERATIONS:
        for case in TOKEN_CASES:
            yield pytest.param(operation, case, id=f"{operation.label}|{case}")


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{Path(tmp_path_factory.mktemp('fuzz-openapi')) / 'casus.db'}"


@pytest.fixture(scope="module")
def fuzzed_app(database_url: str) -> Iterator[Flask]:
    """One app for the whole module, so state built by earlier operations (created forms) meets later ones."""
    store = Store.open(database_url)
    yield create_app(Settings(grants=grants(), max_body_bytes=200_000), store=store)
    store.close()


@pytest.fixture(scope="module")
def rows(database_url: str, fuzzed_app: Flask) -> Iterator[RowCounter]:
    counter = RowCounter(database_url)
    yield counter
    counter.close()


def _has_inputs(operation: Any) -> bool:
    return bool(list(operation.iter_parameters())) or bool(operation.body)


def _problems(status: int, body: bytes, before: dict[str, int], after: dict[str, int]) -> list[str]:
    found = []
    if status >= 500:
        found.append(f"{status}")
    if leaks_traceback(body):
        found.append("traceback in body")
    if 400 <= status < 500 and not is_operation_outcome(body):
        found.append(f"{status} body is not an OperationOutcome")
    if 400 <= status < 500 and after != before:
        found.append(f"rejected request wrote rows {before} -> {after}")
    return found


@pytest.mark.parametrize(("operation", "token_case"), list(_params()))
def test_no_generated_request_crashes_leaks_or_writes_when_rejected(
    operation: Any, token_case: str, fuzzed_app: Flask, rows: RowCounter, figures: FigureBook
) -> None:
    figures.ensure(SECTION, "requests", "5xx", "tracebacks returned", "4xx not OperationOutcome", "rows written by rejected requests")
    failures: list[str] = []

    def send(case: Any) -> None:
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        case.headers = {**headers, **TOKEN_CASES[token_case]}
        before = rows.counts()
        response = case.call(app=fuzzed_app)
        body = response.content
        after = rows.counts() if 400 <= response.status_code < 500 else before
        figures.add(SECTION, "requests")
        figures.add(SECTION, "5xx", response.status_code >= 500)
        figures.add(SECTION, "tracebacks returned", leaks_traceback(body))
        figures.add(SECTION, "4xx not OperationOutcome", 400 <= response.status_code < 500 and not is_operation_outcome(body))
        figures.add(SECTION, "rows written by rejected requests", sum(after.values()) - sum(before.values()))
        failures.extend(f"{operation.label} [{token_case}]: {p}" for p in _problems(response.status_code, body, before, after))

    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        run = settings(
            max_examples=budget().fuzz_examples,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )(given(case=operation.as_strategy(mode))(send))
        try:
            run()
        except Unsatisfiable:
            if mode is GenerationMode.POSITIVE or _has_inputs(operation):
                raise  # only an operation with nothing to corrupt may have no negative cases
    assert not failures, sorted(set(failures))[:20]
