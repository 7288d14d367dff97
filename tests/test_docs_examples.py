"""Every request/response example in the EHR integrators' and integration engineers' guides gets the response shown.

The doc marks an example as a fenced block whose info string is ``http request``, followed by one whose info
string is ``http response``.  The request block is ``METHOD PATH``, header lines, a blank line and an
optional JSON body; ``Bearer <ehr token>`` (likewise clinician, engineer, admin) stands for the token of that
demo role.  The response block is ``HTTP/1.1 <status> <text>``, the headers to check, a blank line and the
JSON to check.  A response is checked by what it shows: an object's keys shown must be there with the values
shown (keys not shown are not checked), a list must have the items shown in order (and no others, unless its
last item is ``"<and more>"``), and a string written as ``<something>`` (an id, a time, an ETag) matches any
value that is present.

The examples run in order against one app on a fresh SQLite store holding the four sample forms that
``make demo`` loads, so a later example can use what an earlier one created.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.support.facade import TOKENS, bearer, example_form

DOCS_DIR = Path(__file__).resolve().parent.parent / "docs"
DOC = DOCS_DIR / "ehr-integrators.md"
DOCS_WITH_EXAMPLES = ("ehr-integrators.md", "integration-engineers.md")
SAMPLE_FORMS = ("competent-under-16", "aged-16-17-professional", "parental-responsibility", "withdrawn")
FENCE = re.compile(r"^```http (request|response)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
SECTION = re.compile(r"^## (.+)$", re.MULTILINE)
PLACEHOLDER = re.compile(r"^<[^<>]+>$")
MORE = "<and more>"
TOKEN = re.compile(r"Bearer <(\w+) token>")


@dataclass(frozen=True)
class Example:
    doc: str
    section: str
    line: int
    request: str
    response: str

    @property
    def label(self) -> str:
        return f"{self.doc}:{self.line} ({self.section}) {self.request.splitlines()[0]}"


def examples(text: str, doc: str = DOC.name) -> list[Example]:
    """The request/response pairs in document order; a request without its response is an error in the doc."""
    sections = [(m.start(), m.group(1)) for m in SECTION.finditer(text)]
    found: list[Example] = []
    pending: tuple[int, str] | None = None
    for match in FENCE.finditer(text):
        kind, body = match.group(1), match.group(2)
        if kind == "request":
            assert pending is None, f"line {text.count(chr(10), 0, match.start()) + 1}: a request follows a request with no response"
            pending = (match.start(), body)
            continue
        assert pending is not None, f"line {text.count(chr(10), 0, match.start()) + 1}: a response with no request before it"
        start, request = pending
        section = next((name for at, name in reversed(sections) if at < start), "")
        found.append(Example(doc, section, text.count("\n", 0, start) + 1, request, body))
        pending = None
    assert pending is None, "the last request has no response"
    return found


def _head_and_body(block: str) -> tuple[list[str], str]:
    head, _, body = block.partition("\n\n")
    return head.splitlines(), body.strip()


def _headers(lines: list[str]) -> dict[str, str]:
    return {name.strip(): value.strip() for name, _, value in (line.partition(":") for line in lines)}


def matches(shown: Any, actual: Any, where: str = "$") -> list[str]:
    """Where ``actual`` differs from what the doc shows (see the module docstring for the rules)."""
    if isinstance(shown, str) and PLACEHOLDER.match(shown):
        return [] if actual is not None else [f"{where}: missing"]
    if isinstance(shown, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected an object, got {type(actual).__name__}"]
        problems = []
        for key, value in shown.items():
            if key not in actual:
                problems.append(f"{where}.{key}: missing")
            else:
                problems += matches(value, actual[key], f"{where}.{key}")
        return problems
    if isinstance(shown, list):
        if shown and shown[-1] == MORE and isinstance(actual, list):
            shown, actual = shown[:-1], actual[: len(shown) - 1]
        if not isinstance(actual, list) or len(actual) != len(shown):
            return [f"{where}: expected a list of {len(shown)}, got {actual!r}"[:300]]
        return [p for n, (s, a) in enumerate(zip(shown, actual, strict=True)) for p in matches(s, a, f"{where}[{n}]")]
    return [] if shown == actual else [f"{where}: expected {shown!r}, got {actual!r}"[:300]]


def send(client: FlaskClient, example: Example) -> list[str]:
    """Send one example's request and list how the answer differs from the response shown."""
    request_head, request_body = _head_and_body(example.request)
    method, path = request_head[0].split()[:2]
    headers = {name: TOKEN.sub(lambda m: f"Bearer {TOKENS[m.group(1)]}", value) for name, value in _headers(request_head[1:]).items()}
    response = client.open(path, method=method, headers=headers, data=request_body.encode() if request_body else None)

    response_head, response_body = _head_and_body(example.response)
    problems = []
    status = int(response_head[0].split()[1])
    if response.status_code != status:
        problems.append(f"status {response.status_code}, the doc shows {status}: {response.get_data(as_text=True)[:300]}")
    for name, value in _headers(response_head[1:]).items():
        got = response.headers.get(name)
        if got is None:
            problems.append(f"header {name} missing")
        elif not PLACEHOLDER.match(value) and got.split(";")[0].strip() != value and got != value:
            problems.append(f"header {name}: {got!r}, the doc shows {value!r}")
    if response_body:
        problems += matches(json.loads(response_body), response.get_json(force=True, silent=True))
    return problems


@pytest.fixture
def demo_client(client: FlaskClient) -> FlaskClient:
    for name in SAMPLE_FORMS:
        assert client.post("/api/forms", json=example_form(name), headers=bearer("clinician")).status_code == 201
    return client


@pytest.mark.parametrize("doc", DOCS_WITH_EXAMPLES)
def test_every_request_example_in_the_guide_gets_the_response_shown(demo_client: FlaskClient, doc: str) -> None:
    found = examples((DOCS_DIR / doc).read_text(encoding="utf-8"), doc)
    assert found, f"no examples found in {doc}"
    failures = {example.label: problems for example in found if (problems := send(demo_client, example))}
    assert not failures, json.dumps(failures, indent=1)


def test_every_section_of_the_ehr_integrators_guide_that_describes_an_endpoint_has_an_example() -> None:
    text = DOC.read_text(encoding="utf-8")
    with_examples = {example.section for example in examples(text)}
    endpoint_sections = {m.group(1) for m in SECTION.finditer(text)} - {"Reading this guide", "Errors"}
    assert endpoint_sections <= with_examples, sorted(endpoint_sections - with_examples)


def test_a_response_shown_is_checked_by_what_it_shows() -> None:
    actual = {"decision": "permit", "consent": {"reference": "Consent/x/_history/1", "version": 1}, "flags": [], "extra": 1}
    assert matches({"decision": "permit", "consent": {"reference": "<reference>"}, "flags": []}, actual) == []
    assert matches({"decision": "deny"}, actual) == ["$.decision: expected 'deny', got 'permit'"]
    assert matches({"missing": "<any>"}, actual) == ["$.missing: missing"]
    assert matches({"flags": ["review-due-turned-16"]}, actual) != []
    assert matches([1, MORE], [1, 2, 3]) == [] and matches([2, MORE], [1, 2]) != [] and matches([1, 2, MORE], [1]) != []
