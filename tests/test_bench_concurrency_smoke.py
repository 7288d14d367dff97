"""Smoke test of the concurrency benchmark: a tiny run serves both modes at each client count and prints them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_concurrency.py"


def test_a_tiny_run_measures_turns_and_the_baseline_at_each_client_count() -> None:
    args = ["--patients", "5", "--seconds", "0.5", "--rounds", "1", "--clients", "1", "2", "--threads", "2"]
    done = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in done.stdout.splitlines() if line.startswith("|  ")]
    assert [(row[0], row[1]) for row in rows] == [
        ("1", "one at a time"),
        ("1", "all threads at once"),
        ("2", "one at a time"),
        ("2", "all threads at once"),
    ]
    assert all(row[-1] == "0" for row in rows), rows  # no errors
    assert "1 worker process(es) x 2 waitress threads" in done.stdout
