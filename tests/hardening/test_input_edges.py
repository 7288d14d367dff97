"""Inputs at the edges of what a parser accepts: each is a 400 OperationOutcome naming the problem, never a 500.

The cases are the ones that once reached code that could not take them: Python's integer conversion limit,
a lone UTF-16 surrogate that cannot be written as UTF-8, digits outside 0-9 that ``str.isdigit`` accepts,
instants that overflow when moved to UTC or UK time, repeated JSON keys read differently by different
parsers, parameters long enough to bloat the audit trail, and paths the URL map would redirect.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from fhir_adapter.facade.decisions_api import MAX_INFORMATION_TYPES, MAX_PARAMETER_CHARS
from fhir_adapter.facade.pipeline import MAX_QUERY_BYTES
from tests.hardening.conftest import Facade
from tests.hardening.figures import FigureBook
from tests.hardening.probes import is_operation_outcome, leaks_traceback, row_counter
from tests.support.facade import EXAMPLES, bearer, example_form

SECTION = "6. input edges"
QUESTION = "/api/decision?patient=9434765919&recipient-role=mother&information-type=attendance&purpose=TREAT"
FORM_ID = example_form()["formId"]
HUGE_INTEGER = "1" * 4400


def _expressions(data: bytes) -> list[str]:
    return [e for issue in json.loads(data)["issue"] for e in issue.get("expression", [])]


def _created(facade: Facade) -> None:
    assert facade.client.post("/api/forms", json=example_form(), headers=bearer("admin")).status_code == 201


def _form_with(replace: str, by: str) -> bytes:
    text = json.dumps(example_form())
    assert replace in text
    return text.replace(replace, by, 1).encode()


#: (what is wrong, method, path, headers, body, the field the answer must name; "" when it names no member)
BODY_CASES: list[tuple[str, str, str, dict[str, str], bytes, str]] = [
    ("an integer of 4,400 digits in a form", "POST", "/api/forms", {}, _form_with('"formId"', f'"n": {HUGE_INTEGER}, "formId"'), ""),
    (
        "an integer of 4,400 digits in a Consent",
        "POST",
        "/fhir/Consent/$validate",
        {},
        f'{{"resourceType": "Consent", "n": {HUGE_INTEGER}}}'.encode(),
        "",
    ),
    ("a lone surrogate in a form", "POST", "/api/forms", {}, _form_with('"Alex Example"', '"\\ud800x"'), "youngPerson.name"),
    ("a repeated key in a form", "POST", "/api/forms", {}, _form_with('"formId"', '"formId": "x", "formId"'), "formId"),
    ("NaN in a Consent", "POST", "/fhir/Consent", {}, b'{"resourceType": "Consent", "n": NaN}', ""),
]
QUERY_CASES: list[tuple[str, str, str]] = [
    ("a superscript digit in _count", "/fhir/Consent?_count=%C2%B2", "_count"),
    ("an Arabic-Indic digit in _offset", "/fhir/Consent?_offset=%D9%A3", "_offset"),
    ("a superscript digit in the audit limit", "/api/audit?limit=%C2%B2", "limit"),
    ("the first instant of year 1 as at", QUESTION + "&at=0001-01-01T00:00:00%2B00:00", "at"),
    ("the last instant of year 9999 west of UTC as at", QUESTION + "&at=9999-12-31T23:59:59-14:00", "at"),
    ("year 1 in _lastUpdated", "/fhir/Consent?_lastUpdated=gt0001-01-01T00:00:00%2B00:00", "_lastUpdated"),
    ("year 9999 west of UTC in _lastUpdated", "/fhir/Consent?_lastUpdated=lt9999-12-31T23:59:59-14:00", "_lastUpdated"),
    ("a purpose longer than a code", QUESTION.replace("purpose=TREAT", "purpose=" + "x" * (MAX_PARAMETER_CHARS + 1)), "purpose"),
]


@pytest.mark.parametrize(("case", "method", "path", "headers", "body", "field"), BODY_CASES, ids=[c[0] for c in BODY_CASES])
def test_an_edge_case_body_is_a_400_naming_the_problem_with_nothing_stored(
    facade: Facade, figures: FigureBook, case: str, method: str, path: str, headers: dict[str, str], body: bytes, field: str
) -> None:
    with row_counter(facade.url) as rows:
        before = rows.counts()
        response = facade.client.open(path, method=method, data=body, headers={**bearer("admin"), **headers, "Content-Type": "application/fhir+json"})
        after = rows.counts()
    figures.add(SECTION, "edge-case bodies sent", 1)
    figures.add(SECTION, "edge-case bodies not answered 400", response.status_code != 400)
    assert response.status_code == 400 and is_operation_outcome(response.data) and not leaks_traceback(response.data)
    assert (field in _expressions(response.data)) if field else True
    assert before == after


@pytest.mark.parametrize(("case", "path", "field"), QUERY_CASES, ids=[c[0] for c in QUERY_CASES])
def test_an_edge_case_parameter_is_a_400_naming_it(facade: Facade, figures: FigureBook, case: str, path: str, field: str) -> None:
    response = facade.client.get(path, headers=bearer("admin"))
    figures.add(SECTION, "edge-case parameters sent", 1)
    figures.add(SECTION, "edge-case parameters not answered 400", response.status_code != 400)
    assert response.status_code == 400 and is_operation_outcome(response.data)
    assert _expressions(response.data) == [field]


@pytest.mark.parametrize("header", ['W/"\u00b2"', '"\u0663"', f'W/"{"9" * 5000}"'])
def test_an_if_match_outside_the_digits_0_to_9_is_a_400_naming_it(facade: Facade, figures: FigureBook, header: str) -> None:
    _created(facade)
    response = facade.client.put(
        f"/api/forms/{FORM_ID}", json=example_form(), headers={**bearer("admin"), "If-Match": header.encode().decode("latin-1")}
    )
    figures.add(SECTION, "edge-case If-Match headers sent", 1)
    assert response.status_code == 400 and _expressions(response.data) == ["If-Match"]


@pytest.mark.parametrize("version", ["%C2%B2", "%D9%A3"])
def test_a_history_version_outside_the_digits_0_to_9_is_not_found(facade: Facade, version: str) -> None:
    _created(facade)
    for path in (f"/fhir/Consent/{FORM_ID}/_history/{version}", f"/api/forms/{FORM_ID}/versions/{version}"):
        response = facade.client.get(path, headers=bearer("admin"))
        assert response.status_code == 404 and is_operation_outcome(response.data)


def test_a_repeated_key_cannot_turn_a_withdrawal_into_consent(facade: Facade) -> None:
    _created(facade)
    body = _form_with('"status": "active"', '"status": "withdrawn", "status": "active"')
    response = facade.client.put(
        f"/api/forms/{FORM_ID}", data=body, headers={**bearer("admin"), "If-Match": 'W/"1"', "Content-Type": "application/json"}
    )
    assert response.status_code == 400 and _expressions(response.data) == ["status"]
    assert facade.client.get(f"/api/forms/{FORM_ID}", headers=bearer("admin")).json["version"] == 1


def test_a_long_query_string_is_refused_before_it_reaches_the_audit(facade: Facade, figures: FigureBook) -> None:
    response = facade.client.get(QUESTION + "&recipient-person=" + "p" * MAX_QUERY_BYTES, headers=bearer("admin"))
    audit: list[dict[str, Any]] = facade.client.get("/api/audit", headers=bearer("admin")).json["audit"]
    longest = max((len(json.dumps(record)) for record in audit), default=0)
    figures.add(SECTION, "longest audit record after an oversize query (characters)", longest)
    assert response.status_code == 414 and is_operation_outcome(response.data)
    assert not any(record["action"] == "decision" for record in audit)


def test_a_question_about_too_many_information_types_is_refused_before_it_reaches_the_audit(facade: Facade) -> None:
    context = {
        "patient": "9434765919",
        "recipientRole": "mother",
        "purpose": "TREAT",
        "informationTypes": ["attendance"] * (MAX_INFORMATION_TYPES + 1),
    }
    response = facade.client.post(
        "/cds-services/casus-consent", headers=bearer("admin"), json={"hook": "casus-consent-consult", "hookInstance": "x", "context": context}
    )
    audit = facade.client.get("/api/audit", headers=bearer("admin")).json["audit"]
    assert response.status_code == 400 and _expressions(response.data) == ["information-type"]
    assert not any(record["action"] == "decision" for record in audit)


def test_a_long_parameter_in_a_question_is_refused_before_it_reaches_the_audit(facade: Facade) -> None:
    response = facade.client.get(QUESTION.replace("purpose=TREAT", "purpose=" + "x" * 1000), headers=bearer("admin"))
    audit = facade.client.get("/api/audit", headers=bearer("admin")).json["audit"]
    assert response.status_code == 400 and not any(record["action"] == "decision" for record in audit)


@pytest.mark.parametrize("path", ["/fhir//Consent", "/api//decision", f"/fhir/Consent/{FORM_ID}//_history"])
def test_a_path_with_an_empty_segment_needs_a_token_and_then_is_a_404_outcome(facade: Facade, figures: FigureBook, path: str) -> None:
    anonymous = facade.client.get(path)
    known = facade.client.get(path, headers=bearer("admin"))
    figures.add(SECTION, "odd paths answered with a redirect", anonymous.status_code in (301, 302, 307, 308))
    assert anonymous.status_code == 401 and is_operation_outcome(anonymous.data) and "Location" not in anonymous.headers
    assert known.status_code == 404 and is_operation_outcome(known.data) and "Location" not in known.headers


def test_links_never_follow_the_host_header_without_a_public_base_url(facade: Facade) -> None:
    consent = json.loads((EXAMPLES / "Consent-casus-example-withdrawn.json").read_text(encoding="utf-8"))
    consent.pop("id")
    headers = {**bearer("admin"), "Host": "attacker.example"}
    created = facade.client.post("/fhir/Consent", json=consent, headers=headers)
    found = facade.client.get("/fhir/Consent?_count=1", headers=headers).json
    urls = [link["url"] for link in found["link"]] + [entry["fullUrl"] for entry in found["entry"]]
    assert created.status_code == 201 and created.headers["Location"].startswith("/fhir/Consent/")
    assert urls and all(url.startswith("/fhir/Consent") for url in urls) and "attacker.example" not in json.dumps(found)


def test_puts_without_if_match_from_many_clients_never_get_412(facade: Facade, figures: FigureBook) -> None:
    _created(facade)
    consent = facade.client.get(f"/fhir/Consent/{FORM_ID}", headers=bearer("admin")).json
    statuses: list[int] = []
    lock = threading.Lock()

    def writer() -> None:
        for _ in range(10):
            status = facade.client.put(f"/fhir/Consent/{FORM_ID}", json=consent, headers=bearer("admin")).status_code
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=writer) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    figures.add(SECTION, "PUTs without If-Match from 10 clients", len(statuses))
    figures.add(SECTION, "... answered 412", statuses.count(412))
    figures.add(SECTION, "... answered 409 (still changing after five tries)", statuses.count(409))
    assert len(statuses) == 100 and set(statuses) <= {200, 409}
