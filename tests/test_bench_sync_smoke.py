"""Smoke test of the sync benchmark at a tiny scale against the real FHIR server (the full run is outside pytest):
it measures, prints its table and checks itself, including runs killed with SIGKILL at random points."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_sync.py"


@pytest.fixture(scope="module")
def printed() -> str:
    command = [
        sys.executable,
        str(BENCH),
        "--sizes",
        "20,60",
        "--per-resource-consents",
        "0",
        "--floor-consents",
        "0",
        "--kill-consents",
        "60",
        "--kills",
        "2",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_benchmark_prints_a_push_row_per_size(printed: str) -> None:
    rows = [line for line in printed.splitlines() if "sync, transaction batches of 100" in line]
    assert [row.split("|")[1].strip() for row in rows] == ["20", "60"]


def test_the_benchmark_finds_one_identifier_look_up_per_batch(printed: str) -> None:
    assert "identifier look-ups cost fewer than 5 searches per batch -> MET (worst 1.0 per batch)" in printed


def test_the_benchmark_finds_every_form_once_after_killed_runs(printed: str) -> None:
    assert "every form on the server exactly once after SIGKILL at random points -> MET" in printed
