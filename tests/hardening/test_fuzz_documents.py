"""Corrupted CASUS forms and FHIR Consents sent to every endpoint that takes one.

Wrong types, missing elements, unknown codes, contradictory provisions, deep nesting, very large
and non-UTF-8 bodies: each must be answered below 500, without a traceback, a 4xx must be an
OperationOutcome, and a rejected request must leave form_versions and disclosures as they were.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from fhir_adapter.store.forms import AlreadyExists
from tests.hardening.conftest import MAX_BODY_BYTES, Facade
from tests.hardening.corruption import Corrupted, corrupted
from tests.hardening.figures import FigureBook, budget
from tests.hardening.probes import RowCounter, is_operation_outcome, leaks_traceback
from tests.support.facade import bearer

SECTION = "1. fuzz (corrupted documents)"


@dataclass(frozen=True)
class Target:
    method: str
    path: str  # {id} is the drawn form's id
    shape: str  # form, r4, r5
    media_type: str

    @property
    def label(self) -> str:
        return f"{self.method} {self.path} ({self.shape})"


TARGETS = (
    Target("POST", "/api/forms", "form", "application/json"),
    Target("PUT", "/api/forms/{id}", "form", "application/json"),
    Target("POST", "/fhir/Consent", "r4", "application/fhir+json"),
    Target("PUT", "/fhir/Consent/{id}", "r4", "application/fhir+json"),
    Target("POST", "/fhir/R5/Consent", "r5", "application/fhir+json"),
    Target("PUT", "/fhir/R5/Consent/{id}", "r5", "application/fhir+json"),
    Target("POST", "/fhir/Consent/$validate", "r4", "application/fhir+json"),
)


def _failures(status: int, body: bytes, wrote: int) -> list[str]:
    found = []
    if status >= 500:
        found.append(str(status))
    if leaks_traceback(body):
        found.append("traceback in body")
    if 400 <= status < 500 and not is_operation_outcome(body):
        found.append(f"{status} body is not an OperationOutcome")
    if 400 <= status < 500 and wrote:
        found.append(f"rejected request wrote {wrote} rows")
    return found


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.label)
def test_corrupted_documents_are_refused_cleanly_and_write_nothing(target: Target, facade: Facade, figures: FigureBook) -> None:
    figures.ensure(
        SECTION,
        "requests",
        "5xx",
        "tracebacks returned",
        "4xx not OperationOutcome",
        "rows written by rejected requests",
        "rejected (4xx)",
        "accepted (corruption left it valid)",
    )
    failures: list[str] = []
    counter = RowCounter(facade.url)

    @settings(
        max_examples=budget().corrupt_examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(sample=corrupted(target.shape, MAX_BODY_BYTES))
    def send(sample: Corrupted) -> None:
        headers = {**bearer("admin"), "Content-Type": target.media_type}
        if target.method == "PUT":  # an update of a form that exists, at the version it has
            with contextlib.suppress(AlreadyExists):  # an earlier example may have drawn the same form
                facade.store.create_form(sample.source, actor="fuzz-setup")
            headers["If-Match"] = f'W/"{facade.store.get(sample.source.form_id).version}"'
        path = target.path.format(id=sample.source.form_id)
        before = sum(counter.counts().values())
        response = facade.client.open(path, method=target.method, data=sample.body, headers=headers)
        wrote = sum(counter.counts().values()) - before if 400 <= response.status_code < 500 else 0
        figures.add(SECTION, "requests")
        figures.add(SECTION, "5xx", response.status_code >= 500)
        figures.add(SECTION, "tracebacks returned", leaks_traceback(response.data))
        figures.add(SECTION, "4xx not OperationOutcome", 400 <= response.status_code < 500 and not is_operation_outcome(response.data))
        figures.add(SECTION, "rows written by rejected requests", wrote)
        figures.add(SECTION, "rejected (4xx)", 400 <= response.status_code < 500)
        figures.add(SECTION, "accepted (corruption left it valid)", response.status_code < 400)
        failures.extend(f"{target.label} {sample.kind}: {p}" for p in _failures(response.status_code, response.data, wrote))

    try:
        send()
    finally:
        counter.close()
    assert not failures, sorted(set(failures))[:20]
