"""GET /api/decision answered outside Flask's dispatch: the same bytes, headers and audit as through Flask.

Each request below is sent twice to one app: through the fast path (``app.wsgi_app``, what every caller
gets) and straight to Flask (``app.wsgi_app.fallback``, where the fast path hands over).  The answers must
be identical apart from the per-request id.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from werkzeug.test import Client

from fhir_adapter.consent_service import ConsentService
from fhir_adapter.facade.decision_fast_path import DecisionFastPath
from fhir_adapter.store import Store
from tests.support.facade import TOKENS, bearer, example_form

NHS = "9434765919"
GOOD = {"patient": NHS, "purpose": "TREAT", "recipient-role": "mother", "information-type": "attendance"}
PER_REQUEST = {"X-Request-ID", "Date"}


@pytest.fixture
def loaded(client):
    assert client.post("/api/forms", json=example_form(), headers=bearer("clinician")).status_code == 201
    return client


def both(app, query: dict[str, Any] | str, headers: dict[str, str] | None = None, method: str = "GET",
         path: str = "/api/decision") -> tuple[Any, Any]:
    """The response through the fast path and through Flask alone, for the same request."""
    query_string = query if isinstance(query, str) else urlencode(query, doseq=True)
    fast_path = app.wsgi_app
    assert isinstance(fast_path, DecisionFastPath)
    answers = []
    for wsgi in (fast_path, fast_path.fallback):
        answers.append(Client(wsgi).open(path, method=method, query_string=query_string, headers=headers or {}))
    return answers[0], answers[1]


def same(fast, flask) -> None:
    assert fast.status == flask.status
    assert fast.get_data() == flask.get_data()
    assert [(k, v) for k, v in fast.headers.items() if k not in PER_REQUEST] == \
           [(k, v) for k, v in flask.headers.items() if k not in PER_REQUEST]


def decisions_audited(store: Store) -> int:
    return sum(1 for r in store.audit_log(limit=1000) if r.action == "decision")


@pytest.mark.parametrize("query", [
    GOOD,
    {**GOOD, "recipient-role": "father"},
    {**GOOD, "information-type": ["attendance", "medication"]},
    {**GOOD, "information-type": "attendance,medication"},
    {**GOOD, "purpose": "THREAT"},
    {**GOOD, "purpose": "HMARKT"},
    {**GOOD, "patient": "4010232137"},
    {**GOOD, "patient": f"https://fhir.nhs.uk/Id/nhs-number|{NHS}"},
    {**GOOD, "recipient-role": None, "recipient-identifier": "https://fhir.hl7.org.uk/Id/gmc-number|1234567"},
    {**GOOD, "at": "2020-01-01T00:00:00Z"},
    {**GOOD, "at": "2030-06-01T12:00:00+01:00"},
    {**GOOD, "_format": "fhir"},
], ids=lambda q: "&".join(f"{k}={v}" for k, v in q.items() if v is not None and k not in ("patient", "purpose")) or "plain")
def test_a_verdict_is_the_same_through_the_fast_path_and_through_flask(app, loaded, query) -> None:
    query = {k: v for k, v in query.items() if v is not None}
    fast, flask = both(app, query, bearer("ehr"))
    assert fast.status_code == 200
    same(fast, flask)


def test_an_accept_header_asking_for_fhir_gets_the_same_parameters_resource(app, loaded) -> None:
    fast, flask = both(app, GOOD, {**bearer("ehr"), "Accept": "application/fhir+json"})
    assert fast.json["resourceType"] == "Parameters"
    same(fast, flask)


@pytest.mark.parametrize("query", [
    {},
    {**GOOD, "patient": "9434765918"},
    {**GOOD, "information-type": "everything"},
    {**GOOD, "recipient-role": "aunt"},
    {**GOOD, "recipient-role": None},
    {**GOOD, "at": "yesterday"},
    {**GOOD, "at": "2026-01-01T00:00:00"},
    {**GOOD, "recipient-identifier": "no-separator"},
    {**GOOD, "purpose": ""},
], ids=["empty", "bad-check-digit", "unknown-type", "unknown-role", "no-recipient", "bad-at", "at-without-zone",
        "bad-identifier", "empty-purpose"])
def test_a_bad_question_gets_flasks_own_400_and_nothing_is_audited(app, store, loaded, query) -> None:
    query = {k: v for k, v in query.items() if v is not None}
    fast, flask = both(app, query, bearer("ehr"))
    assert fast.status_code == 400 and fast.json["resourceType"] == "OperationOutcome"
    same(fast, flask)
    assert decisions_audited(store) == 0


@pytest.mark.parametrize("headers, status", [
    ({}, 401),
    ({"Authorization": "Bearer not-a-known-token-0123456789"}, 401),
    ({"Authorization": f"Basic {TOKENS['ehr']}"}, 401),
    (bearer("engineer"), 403),
], ids=["no-token", "unknown-token", "wrong-scheme", "missing-scope"])
def test_a_refused_token_gets_flasks_own_answer_and_nothing_is_audited(app, store, loaded, headers, status) -> None:
    fast, flask = both(app, GOOD, headers)
    assert fast.status_code == status
    same(fast, flask)
    assert decisions_audited(store) == 0


@pytest.mark.parametrize("method, path", [("HEAD", "/api/decision"), ("POST", "/api/decision"), ("GET", "/api/decision/")])
def test_other_methods_and_paths_are_left_to_flask(app, loaded, method, path) -> None:
    fast, flask = both(app, GOOD, bearer("ehr"), method=method, path=path)
    same(fast, flask)


def test_each_answered_question_is_audited_exactly_once(app, store, loaded) -> None:
    fast, flask = both(app, GOOD, bearer("ehr"))
    assert (fast.status_code, flask.status_code) == (200, 200)
    assert decisions_audited(store) == 2


def test_a_caller_request_id_is_echoed_and_one_is_made_up_otherwise(app, loaded) -> None:
    client = Client(app.wsgi_app)
    given = client.get("/api/decision", query_string=GOOD, headers={**bearer("ehr"), "X-Request-ID": "ehr-trace-42"})
    made_up = [client.get("/api/decision", query_string=GOOD, headers=bearer("ehr")).headers["X-Request-ID"] for _ in range(2)]
    assert given.headers["X-Request-ID"] == "ehr-trace-42"
    assert all(len(r) == 32 and int(r, 16) >= 0 for r in made_up) and made_up[0] != made_up[1]


def test_an_unexpected_failure_is_a_500_outcome_with_an_incident_id_and_no_detail(app, loaded, monkeypatch) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("patient 9434765919 secret detail")

    monkeypatch.setattr(app.extensions["casus"], "decide", broken)
    response = Client(app.wsgi_app).get("/api/decision", query_string=GOOD, headers=bearer("ehr"))
    assert response.status_code == 500
    assert response.headers["Content-Type"] == "application/fhir+json; charset=utf-8"
    assert "incident" in response.json["issue"][0]["diagnostics"]
    assert b"secret" not in response.get_data() and NHS.encode() not in response.get_data()


def test_an_audit_that_cannot_be_written_means_no_answer(app, loaded, monkeypatch) -> None:
    from fhir_adapter import audit_journal

    def disk_full(self: Any, line: bytes) -> None:
        raise OSError(28, "No space left on device")

    store = app.extensions["casus"].store
    store.audit(actor="warm-up", action="test", resource=None, outcome="ok")  # the journal is open
    monkeypatch.setattr(audit_journal._Segment, "append", disk_full)
    response = Client(app.wsgi_app).get("/api/decision", query_string=GOOD, headers=bearer("ehr"))
    assert response.status_code == 500 and response.json["resourceType"] == "OperationOutcome"
    assert b"permit" not in response.get_data()


def test_a_reused_verdict_follows_a_change_of_the_form_at_once(app, loaded) -> None:
    client = Client(app.wsgi_app)
    assert client.get("/api/decision", query_string=GOOD, headers=bearer("ehr")).json["decision"] == "permit"
    changed = example_form()
    changed["people"][0] = {"id": "mum", "name": "Pat Example", "role": "mother", "sharing": "do-not-share"}
    assert loaded.put(f"/api/forms/{changed['formId']}", json=changed,
                      headers={**bearer("clinician"), "If-Match": 'W/"1"'}).status_code == 200
    assert client.get("/api/decision", query_string=GOOD, headers=bearer("ehr")).json["decision"] == "deny"


def test_a_reused_verdict_follows_a_change_made_by_another_store_on_the_same_file(app, store, loaded, tmp_path) -> None:
    client = Client(app.wsgi_app)
    assert client.get("/api/decision", query_string=GOOD, headers=bearer("ehr")).json["decision"] == "permit"
    other = ConsentService(Store.open(f"sqlite:///{tmp_path}/casus.db"))  # a second facade process or a sync run
    try:
        other.withdraw(example_form()["formId"], expected_version=1, actor="other-process")
    finally:
        other.store.close()
    answer = client.get("/api/decision", query_string=GOOD, headers=bearer("ehr")).json
    assert answer["decision"] == "deny" and "withdrawn" in answer["reason"]


def test_a_reused_verdict_is_not_reused_on_another_day(app, loaded, monkeypatch) -> None:
    service = app.extensions["casus"]
    real_clock = service.clock
    first = Client(app.wsgi_app).get("/api/decision", query_string=GOOD, headers=bearer("ehr")).json
    monkeypatch.setattr(service, "clock", lambda: real_clock() + timedelta(days=1))
    second = Client(app.wsgi_app).get("/api/decision", query_string=GOOD, headers=bearer("ehr")).json
    assert first["reason"] != second["reason"]  # each names the day it is about


def test_the_fast_path_reads_the_tokens_where_flask_does(app, loaded) -> None:
    app.config["CASUS_GRANTS"] = ()  # e.g. every token revoked
    fast, flask = both(app, GOOD, bearer("ehr"))
    assert fast.status_code == 401
    same(fast, flask)
