"""Consent page sessions and failed sign-ins kept in the store, on SQLite and a real PostgreSQL.

Every process serving one database must honour the same sessions and count the same failures, and a restart
must keep both; two ``Store`` objects on one database stand for two processes here (``test_serve_workers``
runs real ones).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from fhir_adapter.store import Store, schema
from fhir_adapter.store.sessions import PageSessions

START = datetime(2026, 12, 1, 9, tzinfo=UTC)
IDLE, MAX_AGE = timedelta(minutes=20), timedelta(hours=1)
WINDOW = timedelta(minutes=15)
READER = frozenset({"consent.read"})


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, minutes: float) -> None:
        self.now += timedelta(minutes=minutes)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("postgres_database_url")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(database_url: str, clock: FakeClock) -> Iterator[Store]:
    with Store.open(database_url, clock=clock) as opened:
        yield opened


@pytest.fixture
def book(store: Store) -> PageSessions:
    return store.page_sessions(idle=IDLE, max_age=MAX_AGE)


def stored_rows(store: Store, table: str) -> list[tuple[object, ...]]:
    with store.db.read() as conn:
        return [tuple(row) for row in conn.execute(select(schema.metadata.tables[table])).all()]


# --------------------------------------------------------------------------- sessions


def test_a_started_session_is_found_by_its_id_with_who_signed_in_and_its_csrf_token(book: PageSessions) -> None:
    opened = book.start(actor="jo", display_name="Jo Clinician", scopes=frozenset({"consent.read", "form.write"}))
    found = book.find(opened.session_id)
    assert found is not None
    assert (found.actor, found.display_name, found.scopes, found.csrf_token, found.started) == (
        "jo",
        "Jo Clinician",
        frozenset({"consent.read", "form.write"}),
        opened.csrf_token,
        START,
    )


def test_the_store_keeps_a_digest_of_the_session_id_never_the_id(store: Store, book: PageSessions) -> None:
    opened = book.start(actor="jo", display_name="Jo", scopes=READER)
    (row,) = stored_rows(store, "page_sessions")
    assert opened.session_id not in [str(value) for value in row]
    assert book.find(opened.session_id) is not None


def test_an_unknown_or_missing_session_id_finds_nothing(book: PageSessions) -> None:
    book.start(actor="jo", display_name="Jo", scopes=READER)
    assert book.find("made-up") is None
    assert book.find(None) is None


def test_each_request_restarts_the_idle_clock(book: PageSessions, clock: FakeClock) -> None:
    opened = book.start(actor="jo", display_name="Jo", scopes=READER)
    for _ in range(2):
        clock.advance(19)
        assert book.find(opened.session_id) is not None


def test_a_session_idle_for_longer_than_the_timeout_is_ended_and_deleted(store: Store, book: PageSessions, clock: FakeClock) -> None:
    opened = book.start(actor="jo", display_name="Jo", scopes=READER)
    clock.advance(21)
    assert book.find(opened.session_id) is None
    assert stored_rows(store, "page_sessions") == []


def test_a_session_ends_at_its_maximum_age_however_busy(book: PageSessions, clock: FakeClock) -> None:
    opened = book.start(actor="jo", display_name="Jo", scopes=READER)
    for _ in range(6):
        clock.advance(10)
        assert book.find(opened.session_id) is not None
    clock.advance(1)
    assert book.find(opened.session_id) is None


def test_an_ended_session_is_never_found_again(book: PageSessions) -> None:
    opened = book.start(actor="jo", display_name="Jo", scopes=READER)
    assert book.end(opened.session_id) is True
    assert book.find(opened.session_id) is None
    assert book.end(opened.session_id) is False


def test_starting_a_session_purges_every_expired_one(book: PageSessions, clock: FakeClock) -> None:
    book.start(actor="jo", display_name="Jo", scopes=READER)
    book.start(actor="kim", display_name="Kim", scopes=READER)
    clock.advance(30)
    book.start(actor="sam", display_name="Sam", scopes=READER)
    assert book.open_count() == 1


def test_purge_expired_deletes_only_sessions_past_a_timeout(book: PageSessions, clock: FakeClock) -> None:
    book.start(actor="jo", display_name="Jo", scopes=READER)
    clock.advance(15)
    kept = book.start(actor="kim", display_name="Kim", scopes=READER)
    clock.advance(10)
    assert book.purge_expired() == 1
    assert book.find(kept.session_id) is not None


def test_a_session_started_through_one_store_is_honoured_and_ended_through_another_on_the_same_database(
    database_url: str, book: PageSessions, clock: FakeClock
) -> None:
    opened = book.start(actor="jo", display_name="Jo", scopes=READER)
    with Store.open(database_url, clock=clock) as other_process:
        elsewhere = other_process.page_sessions(idle=IDLE, max_age=MAX_AGE)
        assert elsewhere.find(opened.session_id) is not None
        elsewhere.end(opened.session_id)
    assert book.find(opened.session_id) is None


def test_sessions_outlive_a_restart(database_url: str, clock: FakeClock) -> None:
    with Store.open(database_url, clock=clock) as before:
        opened = before.page_sessions(idle=IDLE, max_age=MAX_AGE).start(actor="jo", display_name="Jo", scopes=READER)
    with Store.open(database_url, clock=clock) as after:
        assert after.page_sessions(idle=IDLE, max_age=MAX_AGE).find(opened.session_id) is not None


# --------------------------------------------------------------------------- failed sign-ins


def test_failures_are_counted_per_key_within_the_window(store: Store, clock: FakeClock) -> None:
    failures = store.sign_in_failures(window=WINDOW)
    failures.record(["username:jo", "address:10.0.0.1"])
    clock.advance(10)
    failures.record(["username:jo", "address:10.0.0.2"])
    assert (failures.count("username:jo"), failures.count("address:10.0.0.1"), failures.count("username:kim")) == (2, 1, 0)
    clock.advance(6)
    assert failures.count("username:jo") == 1


def test_recording_a_failure_forgets_failures_older_than_the_window(store: Store, clock: FakeClock) -> None:
    failures = store.sign_in_failures(window=WINDOW)
    failures.record(["username:jo"])
    clock.advance(16)
    failures.record(["username:kim"])
    assert len(stored_rows(store, "sign_in_failures")) == 1


def test_forgetting_a_key_clears_only_its_failures(store: Store) -> None:
    failures = store.sign_in_failures(window=WINDOW)
    failures.record(["username:jo", "address:10.0.0.1"])
    failures.forget("username:jo")
    assert (failures.count("username:jo"), failures.count("address:10.0.0.1")) == (0, 1)


def test_failures_are_kept_by_digest_never_the_username_typed(store: Store) -> None:
    store.sign_in_failures(window=WINDOW).record(["username:my-password-typed-here"])
    (row,) = stored_rows(store, "sign_in_failures")
    assert not [value for value in row if "my-password" in str(value)]


def test_failures_recorded_through_one_store_are_counted_by_another_on_the_same_database(database_url: str, store: Store, clock: FakeClock) -> None:
    store.sign_in_failures(window=WINDOW).record(["username:jo"])
    with Store.open(database_url, clock=clock) as other_process:
        assert other_process.sign_in_failures(window=WINDOW).count("username:jo") == 1
