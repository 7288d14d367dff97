"""The sync lease heals: a holder that has ended on this host is taken over at once, the refusal names a live
holder and its expiry, and an operator can clear it (audited).  Real processes, a real store, a real FHIR server.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from fhir_adapter.cli import main
from fhir_adapter.fhir_client import FhirClient
from fhir_adapter.store import Store
from fhir_adapter.sync import LOCK_NAME, SyncJob, SyncLocked
from fhir_adapter.sync_lease import holder_is_dead, lease_owner, parse_owner, pid_exists, process_start_token
from tests.support.fhir_server import SekmetServer
from tests.test_sync import new_form


@pytest.fixture
def database(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'casus.sqlite3'}"


@pytest.fixture
def store(database: str) -> Iterator[Store]:
    with Store.open(database) as s:
        yield s


def ended_process_owner() -> str:
    """The lease owner a process on this host would have written, for a process that has since ended."""
    done = subprocess.run(
        [sys.executable, "-c", "from fhir_adapter.sync_lease import lease_owner; print(lease_owner())"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


def test_a_lease_owner_names_this_host_this_process_and_when_it_started() -> None:
    identity = parse_owner(lease_owner())

    assert identity is not None
    assert (identity.host, identity.pid, identity.start) == (socket.gethostname(), os.getpid(), process_start_token(os.getpid()))


def test_a_process_that_has_ended_on_this_host_is_dead() -> None:
    assert holder_is_dead(ended_process_owner())


def test_a_live_process_on_this_host_is_not_dead() -> None:
    assert not holder_is_dead(lease_owner())


def test_a_reused_pid_with_another_start_time_is_dead() -> None:
    identity = parse_owner(lease_owner())
    assert identity is not None and identity.start is not None

    assert holder_is_dead(f"{identity.host}:{identity.pid}:{int(identity.start) - 1}:00000000")


def test_a_holder_on_another_host_is_never_judged_dead() -> None:
    assert not holder_is_dead("another-host.example:1:1:00000000")


@pytest.mark.integration
def test_a_lease_left_by_a_process_that_ended_on_this_host_is_taken_over_at_once(store: Store, fresh_fhir_server: SekmetServer) -> None:
    store.create_form(new_form(), actor="clinician")
    assert store.acquire_lock(LOCK_NAME, ended_process_owner(), 900)

    with FhirClient(fresh_fhir_server.base_url) as client:
        summary = SyncJob(store, client).run()

    assert (summary.exit_code(), summary.pushed) == (0, 1)
    taken = [r for r in store.audit_log(actor="sync") if r.action == "sync.lease"]
    assert [r.outcome for r in taken] == ["taken-over"]


@pytest.mark.integration
def test_a_lease_held_by_a_live_process_is_refused_naming_the_holder_and_expiry(store: Store, fresh_fhir_server: SekmetServer) -> None:
    live = lease_owner()
    assert store.acquire_lock(LOCK_NAME, live, 900)
    expires = store.sync_state.lock_holder(LOCK_NAME).expires_at  # type: ignore[union-attr]

    with FhirClient(fresh_fhir_server.base_url) as client, pytest.raises(SyncLocked) as refused:
        SyncJob(store, client).run()

    assert f"{live} until {expires.isoformat(timespec='seconds')}" in str(refused.value)
    assert refused.value.summary.exit_code() == 75


def test_unlock_clears_a_lease_held_on_another_host_and_is_audited(store: Store, database: str) -> None:
    assert store.acquire_lock(LOCK_NAME, "another-host.example:1:1:00000000", 900)

    result = CliRunner().invoke(main, ["sync", "unlock"], env={"CASUS_DATABASE_URL": database})

    assert result.exit_code == 0 and "another-host.example" in result.stdout
    assert store.sync_state.lock_holder(LOCK_NAME) is None
    record = next(r for r in store.audit_log(actor="operator") if r.action == "sync.unlock")
    assert (record.outcome, record.detail["previousOwner"]) == ("cleared", "another-host.example:1:1:00000000")


def test_on_windows_a_holder_is_never_probed_with_a_signal_and_its_lease_is_left_to_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    probes: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "name", "nt")
    monkeypatch.setattr(os, "kill", lambda pid, sig: probes.append((pid, sig)))  # signal 0 there is CTRL_C_EVENT
    assert pid_exists(2**22 + 12345) and probes == []
