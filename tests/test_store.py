"""The durable store, specified once and run against both engines (SQLite file and a real PostgreSQL)."""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, insert, text

from fhir_adapter.disclosure import Disclosure
from fhir_adapter.form import ConsentForm, parse_form
from fhir_adapter.nhs_number import check_digit
from fhir_adapter.outcome import InvalidInput
from fhir_adapter.store import Store, schema
from fhir_adapter.store.disclosures import STORED_DISCLOSURE
from fhir_adapter.store.engine import StoreError, normalise_url
from fhir_adapter.store.forms import STORED_FORM_VERSION, AlreadyExists, NotFound, VersionConflict
from fhir_adapter.store.sync_state import SyncRecord
from tests.support.facade import example_form

SERVER = "http://127.0.0.1:8080/fhir"

SAMPLE: dict[str, Any] = example_form()  # the shipped example form, profiles/examples/form-competent-under-16.json
#: Words from the sample that are clinical or identifying content and must never reach the audit trail.
IDENTIFYING = ("Alex", "Example", "9434765919", "2011-03-04", "CASUS-00123", "Jo Clinician", "Pat Example", "Patel", "Riverside", "Chris")
START = datetime(2027, 1, 10, 9, 0, tzinfo=UTC)


def nhs_numbers(count: int) -> list[str]:
    """``count`` distinct valid NHS numbers (computed with the check digit, not typed in)."""
    found = []
    for prefix in range(943476000, 943476000 + 20 * count):
        digit = check_digit(str(prefix))
        if digit is not None:
            found.append(f"{prefix}{digit}")
        if len(found) == count:
            return found
    raise AssertionError("not enough valid NHS numbers in range")


def make_form(form_id: str = SAMPLE["formId"], *, nhs: str = "9434765919", status: str = "active", local_id: str = "CASUS-00123") -> ConsentForm:
    doc = copy.deepcopy(SAMPLE)
    doc["formId"] = form_id
    doc["status"] = status
    doc["youngPerson"]["nhsNumber"] = nhs
    doc["youngPerson"]["localId"] = local_id
    return parse_form(doc)


def form_id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


class FakeClock:
    """A clock the test moves by hand, so times (and lease expiry) are exact without sleeping."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


# --------------------------------------------------------------------------- fixtures (both engines)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each engine: a SQLite file in tmp_path, or a fresh PostgreSQL database."""
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


