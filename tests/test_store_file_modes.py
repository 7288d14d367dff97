"""The SQLite store's files are private: 0600 in a 0700 folder when it creates them, a warning when they are not."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from fhir_adapter.form import parse_form
from fhir_adapter.store import Store
from tests.support.facade import example_form


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_database_and_its_wal_and_shm_files_are_0600_in_a_0700_folder(tmp_path: Path) -> None:
    folder = tmp_path / "instance"
    store = Store.open(f"sqlite:///{folder / 'casus.db'}")
    try:
        store.create_form(parse_form(example_form()), actor="test")
        files = sorted(folder.iterdir())
        assert {p.name for p in files} >= {"casus.db", "casus.db-wal", "casus.db-shm"}
        assert {p.name: _mode(p) for p in files} == {p.name: 0o600 for p in files}
        assert _mode(folder) == 0o700
    finally:
        store.close()


def test_an_existing_database_open_to_others_is_opened_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "casus.db"
    path.touch(mode=0o644)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="fhir_adapter.store"):
        Store.open(f"sqlite:///{path}").close()
    assert any("open to other users" in r.getMessage() and "chmod 600" in r.getMessage() for r in caplog.records)


def test_a_private_database_in_a_private_folder_opens_without_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "private"
    with caplog.at_level(logging.WARNING, logger="fhir_adapter.store"):
        Store.open(f"sqlite:///{folder / 'casus.db'}").close()
    assert not [r for r in caplog.records if "open to other users" in r.getMessage()]
