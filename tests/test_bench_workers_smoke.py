"""Smoke test of the worker benchmark: a tiny run, SQLite only, prints its table and its verdict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_workers.py"


def test_a_tiny_run_serves_one_and_two_workers_and_judges_the_target() -> None:
    args = ["--patients", "5", "--seconds", "0.5", "--rounds", "1", "--warm-up", "0.5", "--workers", "1", "2"]
    done = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| sqlite")]
    assert [row.split("|")[2].strip() for row in rows] == ["1", "2"]
    assert all(row.split("|")[8].strip() == "0" for row in rows), rows  # no errors
    assert "0.5 s of warm-up then 1 rounds" in done.stdout
    assert "sqlite: 2 workers = " in done.stdout and "(target >= 1.7x)" in done.stdout
