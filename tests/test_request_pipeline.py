"""The one request pipeline: every route, the decision route included, gets the same hooks and the same errors."""

from __future__ import annotations

import logging
import os
from typing import Any

import pytest

from fhir_adapter.consent_service import ConsentService
from fhir_adapter.facade.pipeline import SECURITY_HEADERS, RequestIds
from fhir_adapter.store import Store
from fhir_adapter.store.audit import AuditWriteFailed
from tests.support.facade import TOKENS, bearer, example_form

NHS = "9434765919"
GOOD = {"patient": NHS, "purpose": "TREAT", "recipient-role": "mother", "information-type": "attendance"}

#: One request per kind of route: the lean decision route, a Flask view, a public view, an unknown path, a wrong method.
ROUTES = [
    ("GET", "/api/decision", GOOD, "ehr"),
    ("GET", "/api/forms", {"nhs_number": NHS}, "clinician"),
    ("GET", "/health/live", {}, None),
    ("GET", "/api/no-such-route", {}, "ehr"),
    ("DELETE", "/api/decision", {}, "ehr"),
    ("HEAD", "/api/decision", GOOD, "ehr"),
]
ROUTE_IDS = ["lean-decision", "flask-view", "public", "unknown-path", "wrong-method", "head-decision"]


@pytest.fixture
def loaded(client):
    assert client.post("/api/forms", json=example_form(), headers=bearer("clinician")).status_code == 201
    return client


def decisions_audited(store: Store) -> int:
    return sum(1 for r in store.audit_log(limit=1000) if r.action == "decision")


@pytest.mark.parametrize("method, path, query, role", ROUTES, ids=ROUTE_IDS)
def test_every_route_carries_the_security_headers_and_a_request_id(loaded, method, path, query, role) -> None:
    response = loaded.open(path, method=method, query_string=query, headers=bearer(role) if role else {})
    for name, value in SECURITY_HEADERS:
        assert response.headers.get(name) == value
    assert len(response.headers["X-Request-ID"]) == 32


@pytest.mark.parametrize("method, path, query, role", ROUTES, ids=ROUTE_IDS)
def test_every_route_echoes_the_callers_request_id(loaded, method, path, query, role) -> None:
    headers = {**(bearer(role) if role else {}), "X-Request-ID": "ehr-trace-42"}
    assert loaded.open(path, method=method, query_string=query, headers=headers).headers["X-Request-ID"] == "ehr-trace-42"


@pytest.mark.parametrize("method, path, query, role", ROUTES, ids=ROUTE_IDS)
def test_every_route_writes_one_access_log_line_naming_the_route_template_only(loaded, caplog, method, path, query, role) -> None:
    with caplog.at_level(logging.INFO, logger="fhir_adapter.http"):
        loaded.open(path, method=method, query_string=query, headers={**(bearer(role) if role else {}), "X-Request-ID": "r-1"})
    lines = [r.getMessage() for r in caplog.records if r.name == "fhir_adapter.http" and "id=r-1" in r.getMessage()]
    assert len(lines) == 1
    assert NHS not in lines[0]


def test_a_made_up_request_id_differs_from_request_to_request(loaded) -> None:
    ids = {loaded.get("/api/decision", query_string=GOOD, headers=bearer("ehr")).headers["X-Request-ID"] for _ in range(3)}
    assert len(ids) == 3


def test_an_unknown_path_is_a_404_outcome(loaded) -> None:
    response = loaded.get("/api/no-such-route", headers=bearer("ehr"))
    assert response.status_code == 404 and response.json["resourceType"] == "OperationOutcome"


def test_a_wrong_method_is_a_405_outcome_naming_the_allowed_methods(loaded) -> None:
    response = loaded.delete("/api/decision", headers=bearer("ehr"))
    assert response.status_code == 405 and response.json["resourceType"] == "OperationOutcome"
    assert "GET" in response.headers["Allow"]


def test_head_on_the_decision_route_answers_without_a_body(loaded) -> None:
    response = loaded.head("/api/decision", query_string=GOOD, headers=bearer("ehr"))
    assert response.status_code == 200 and response.get_data() == b""


@pytest.mark.parametrize(
    "query",
    [
        {},
        {**GOOD, "patient": "9434765918"},
        {**GOOD, "information-type": "everything"},
        {**GOOD, "recipient-role": "aunt"},
        {k: v for k, v in GOOD.items() if k != "recipient-role"},
        {**GOOD, "at": "yesterday"},
        {**GOOD, "at": "2026-01-01T00:00:00"},
        {**GOOD, "recipient-identifier": "no-separator"},
        {**GOOD, "purpose": ""},
    ],
    ids=["empty", "bad-check-digit", "unknown-type", "unknown-role", "no-recipient", "bad-at", "at-without-zone", "bad-identifier", "empty-purpose"],
)
def test_a_bad_question_gets_a_400_outcome_and_nothing_is_audited(loaded, store, query) -> None:
    response = loaded.get("/api/decision", query_string=query, headers=bearer("ehr"))
    assert response.status_code == 400 and response.json["resourceType"] == "OperationOutcome"
    assert decisions_audited(store) == 0


