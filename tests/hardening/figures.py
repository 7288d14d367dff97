"""The figures the hardening tests measure, collected during the session and printed as one table at its end.

Every figure comes from a test that can fail: a test adds its counts here *before* asserting on them,
so a failing run still reports what it saw.  The conftest prints the table (pytest_terminal_summary)
and writes it to ``build/hardening-figures.json``; ``docs/reliability.md`` records a run of it.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUDGET_ENV = "CASUS_HARDENING_BUDGET"
FIGURES_PATH = Path("build") / "hardening-figures.json"


@dataclass(frozen=True)
class Budget:
    """How hard to push: a small budget keeps ``make test`` fast, a large one is for ``make hardening``."""

    name: str
    fuzz_examples: int  # schemathesis examples per operation, per generation mode, per token case
    corrupt_examples: int  # corrupted documents per target endpoint
    writer_threads: int
    write_rounds: int  # rounds of "all writers read, then all write the same version"
    decider_threads: int
    process_writes: int  # read-modify-write attempts per SQLite writer process
    load_seconds: int  # sustained decision load with a concurrent sync run


BUDGETS = {
    "small": Budget(
        "small", fuzz_examples=4, corrupt_examples=25, writer_threads=4, write_rounds=6, decider_threads=2, process_writes=8, load_seconds=8
    ),
    "large": Budget(
        "large", fuzz_examples=40, corrupt_examples=300, writer_threads=8, write_rounds=30, decider_threads=4, process_writes=40, load_seconds=60
    ),
}


def budget() -> Budget:
    """The budget named by CASUS_HARDENING_BUDGET (default small); an unknown name is an error, not a silent default."""
    name = os.environ.get(BUDGET_ENV, "small").strip().lower() or "small"
    if name not in BUDGETS:
        raise ValueError(f"{BUDGET_ENV} must be one of {sorted(BUDGETS)}, not {name!r}")
    return BUDGETS[name]


@dataclass
class FigureBook:
    """Counts per (section, figure), plus markdown tables; thread-safe because concurrency tests add from threads."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, section: str, figure: str, amount: int = 1) -> None:
        with self._lock:
            row = self.counts.setdefault(section, {})
            row[figure] = row.get(figure, 0) + amount

    def ensure(self, section: str, *figures: str) -> None:
        """Make zero-valued figures appear in the table (a 0 that was measured, not a figure that is missing)."""
        for figure in figures:
            self.add(section, figure, 0)

    def table(self, title: str, markdown: str) -> None:
        with self._lock:
            self.tables[title] = markdown

    def to_json(self) -> dict[str, Any]:
        return {"budget": budget().name, "figures": self.counts, "tables": self.tables}

    def render(self) -> str:
        lines = [f"budget: {budget().name}", "", "| section | figure | value |", "| --- | --- | ---: |"]
        for section in sorted(self.counts):
            for figure, value in self.counts[section].items():
                lines.append(f"| {section} | {figure} | {value} |")
        for title, markdown in self.tables.items():
            lines += ["", f"### {title}", "", markdown]
        return "\n".join(lines)

    def write(self, path: Path = FIGURES_PATH) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path


#: The one book for this session (pytest runs tests in one process).
BOOK = FigureBook()
