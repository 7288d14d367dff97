"""Smoke test of the in-process per-patient benchmark (the benchmark itself runs outside pytest)."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_per_patient

WORKLOADS = {"GET history", "GET FHIR search by patient", "Store.history", "Store.search (by NHS number)", "Store.audit (one row)"}


@pytest.fixture(scope="module")
def tables() -> tuple[list[list[str]], list[list[str]]]:
    """The benchmark's two tables at two small sizes, as rows of cells (headers and rules left out)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        bench_per_patient.main(["--patients", "6", "12", "--rounds", "2"])
    through_app, _, raw = printed.getvalue().partition("the SQL alone")

    def rows(part: str) -> list[list[str]]:
        lines = [line for line in part.splitlines() if line.startswith("| ")][1:]
        return [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines]

    return rows(through_app), rows(raw)


def test_every_workload_is_timed_at_every_size(tables: tuple[list[list[str]], list[list[str]]]) -> None:
    through_app, _ = tables
    assert {(row[0], row[1]) for row in through_app} == {(size, name) for size in ("6", "12") for name in WORKLOADS}


def test_the_raw_reads_are_timed_for_every_connection_setting_with_and_without_a_commit_between(
    tables: tuple[list[list[str]], list[list[str]]],
) -> None:
    _, raw = tables
    expected = {(size, setting, between) for size in ("6", "12") for setting in bench_per_patient.SETTINGS for between in ("yes (as served)", "no")}
    assert {(row[0], row[1], row[2]) for row in raw} == expected