@pytest.mark.parametrize(
    "headers, status",
    [
        ({}, 401),
        ({"Authorization": "Bearer not-a-known-token-0123456789"}, 401),
        ({"Authorization": f"Basic {TOKENS['ehr']}"}, 401),
        (bearer("engineer"), 403),
    ],
    ids=["no-token", "unknown-token", "wrong-scheme", "missing-scope"],
)
def test_a_refused_token_is_answered_before_the_view_and_nothing_is_audited(loaded, store, headers, status) -> None:
    response = loaded.get("/api/decision", query_string=GOOD, headers=headers)
    assert response.status_code == status and response.json["resourceType"] == "OperationOutcome"
    assert decisions_audited(store) == 0


def test_each_answered_question_is_audited_exactly_once(loaded, store) -> None:
    for _ in range(3):
        assert loaded.get("/api/decision", query_string=GOOD, headers=bearer("ehr")).status_code == 200
    assert decisions_audited(store) == 3


def test_the_tokens_are_read_from_the_app_config_on_every_request(app, loaded) -> None:
    app.config["CASUS_GRANTS"] = ()  # e.g. every token revoked
    assert loaded.get("/api/decision", query_string=GOOD, headers=bearer("ehr")).status_code == 401


def test_an_unexpected_failure_is_a_500_outcome_with_an_incident_id_and_no_detail(app, loaded, monkeypatch) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("patient 9434765919 secret detail")

    monkeypatch.setattr(app.extensions["casus"].store, "versions_for_patient", broken)
    response = loaded.get("/api/decision", query_string=GOOD, headers=bearer("ehr"))
    assert response.status_code == 500
    assert response.headers["Content-Type"] == "application/fhir+json; charset=utf-8"
    assert "incident" in response.json["issue"][0]["diagnostics"]
    assert b"secret" not in response.get_data() and NHS.encode() not in response.get_data()


def test_an_audit_that_cannot_be_written_means_a_500_and_no_verdict(app, loaded, monkeypatch) -> None:
    trail = app.extensions["casus"].store.audit_trail

    def disk_full(_rows: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trail._commits, "_write_batch", disk_full)
    response = loaded.get("/api/decision", query_string=GOOD, headers=bearer("ehr"))
    assert response.status_code == 500 and response.json["resourceType"] == "OperationOutcome"
    assert b"permit" not in response.get_data()


def test_an_audit_that_cannot_be_written_fails_the_service_call(app, loaded, monkeypatch) -> None:
    trail = app.extensions["casus"].store.audit_trail
    monkeypatch.setattr(trail._commits, "_write_batch", lambda _rows: (_ for _ in ()).throw(OSError(28, "disk full")))
    from fhir_adapter.decision import DecisionRequest, Recipient

    with pytest.raises(AuditWriteFailed):
        app.extensions["casus"].decide(DecisionRequest(NHS, Recipient(role="mother"), ("attendance",), "TREAT"), actor="x")


def test_a_change_of_the_form_changes_the_next_answer_at_once(loaded) -> None:
    assert loaded.get("/api/decision", query_string=GOOD, headers=bearer("ehr")).json["decision"] == "permit"
    changed = example_form()
    changed["people"][0] = {"id": "mum", "name": "Pat Example", "role": "mother", "sharing": "do-not-share"}
    assert loaded.put(f"/api/forms/{changed['formId']}", json=changed, headers={**bearer("clinician"), "If-Match": 'W/"1"'}).status_code == 200
    assert loaded.get("/api/decision", query_string=GOOD, headers=bearer("ehr")).json["decision"] == "deny"


def test_a_change_made_by_another_store_on_the_same_file_changes_the_next_answer_at_once(loaded, tmp_path) -> None:
    assert loaded.get("/api/decision", query_string=GOOD, headers=bearer("ehr")).json["decision"] == "permit"
    other = ConsentService(Store.open(f"sqlite:///{tmp_path}/casus.db"))  # a second facade process or a sync run
    try:
        other.withdraw(example_form()["formId"], expected_version=1, actor="other-process")
    finally:
        other.store.close()
    answer = loaded.get("/api/decision", query_string=GOOD, headers=bearer("ehr")).json
    assert answer["decision"] == "deny" and "withdrawn" in answer["reason"]


def test_an_answer_decided_again_after_another_stores_change_has_exactly_one_audit_record(app, loaded, tmp_path) -> None:
    store = app.extensions["casus"].store
    assert loaded.get("/api/decision", query_string=GOOD, headers=bearer("ehr")).json["decision"] == "permit"  # now cached
    other = ConsentService(Store.open(f"sqlite:///{tmp_path}/casus.db"))
    try:
        other.withdraw(example_form()["formId"], expected_version=1, actor="other-process")
    finally:
        other.store.close()
    assert loaded.get("/api/decision", query_string=GOOD, headers=bearer("ehr")).json["decision"] == "deny"
    assert [r.outcome for r in store.audit_log(action="decision")] == ["deny", "permit"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
def test_a_forked_worker_process_makes_request_ids_of_its_own() -> None:
    ids = RequestIds()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the worker process: report its first id and leave at once
        os.write(write, ids.next().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    in_child = os.read(read, 64).decode()
    os.close(read)
    assert ids.next()[:16] != in_child[:16]
