"""What every hardening test asks of a response or of the database, in one place so the checks are identical."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

REPO = Path(__file__).resolve().parents[2]
OPENAPI_PATH = REPO / "docs" / "openapi.json"
#: Tables a rejected request must not add to (the audit log does grow: refusals and reads are audited on purpose).
CONTENT_TABLES = ("form_versions", "disclosures")
TRACEBACK_MARKERS = ("Traceback", 'File "')


def body_text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def leaks_traceback(data: bytes) -> bool:
    """A Python traceback or a source location in a response body: a crash made visible to the caller."""
    text_ = body_text(data)
    return any(marker in text_ for marker in TRACEBACK_MARKERS)


def is_operation_outcome(data: bytes) -> bool:
    """A FHIR OperationOutcome with at least one issue, which is how every facade error must be reported."""
    try:
        document: Any = json.loads(data)
    except ValueError:
        return False
    return isinstance(document, dict) and document.get("resourceType") == "OperationOutcome" and bool(document.get("issue"))


class RowCounter:
    """Counts the rows of the content tables through its own connection, so the count never shares the app's transaction."""

    def __init__(self, url: str) -> None:
        self._engine: Engine = create_engine(url, poolclass=NullPool)

    def counts(self) -> dict[str, int]:
        with self._engine.connect() as conn:
            return {table: conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one() for table in CONTENT_TABLES}

    def close(self) -> None:
        self._engine.dispose()


@contextmanager
def row_counter(url: str) -> Iterator[RowCounter]:
    counter = RowCounter(url)
    try:
        yield counter
    finally:
        counter.close()
