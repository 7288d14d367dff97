"""Sign-in throttling and shared sessions on the consent pages: failures and sessions live in the store, so every
process serving one database refuses and honours alike (two apps on one database stand for two processes)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from werkzeug.security import generate_password_hash
from werkzeug.test import TestResponse

from fhir_adapter.access import PasswordUser
from fhir_adapter.config import Settings
from fhir_adapter.facade import sessions
from fhir_adapter.server import create_app
from fhir_adapter.store import Store
from tests.support.facade import grants
from tests.support.pages import csrf_of

PASSWORD = "correct horse battery"
USERS = (PasswordUser("jo", "Jo Clinician", generate_password_hash(PASSWORD), frozenset({"consent.read"})),)
THROTTLED = "Too many unsuccessful sign-ins. Wait 15 minutes, then try again."


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/casus.db"


@pytest.fixture
def store(database_url: str, clock: FakeClock) -> Iterator[Store]:
    with Store.open(database_url, clock=clock) as opened:
        yield opened


def page_client(store: Store, **settings: int) -> FlaskClient:
    return create_app(Settings(grants=grants(), users=USERS, **settings), store=store).test_client()


@pytest.fixture
def client(store: Store) -> FlaskClient:
    return page_client(store)


def attempt(client: FlaskClient, username: str, password: str, address: str = "10.0.0.1") -> TestResponse:
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/consent/sign-in").text).group(1)  # type: ignore[union-attr]
    data = {"csrf_token": csrf, "username": username, "password": password}
    return client.post("/consent/sign-in", data=data, environ_base={"REMOTE_ADDR": address})


def fail(client: FlaskClient, username: str, times: int, address: str = "10.0.0.1") -> None:
    for _ in range(times):
        assert attempt(client, username, "wrong", address).status_code == 401


def test_after_five_failures_for_a_username_even_the_right_password_is_refused(client: FlaskClient) -> None:
    fail(client, "jo", 5)
    refused = attempt(client, "jo", PASSWORD)
    assert refused.status_code == 429 and THROTTLED in refused.text
    assert refused.headers["Retry-After"] == "900"
    assert client.get("/consent/").status_code == 303


def test_four_failures_still_let_the_right_password_in(client: FlaskClient) -> None:
    fail(client, "jo", 4)
    assert attempt(client, "jo", PASSWORD).status_code == 303


def test_an_unknown_username_is_throttled_with_the_same_answer_as_a_real_one(client: FlaskClient) -> None:
    fail(client, "jo", 5)
    fail(client, "nobody", 5, address="10.0.0.2")
    real, unknown = attempt(client, "jo", "wrong"), attempt(client, "nobody", "wrong", address="10.0.0.2")
    assert real.status_code == unknown.status_code == 429
    assert THROTTLED in real.text and THROTTLED in unknown.text


def test_the_username_is_throttled_from_every_address(client: FlaskClient) -> None:
    fail(client, "jo", 5, address="10.0.0.1")
    assert attempt(client, "jo", PASSWORD, address="10.0.0.9").status_code == 429


def test_other_usernames_are_not_throttled_by_one_users_failures(store: Store) -> None:
    client = page_client(store)
    fail(client, "kim", 5, address="10.0.0.1")
    assert attempt(client, "jo", PASSWORD, address="10.0.0.2").status_code == 303


def test_many_failures_from_one_address_throttle_every_username_from_it(store: Store) -> None:
    client = page_client(store, sign_in_failures_per_address=6)
    for name in ("a", "b", "c", "d", "e", "f"):
        fail(client, name, 1, address="10.0.0.7")
    assert attempt(client, "jo", PASSWORD, address="10.0.0.7").status_code == 429
    assert attempt(client, "jo", PASSWORD, address="10.0.0.8").status_code == 303


def test_the_refusal_lifts_once_the_failures_are_older_than_the_window(client: FlaskClient, clock: FakeClock) -> None:
    fail(client, "jo", 5)
    clock.now += timedelta(minutes=15, seconds=1)
    assert attempt(client, "jo", PASSWORD).status_code == 303


def test_refused_attempts_do_not_extend_the_refusal(client: FlaskClient, clock: FakeClock) -> None:
    fail(client, "jo", 5)
    clock.now += timedelta(minutes=10)
    assert attempt(client, "jo", "wrong").status_code == 429
    clock.now += timedelta(minutes=5, seconds=1)
    assert attempt(client, "jo", PASSWORD).status_code == 303


def test_a_successful_sign_in_clears_the_usernames_failures(client: FlaskClient) -> None:
    fail(client, "jo", 4)
    assert attempt(client, "jo", PASSWORD).status_code == 303
    fail(client, "jo", 4)
    assert attempt(client, "jo", PASSWORD).status_code == 303


def test_throttled_attempts_are_audited_without_the_username_typed(client: FlaskClient, store: Store) -> None:
    fail(client, "jo", 5)
    attempt(client, "jo", PASSWORD)
    records = store.audit_log(action="session.sign-in")
    assert [r.outcome for r in records].count("throttled") == 1
    assert {r.actor for r in records if r.outcome in ("throttled", "refused")} == {"-"}


def test_failures_through_one_process_throttle_sign_ins_through_another(store: Store, database_url: str, clock: FakeClock) -> None:
    fail(page_client(store), "jo", 5)
    with Store.open(database_url, clock=clock) as other_store:
        assert attempt(page_client(other_store), "jo", PASSWORD, address="10.0.0.9").status_code == 429


def test_a_session_signed_in_through_one_process_is_honoured_and_signed_out_through_another(
    store: Store, database_url: str, clock: FakeClock
) -> None:
    first = page_client(store)
    assert attempt(first, "jo", PASSWORD).status_code == 303
    cookie = first.get_cookie(sessions.COOKIE, path="/consent").value
    with Store.open(database_url, clock=clock) as other_store:
        second = page_client(other_store)
        second.set_cookie(sessions.COOKIE, cookie, path="/consent")
        assert "Signed in as Jo Clinician" in second.get("/consent/").text
        second.post("/consent/sign-out", data={"csrf_token": csrf_of(second)})
    assert first.get("/consent/").status_code == 303


def test_signing_in_again_ends_the_earlier_session(client: FlaskClient, store: Store) -> None:
    attempt(client, "jo", PASSWORD)
    earlier = client.get_cookie(sessions.COOKIE, path="/consent").value
    attempt(client, "jo", PASSWORD)
    assert client.get_cookie(sessions.COOKIE, path="/consent").value != earlier
    assert sessions_open(store) == 1


def sessions_open(store: Store) -> int:
    return store.page_sessions(idle=timedelta(minutes=20), max_age=timedelta(hours=10)).open_count()
