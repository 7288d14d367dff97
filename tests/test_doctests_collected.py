"""The examples in the package's docstrings run with the suite, so a docstring that lies fails the build."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_suite_is_configured_to_collect_doctests_from_the_package() -> None:
    options = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["pytest"]["ini_options"]
    assert "fhir_adapter" in options["testpaths"]
    assert "--doctest-modules" in options["addopts"].split()


def test_the_package_doctests_are_collected_without_running_the_cli() -> None:
    # __main__.py starts the CLI when imported; pytest's doctest collector must leave it alone.
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:randomly", "fhir_adapter"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    doctests = [line for line in result.stdout.splitlines() if line.startswith("fhir_adapter/") and "::" in line]
    assert len(doctests) > 0
    assert not any(line.startswith("fhir_adapter/__main__.py") for line in doctests)
