"""How log records are written: plain text or one JSON object a line, each with a UTC timestamp and the sync run id.

The run id is set for the length of a sync run (``run_context``), so every line a run writes, from the job, the
FHIR client or the store, can be joined to its summary and its ``sync.run`` audit record.  Messages in this code
base carry ids, statuses and counts only; the JSON form adds no fields from the record's arguments, and an
exception appears as its type alone, never a traceback (which could echo request data).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

_run_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("casus_run_id", default=None)


@contextlib.contextmanager
def run_context(run_id: str) -> Iterator[None]:
    """Tag every log record made inside the block with ``run_id``."""
    token = _run_id.set(run_id)
    try:
        yield
    finally:
        _run_id.reset(token)


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonLines(logging.Formatter):
    """``{"time", "level", "logger", "message", "runId"?, "error"?}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {"time": _timestamp(record), "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        run_id = _run_id.get()
        if run_id is not None:
            entry["runId"] = run_id
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = record.exc_info[0].__name__
        return json.dumps(entry, ensure_ascii=False)


class TextLines(logging.Formatter):
    """``2026-12-01T02:35:40.123Z WARNING fhir_adapter.sync [run 3f2a...]: message`` (no traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        run_id = _run_id.get()
        run = f" [run {run_id}]" if run_id is not None else ""
        error = f" ({record.exc_info[0].__name__})" if record.exc_info and record.exc_info[0] is not None else ""
        return f"{_timestamp(record)} {record.levelname} {record.name}{run}: {record.getMessage()}{error}"


def formatter(log_format: str) -> logging.Formatter:
    return JsonLines() if log_format == "json" else TextLines()
