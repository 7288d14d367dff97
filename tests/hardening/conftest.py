"""Hardening set-up: the ``hardening`` marker on every test here, and the figures table at the end of the session."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from fhir_adapter.config import Settings
from fhir_adapter.server import create_app
from fhir_adapter.store import Store
from tests.hardening.figures import BOOK, FIGURES_PATH, FigureBook
from tests.support.facade import grants

HERE = Path(__file__).resolve().parent
MARKER = "hardening: fuzzing, concurrency, log-privacy, security and load checks that report figures (CASUS_HARDENING_BUDGET: small or large)"


def pytest_configure(config: pytest.Config) -> None:
    # Registered here too, so --strict-markers accepts it even before pyproject lists it.
    config.addinivalue_line("markers", MARKER)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.hardening)


#: The body limit of the hardening apps (small, so oversize bodies stay cheap to build).
MAX_BODY_BYTES = 200_000


@dataclass(frozen=True)
class Facade:
    """An app on its own SQLite file, with the URL so tests can count rows through a connection of their own."""

    app: Flask
    client: FlaskClient
    store: Store
    url: str


@pytest.fixture(scope="session")
def figures() -> FigureBook:
    return BOOK


@pytest.fixture
def facade(tmp_path: Path) -> Iterator[Facade]:
    url = f"sqlite:///{tmp_path / 'casus.db'}"
    store = Store.open(url)
    app = create_app(Settings(grants=grants(), max_body_bytes=MAX_BODY_BYTES), store=store)
    yield Facade(app, app.test_client(), store, url)
    store.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    if not BOOK.counts and not BOOK.tables:
        return
    path = BOOK.write(Path(str(config.rootpath)) / FIGURES_PATH)
    terminalreporter.section("hardening figures")
    terminalreporter.write_line(BOOK.render())
    terminalreporter.write_line("")
    terminalreporter.write_line(f"written to {path}")
