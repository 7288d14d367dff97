"""Shared test set-up: where the shared corpus lives, and the real servers as fixtures."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CASUS_SHARED_DIR", REPO.parent / "shared"))
CORPUS = SHARED / "corpus" / "consent-examples"

pytest_plugins = ["tests.support.postgres", "tests.support.fhir_server", "tests.support.facade", "tests.support.log_scan"]


CORPUS_MISSING = f"shared consent corpus not found at {CORPUS}: set CASUS_SHARED_DIR, or check it out beside the repository"


class CorpusMissingWarning(pytest.PytestWarning):
    """The corpus tests could not run; shown in the warnings summary so a local run cannot pass for a full one."""


def in_ci(env: dict[str, str] | None = None) -> bool:
    """CI services set CI=true; there a missing corpus is a failure, not a skip."""
    return (os.environ if env is None else env).get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_report_header() -> str:
    if CORPUS.is_dir():
        return f"shared consent corpus: {CORPUS}"
    return f"shared consent corpus: MISSING ({CORPUS_MISSING}); corpus tests will {'FAIL' if in_ci() else 'be SKIPPED'}"


def corpus_or_skip(corpus: Path, ci: bool) -> Path:
    """``corpus`` when present; else fail under CI, or warn and skip elsewhere."""
    if corpus.is_dir():
        return corpus
    if ci:
        pytest.fail(f"{CORPUS_MISSING} (CI=true: the corpus tests must run)", pytrace=False)
    warnings.warn(CorpusMissingWarning(CORPUS_MISSING), stacklevel=2)
    pytest.skip(CORPUS_MISSING)


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    return corpus_or_skip(CORPUS, in_ci())
