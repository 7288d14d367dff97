"""Shared test set-up: where the shared corpus lives, and the real servers as fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CASUS_SHARED_DIR", REPO.parent / "shared"))
CORPUS = SHARED / "corpus" / "consent-examples"

pytest_plugins = ["tests.support.postgres", "tests.support.fhir_server", "tests.support.facade", "tests.support.log_scan"]


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"shared consent corpus not found at {CORPUS} (set CASUS_SHARED_DIR)")
    return CORPUS