def run_in_threads(count: int, work: Callable[[int], None]) -> None:
    """Run ``work(i)`` on ``count`` threads released together; re-raise the first error."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            work(i)
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a worker thread did not finish"
    if errors:
        raise errors[0]


# --------------------------------------------------------------------------- forms and versions


def test_create_stores_version_1_that_reads_back_unchanged(store: Store, clock: FakeClock) -> None:
    form = make_form()
    created = store.create_form(form, actor="clinician-1")
    got = store.get(form.form_id)
    assert (created.version, got.version) == (1, 1)
    assert got.form == form
    assert (got.actor, got.source, got.stored_at) == ("clinician-1", "local", clock.now)


def test_stored_at_is_the_store_time_in_utc(database_url: str) -> None:
    local_time = datetime(2027, 6, 1, 14, 30, tzinfo=timezone(timedelta(hours=1)))
    with Store.open(database_url, clock=lambda: local_time) as s:
        s.create_form(make_form(), actor="clinician-1")
        recorded = s.get(SAMPLE["formId"]).stored_at
    assert recorded == local_time
    assert recorded.utcoffset() == timedelta(0)


def test_creating_an_existing_form_raises_already_exists_and_keeps_the_original(store: Store) -> None:
    store.create_form(make_form(status="active"), actor="clinician-1")
    with pytest.raises(AlreadyExists):
        store.create_form(make_form(status="withdrawn"), actor="clinician-2")
    assert [v.form.status for v in store.history(SAMPLE["formId"])] == ["active"]


def test_update_appends_a_version_and_keeps_every_earlier_one(store: Store, clock: FakeClock) -> None:
    store.create_form(make_form(status="active"), actor="clinician-1")
    clock.advance(60)
    store.update_form(make_form(status="withdrawn"), expected_version=1, actor="clinician-2")
    clock.advance(60)
    third = store.update_form(make_form(status="active"), expected_version=2, actor="clinician-1")
    history = store.history(SAMPLE["formId"])
    assert [(v.version, v.form.status, v.actor) for v in history] == [
        (1, "active", "clinician-1"),
        (2, "withdrawn", "clinician-2"),
        (3, "active", "clinician-1"),
    ]
    assert [v.stored_at for v in history] == [START, START + timedelta(seconds=60), START + timedelta(seconds=120)]
    assert store.get(SAMPLE["formId"]) == third


def test_get_with_a_version_returns_that_version(store: Store) -> None:
    store.create_form(make_form(status="active"), actor="clinician-1")
    store.update_form(make_form(status="withdrawn"), expected_version=1, actor="clinician-1")
    assert store.get(SAMPLE["formId"], version=1).form.status == "active"
    assert store.get(SAMPLE["formId"], version=2).form.status == "withdrawn"


def test_remote_source_is_kept_on_the_version(store: Store) -> None:
    store.create_form(make_form(), actor="sync", source="remote")
    assert store.get(SAMPLE["formId"]).source == "remote"


def test_unknown_source_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="source"):
        store.create_form(make_form(), actor="clinician-1", source="elsewhere")


@pytest.mark.parametrize(
    "read",
    [
        pytest.param(lambda s: s.get(form_id(99)), id="get"),
        pytest.param(lambda s: s.get(SAMPLE["formId"], version=2), id="get-missing-version"),
        pytest.param(lambda s: s.history(form_id(99)), id="history"),
        pytest.param(lambda s: s.update_form(make_form(form_id(99)), expected_version=1, actor="a"), id="update"),
    ],
)
def test_reading_or_updating_what_is_not_stored_raises_not_found(store: Store, read: Callable[[Store], Any]) -> None:
    store.create_form(make_form(), actor="clinician-1")
    with pytest.raises(NotFound):
        read(store)


def test_stale_write_raises_version_conflict_and_changes_nothing(store: Store) -> None:
    store.create_form(make_form(status="active"), actor="clinician-1")
    store.update_form(make_form(status="withdrawn"), expected_version=1, actor="clinician-1")
    audit_before = store.audit_log()
    with pytest.raises(VersionConflict) as conflict:
        store.update_form(make_form(status="draft"), expected_version=1, actor="clinician-2")
    assert conflict.value.current_version == 2
    assert [v.form.status for v in store.history(SAMPLE["formId"])] == ["active", "withdrawn"]
    assert store.audit_log() == audit_before
    assert len(store.versions_changed_since(0, 100)) == 2


def test_invalid_form_is_refused_and_nothing_is_stored(store: Store) -> None:
    unexplained = dataclasses.replace(make_form(), exceptions=dataclasses.replace(make_form().exceptions, explained=False, explained_on=None))
    with pytest.raises(InvalidInput):
        store.create_form(unexplained, actor="clinician-1")
    with pytest.raises(NotFound):
        store.get(SAMPLE["formId"])
    assert store.audit_log() == []


def test_concurrent_writers_lose_no_update(database_url: str) -> None:
    """8 threads x 10 attempts, each writing with the version it just read: every success is kept, every failure is a conflict."""
    threads, attempts = 8, 10
    with Store.open(database_url) as s:
        s.create_form(make_form(local_id="initial"), actor="clinician-0")
        successes: list[str] = []
        failures: list[BaseException] = []
        lock = threading.Lock()

        def writer(i: int) -> None:
            for n in range(attempts):
                tag = f"w{i}-{n}"
                read = s.get(SAMPLE["formId"])
                try:
                    s.update_form(make_form(local_id=tag), expected_version=read.version, actor=f"clinician-{i}")
                except Exception as exc:  # every kind of failure is recorded and checked below
                    with lock:
                        failures.append(exc)
                else:
                    with lock:
                        successes.append(tag)

        run_in_threads(threads, writer)
        history = s.history(SAMPLE["formId"])
    assert len(successes) + len(failures) == threads * attempts
    assert all(isinstance(f, VersionConflict) for f in failures), {type(f).__name__ for f in failures}
    assert [v.version for v in history] == list(range(1, len(successes) + 2))
    assert sorted(v.form.young_person.local_id or "" for v in history[1:]) == sorted(successes)


def test_concurrent_creates_of_one_form_let_exactly_one_win(database_url: str) -> None:
    outcomes: list[str] = []
    with Store.open(database_url) as s:

        def creator(i: int) -> None:
            try:
                s.create_form(make_form(local_id=f"c{i}"), actor=f"clinician-{i}")
                outcomes.append("created")
            except AlreadyExists:
                outcomes.append("exists")

        run_in_threads(6, creator)
        assert len(s.history(SAMPLE["formId"])) == 1
    assert sorted(outcomes) == ["created"] + ["exists"] * 5


# --------------------------------------------------------------------------- search and patient views


def test_search_by_nhs_number_returns_latest_versions_of_that_patients_forms_only(store: Store) -> None:
    mine, other = nhs_numbers(2)
    store.create_form(make_form(form_id(1), nhs=mine, status="active"), actor="a")
    store.update_form(make_form(form_id(1), nhs=mine, status="withdrawn"), expected_version=1, actor="a")
    store.create_form(make_form(form_id(2), nhs=other), actor="a")
    found, total = store.search(nhs_number=mine)
    assert total == 1
    assert [(v.form_id, v.version, v.form.status) for v in found] == [(form_id(1), 2, "withdrawn")]


def test_search_by_status_matches_the_latest_version_not_older_ones(store: Store) -> None:
    store.create_form(make_form(form_id(1), status="active"), actor="a")
    store.update_form(make_form(form_id(1), status="withdrawn"), expected_version=1, actor="a")
    store.create_form(make_form(form_id(2), status="active"), actor="a")
    assert [v.form_id for v in store.search(status="active")[0]] == [form_id(2)]
    assert [v.form_id for v in store.search(status="withdrawn")[0]] == [form_id(1)]


def test_search_updated_since_is_inclusive_and_updated_before_exclusive(store: Store, clock: FakeClock) -> None:
    times = []
    for n in range(1, 5):
        times.append(clock.advance(60))
        store.create_form(make_form(form_id(n)), actor="a")
    found, total = store.search(updated_since=times[1], updated_before=times[3])
    assert [v.form_id for v in found] == [form_id(2), form_id(3)]
    assert total == 2


def test_search_pages_in_stored_order_and_reports_the_total(store: Store, clock: FakeClock) -> None:
    for n in (5, 3, 1, 4, 2):  # stored out of id order: order follows time, not id
        clock.advance(1)
        store.create_form(make_form(form_id(n)), actor="a")
    pages = [store.search(limit=2, offset=offset) for offset in (0, 2, 4, 6)]
    assert [[v.form_id for v in page] for page, _ in pages] == [[form_id(5), form_id(3)], [form_id(1), form_id(4)], [form_id(2)], []]
    assert {total for _, total in pages} == {5}


def test_search_orders_same_time_versions_by_form_id(store: Store) -> None:
    for n in (3, 1, 2):
        store.create_form(make_form(form_id(n)), actor="a")
    assert [v.form_id for v in store.search()[0]] == [form_id(1), form_id(2), form_id(3)]


def test_search_with_limit_zero_only_counts(store: Store) -> None:
    for n in range(3):
        store.create_form(make_form(form_id(n)), actor="a")
    assert store.search(limit=0) == ([], 3)


def test_search_refuses_times_without_a_zone_and_unbounded_pages(store: Store) -> None:
    with pytest.raises(ValueError, match="timezone"):
        store.search(updated_since=datetime(2027, 1, 1))
    with pytest.raises(ValueError, match="limit"):
        store.search(limit=10_000)


def test_versions_for_patient_returns_every_version_of_every_form_for_that_patient(store: Store, clock: FakeClock) -> None:
    mine, other = nhs_numbers(2)
    store.create_form(make_form(form_id(1), nhs=mine), actor="a")
    clock.advance(1)
    store.create_form(make_form(form_id(2), nhs=other), actor="a")
    clock.advance(1)
    store.create_form(make_form(form_id(3), nhs=mine), actor="a")
    clock.advance(1)
    store.update_form(make_form(form_id(1), nhs=mine, status="withdrawn"), expected_version=1, actor="a")
    assert [(v.form_id, v.version) for v in store.versions_for_patient(mine)] == [(form_id(1), 1), (form_id(3), 1), (form_id(1), 2)]


def test_versions_changed_since_lists_each_stored_version_once_in_ascending_sequence(store: Store) -> None:
    store.create_form(make_form(form_id(1)), actor="a")
    store.create_form(make_form(form_id(2)), actor="a")
    store.update_form(make_form(form_id(1), status="withdrawn"), expected_version=1, actor="a")
    everything = store.versions_changed_since(0, 100)
    seqs = [seq for seq, _ in everything]
    assert seqs == sorted(set(seqs))
    assert [(v.form_id, v.version) for _, v in everything] == [(form_id(1), 1), (form_id(2), 1), (form_id(1), 2)]
    first_two = store.versions_changed_since(0, 2)
    rest = store.versions_changed_since(first_two[-1][0], 100)
    assert first_two + rest == everything


# --------------------------------------------------------------------------- audit


def test_form_writes_are_audited_without_clinical_content(store: Store) -> None:
    store.create_form(make_form(), actor="clinician-1")
    store.update_form(make_form(status="withdrawn"), expected_version=1, actor="clinician-2")
    records = store.audit_log()
    assert [(r.action, r.actor, r.resource, r.outcome, r.detail["version"]) for r in records] == [
        (STORED_FORM_VERSION, "clinician-2", f"form/{SAMPLE['formId']}", "updated", 2),
        (STORED_FORM_VERSION, "clinician-1", f"form/{SAMPLE['formId']}", "created", 1),
    ]
    rendered = repr([dataclasses.replace(r, subject=None) for r in records])
    assert [word for word in IDENTIFYING if word in rendered] == []


def test_form_writes_are_audited_against_the_young_persons_nhs_number(store: Store) -> None:
    store.create_form(make_form(), actor="clinician-1")
    assert [r.subject for r in store.audit_log(subject=SAMPLE["youngPerson"]["nhsNumber"])] == [SAMPLE["youngPerson"]["nhsNumber"]]


def test_audit_keeps_codes_and_redacts_identifying_fields_and_nhs_numbers(store: Store) -> None:
    store.audit(
        actor="ehr-client",
        action="decision",
        resource="Patient/9434765919",
        outcome="permit",
        detail={"purposes": ["THREAT"], "verdict": "permit", "name": "Alex Example", "nhsNumber": "9434765919", "query": "patient 943 476 5919"},
    )
    (record,) = store.audit_log()
    assert record.detail["purposes"] == ["THREAT"]
    assert record.detail["verdict"] == "permit"
    assert [word for word in IDENTIFYING if word in repr(record)] == []
    assert "943 476 5919" not in repr(record)


def test_audit_log_is_newest_first_and_filters_by_actor(store: Store, clock: FakeClock) -> None:
    for n, actor in enumerate(("a", "b", "a")):
        clock.advance(1)
        store.audit(actor=actor, action=f"action-{n}", resource=None, outcome="ok")
    assert [r.action for r in store.audit_log()] == ["action-2", "action-1", "action-0"]
    assert [r.action for r in store.audit_log(actor="a")] == ["action-2", "action-0"]
    assert [r.action for r in store.audit_log(limit=1)] == ["action-2"]


# --------------------------------------------------------------------------- disclosures


def a_disclosure(**changes: Any) -> Disclosure:
    base = Disclosure(
        id=None,
        nhs_number="9434765919",
        form_id=SAMPLE["formId"],
        exception="court-order",
        information_types=("attendance", "medication"),
        recipient={"name": "Family Court", "role": "court", "organisation": "HMCTS", "odsCode": "ZE123"},
        reason="order ZE12345/27",
        disclosed_at=datetime(2027, 2, 1, 12, 0, tzinfo=UTC),
        young_person_told=True,
        told_at=datetime(2027, 2, 1, 15, 0, tzinfo=UTC),
    )
    return dataclasses.replace(base, **changes)


def test_disclosure_round_trips_with_an_id_and_recorded_time(store: Store, clock: FakeClock) -> None:
    stored = store.record_disclosure(a_disclosure(), actor="clinician-1")
    assert stored.id
    assert stored.recorded_at == clock.now
    assert store.disclosures("9434765919") == [stored]
    assert dataclasses.replace(stored, id=None, recorded_at=None) == a_disclosure()


def test_disclosures_are_listed_per_patient_in_the_order_made(store: Store) -> None:
    mine, other = nhs_numbers(2)
    later = store.record_disclosure(a_disclosure(nhs_number=mine, disclosed_at=datetime(2027, 3, 1, tzinfo=UTC)), actor="a")
    earlier = store.record_disclosure(a_disclosure(nhs_number=mine, disclosed_at=datetime(2027, 1, 1, tzinfo=UTC)), actor="a")
    store.record_disclosure(a_disclosure(nhs_number=other), actor="a")
    assert store.disclosures(mine) == [earlier, later]


def test_disclosure_not_told_needs_a_reason_and_nothing_is_stored_without_it(store: Store) -> None:
    with pytest.raises(InvalidInput) as invalid:
        store.record_disclosure(a_disclosure(young_person_told=False, told_at=None, not_told_reason=None), actor="a")
    assert [i.expression for i in invalid.value.issues] == ["$.notToldReason"]
    assert store.disclosures("9434765919") == []


def test_disclosure_under_an_unknown_exception_is_refused(store: Store) -> None:
    with pytest.raises(InvalidInput) as invalid:
        store.record_disclosure(a_disclosure(exception="because-asked"), actor="a")
    assert [i.expression for i in invalid.value.issues] == ["$.exception"]


def test_disclosure_audit_names_the_exception_but_not_the_content(store: Store) -> None:
    stored = store.record_disclosure(a_disclosure(), actor="clinician-1")
    (record,) = store.audit_log()
    assert (record.action, record.resource, record.detail["exception"]) == (STORED_DISCLOSURE, f"disclosure/{stored.id}", "court-order")
    assert record.subject == "9434765919"
    assert [w for w in ("Family Court", "HMCTS", "ZE12345", "9434765919") if w in repr(dataclasses.replace(record, subject=None))] == []


# --------------------------------------------------------------------------- sync state


def test_cursor_is_none_until_set_and_then_holds_the_last_value(store: Store) -> None:
    assert store.get_cursor(SERVER, "push") is None
    store.set_cursor(SERVER, "push", "17")
    store.set_cursor(SERVER, "push", "42")
    store.set_cursor(SERVER, "pull", "2027-01-01T00:00:00Z")
    assert (store.get_cursor(SERVER, "push"), store.get_cursor(SERVER, "pull")) == ("42", "2027-01-01T00:00:00Z")


def test_a_cursor_set_with_one_server_is_not_another_servers(store: Store) -> None:
    store.set_cursor(SERVER, "push", "42")

    assert store.get_cursor("https://other.example.org/fhir", "push") is None


def test_sync_record_is_none_until_saved_and_a_save_replaces_it(store: Store) -> None:
    assert store.sync_record(SERVER, form_id(1)) is None
    store.save_sync_record(
        SyncRecord(SERVER, form_id(1), pushed_version=1, remote_id="abc", remote_version_id="1", remote_last_updated="2027-01-01T00:00:00Z")
    )
    replacement = SyncRecord(
        SERVER, form_id(1), pushed_version=2, remote_id="abc", remote_version_id="2", remote_last_updated="2027-01-02T00:00:00Z", pulled_version=None
    )
    store.save_sync_record(replacement)
    assert store.sync_record(SERVER, form_id(1)) == replacement


def test_sync_records_of_one_server_are_not_another_servers(store: Store) -> None:
    store.save_sync_record(SyncRecord(SERVER, form_id(1), pushed_version=1, remote_id="abc", remote_version_id="1"))

    assert store.sync_record("https://other.example.org/fhir", form_id(1)) is None


# --------------------------------------------------------------------------- leases


def test_a_held_lease_excludes_other_owners(store: Store) -> None:
    assert store.acquire_lock("sync", "run-a", ttl_seconds=60)
    assert not store.acquire_lock("sync", "run-b", ttl_seconds=60)
    assert store.acquire_lock("other-job", "run-b", ttl_seconds=60)


def test_the_holder_renews_its_lease(store: Store, clock: FakeClock) -> None:
    store.acquire_lock("sync", "run-a", ttl_seconds=60)
    clock.advance(50)
    assert store.acquire_lock("sync", "run-a", ttl_seconds=60)
    clock.advance(50)  # past the first lease, inside the renewed one
    assert not store.acquire_lock("sync", "run-b", ttl_seconds=60)


def test_an_expired_lease_can_be_taken_over_and_the_old_holder_loses_it(store: Store, clock: FakeClock) -> None:
    store.acquire_lock("sync", "run-a", ttl_seconds=60)
    clock.advance(61)
    assert store.acquire_lock("sync", "run-b", ttl_seconds=60)
    assert not store.acquire_lock("sync", "run-a", ttl_seconds=60)


def test_release_frees_the_lease_but_only_for_its_holder(store: Store) -> None:
    store.acquire_lock("sync", "run-a", ttl_seconds=60)
    store.release_lock("sync", "run-b")
    assert not store.acquire_lock("sync", "run-b", ttl_seconds=60)
    store.release_lock("sync", "run-a")
    assert store.acquire_lock("sync", "run-b", ttl_seconds=60)


def test_concurrent_lease_requests_grant_it_to_exactly_one_owner(database_url: str) -> None:
    granted: list[bool] = []
    with Store.open(database_url) as s:
        run_in_threads(8, lambda i: granted.append(s.acquire_lock("sync", f"run-{i}", ttl_seconds=60)))
    assert sorted(granted) == [False] * 7 + [True]


# --------------------------------------------------------------------------- migrations and opening


def test_opening_twice_migrates_once_and_keeps_the_data(database_url: str) -> None:
    with Store.open(database_url) as first:
        first.create_form(make_form(), actor="a")
    with Store.open(database_url) as second:
        assert second.get(SAMPLE["formId"]).version == 1
    engine = create_engine(normalise_url(database_url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(schema.schema_version.select()).all()
    finally:
        engine.dispose()
    assert [r.version for r in rows] == [m.version for m in schema.MIGRATIONS]


def test_concurrent_opens_of_an_empty_database_all_succeed(database_url: str) -> None:
    opened: list[str] = []

    def open_and_close(_: int) -> None:
        with Store.open(database_url) as s:
            opened.append(s.backend)

    run_in_threads(8, open_and_close)
    assert len(opened) == 8


def test_migrated_schema_matches_the_tables_the_store_queries(store: Store, database_url: str) -> None:
    engine = create_engine(normalise_url(database_url))
    try:
        with engine.connect() as conn:
            actual = schema.describe(conn)
    finally:
        engine.dispose()
    assert actual == schema.table_columns()


def test_sync_state_from_before_it_was_kept_per_server_is_kept_under_the_unknown_server(database_url: str) -> None:
    engine = create_engine(normalise_url(database_url))
    try:
        with engine.begin() as conn:
            schema.migrate(conn, schema.MIGRATIONS[:4])
            conn.execute(text("INSERT INTO sync_records (form_id, pushed_version, remote_id, remote_version_id) VALUES ('f-1', 1, 'srv-1', '1')"))
            conn.execute(text("INSERT INTO sync_cursors (name, value, updated_at) VALUES ('sync.push', '7', '2026-01-01 00:00:00')"))
    finally:
        engine.dispose()
    with Store.open(database_url) as upgraded:
        assert upgraded.sync_record(schema.LEGACY_SERVER, "f-1") == SyncRecord(
            schema.LEGACY_SERVER, "f-1", pushed_version=1, remote_id="srv-1", remote_version_id="1"
        )
        assert upgraded.get_cursor(schema.LEGACY_SERVER, "sync.push") == "7"
        assert upgraded.get_cursor(SERVER, "sync.push") is None


def test_only_forms_the_server_is_known_to_hold_are_listed_for_checking(store: Store) -> None:
    for n in range(3):
        store.save_sync_record(SyncRecord(SERVER, form_id(n), pushed_version=1, remote_id=f"srv-{n}", remote_version_id="1"))
    store.save_sync_record(SyncRecord(SERVER, form_id(3), pulled_version=1))
    store.save_sync_record(SyncRecord("https://other.example.org/fhir", form_id(4), remote_id="srv-4"))
    held = sorted(form_id(n) for n in range(3))

    assert store.sync_state.form_ids_on_server(SERVER, "", 10) == held
    assert store.sync_state.form_ids_on_server(SERVER, held[0], 10) == held[1:]


def test_a_database_from_a_newer_adapter_is_refused(database_url: str) -> None:
    Store.open(database_url).close()
    engine = create_engine(normalise_url(database_url))
    try:
        with engine.begin() as conn:
            conn.execute(insert(schema.schema_version).values(version=999, description="future", applied_at=START))
    finally:
        engine.dispose()
    with pytest.raises(schema.SchemaTooNew):
        Store.open(database_url)


def test_sqlite_file_and_its_folder_are_created_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "not" / "yet" / "there.db"
    with Store.open(f"sqlite:///{path}") as s:
        s.create_form(make_form(), actor="a")
    assert path.is_file()


def test_an_unsupported_database_url_is_refused() -> None:
    with pytest.raises(StoreError, match="unsupported"):
        Store.open("mysql://u@127.0.0.1/casus")


def test_patient_versions_seen_by_one_store_include_writes_made_through_another(tmp_path) -> None:
    """The decision hot path caches per patient; a write by another process (here another Store) must show at once."""
    url = f"sqlite:///{tmp_path}/shared.db"
    with Store.open(url) as reader, Store.open(url) as writer:
        writer.create_form(make_form(), actor="a")
        assert [v.version for v in reader.versions_for_patient(SAMPLE["youngPerson"]["nhsNumber"])] == [1]
        writer.update_form(make_form(status="withdrawn"), expected_version=1, actor="b")
        assert [v.form.status for v in reader.versions_for_patient(SAMPLE["youngPerson"]["nhsNumber"])] == ["active", "withdrawn"]


def test_form_ids_changed_since_lists_sequence_numbers_and_ids_in_commit_order(store: Store) -> None:
    store.create_form(make_form(), actor="a")
    store.update_form(make_form(status="withdrawn"), expected_version=1, actor="a")
    changed = store.form_ids_changed_since(0, 10)
    assert [form_id for _, form_id in changed] == [SAMPLE["formId"], SAMPLE["formId"]]
    assert [seq for seq, _ in changed] == [seq for seq, _ in store.versions_changed_since(0, 10)]
    assert store.form_ids_changed_since(changed[-1][0], 10) == []
