"""The README's layout tables name every folder and module there is, and nothing that is not there."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "fhir_adapter"
#: Made by builds, installs and runs, never committed (see .gitignore).
GENERATED = {"build", "dist", "instance", "__pycache__"}


def _layout_rows() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| `")]


def _named(rows: list[str]) -> set[str]:
    """Every backticked name in the first column of the rows."""
    return {name for row in rows for name in re.findall(r"`([^`]+)`", row.split(" | ")[0])}


def _package_rows() -> list[str]:
    rows = _layout_rows()
    start = next(n for n, row in enumerate(rows) if row.startswith("| `fhir_adapter/` | what it holds"))
    return rows[start + 1 :]


def _top_level_rows() -> list[str]:
    rows = _layout_rows()
    return rows[: next(n for n, row in enumerate(rows) if row.startswith("| `fhir_adapter/` | what it holds"))]


def test_every_top_level_folder_is_in_the_layout_table():
    folders = {
        f"{p.name}/"
        for p in REPO.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name not in GENERATED and not p.name.endswith(".egg-info")
    }
    assert folders <= _named(_top_level_rows())


def test_every_module_and_subpackage_of_the_adapter_is_in_the_layout_table():
    entries = {
        p.name + ("/" if p.is_dir() and not p.is_symlink() else "")
        for p in PACKAGE.iterdir()
        if p.name not in GENERATED and p.name not in ("__init__.py", "__main__.py")
    }
    assert entries <= _named(_package_rows())


def test_everything_the_layout_tables_name_exists():
    missing = [name for name in _named(_top_level_rows()) if not (REPO / name).exists()]
    missing += [name for name in _named(_package_rows()) if not (PACKAGE / name).exists()]
    assert missing == []


def test_every_repository_path_the_docs_name_exists():
    """A path to a file of the project in the README or docs/ that no longer exists sends a newcomer nowhere."""
    named = {
        (doc.name, path.rstrip("/"))
        for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
        for path in re.findall(r"`((?:fhir_adapter|tests|benchmarks|scripts|profiles|deploy|docs)/[\w./-]*)`", doc.read_text(encoding="utf-8"))
    }
    assert sorted((doc, path) for doc, path in named if "*" not in path and not (REPO / path).exists()) == []
