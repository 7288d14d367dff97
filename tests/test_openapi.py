"""docs/openapi.json is the facade's contract: valid OpenAPI 3.1, true to the routes, scopes and answers the app really has.

The document is hand-maintained, so these tests are what keeps it honest:
every Flask route is documented and every documented operation exists, each
operation's scope is the one its view enforces, the request schemas are the
profile files themselves (by relative ``$ref``, never a drifting copy), and
real answers conform to the documented response schemas.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable
from referencing.jsonschema import DRAFT202012

from fhir_adapter.access import SCOPES, TokenGrant
from fhir_adapter.config import Settings, hash_token
from fhir_adapter.facade import fhir_rest
from fhir_adapter.server import create_app
from fhir_adapter.store import Store

REPO = Path(__file__).resolve().parent.parent
OPENAPI_FILE = REPO / "docs" / "openapi.json"
PROFILES = REPO / "profiles"
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "patch", "head", "options", "trace"})
IGNORED_METHODS = frozenset({"HEAD", "OPTIONS"})
TOKEN = "openapi-test-token-0123456789abcdef"
VALID_NHS_NUMBER = "9434765919"
Operation = tuple[str, str]  # (OpenAPI path, lower-case method)


# --------------------------------------------------------------------------- fixtures and small pure functions


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return json.loads(OPENAPI_FILE.read_text(encoding="utf-8"))


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    """The app with no grants on a fresh SQLite store: the routes alone, as the OpenAPI document describes them."""
    store = Store.open(f"sqlite:///{tmp_path}/x.db")
    yield create_app(Settings(grants=()), store=store)
    store.close()


@pytest.fixture
def client(tmp_path: Path) -> Iterator[FlaskClient]:
    """An app with one token holding every scope, for the tests that make requests."""
    store = Store.open(f"sqlite:///{tmp_path}/served.db")
    grant = TokenGrant("openapi-test", hash_token(TOKEN), frozenset(SCOPES))
    yield create_app(Settings(grants=(grant,)), store=store).test_client()
    store.close()


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def openapi_path(rule: str) -> str:
    """Werkzeug's rule syntax in OpenAPI's: ``<form_id>`` and ``<int:version>`` become ``{form_id}`` and ``{version}``."""
    return re.sub(r"<(?:[^<>:]+:)?([^<>:]+)>", r"{\1}", rule)


def app_operations(app: Flask) -> dict[Operation, Any]:
    """Every (path, method) the app routes, with its view function; static files and HEAD/OPTIONS left out."""
    found: dict[Operation, Any] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("pages."):  # browser pages: sessions, not tokens (test_consent_pages)
            continue
        for method in sorted((rule.methods or set()) - IGNORED_METHODS):
            found[(openapi_path(rule.rule), method.lower())] = app.view_functions[rule.endpoint]
    return found


def documented_operations(document: dict[str, Any]) -> dict[Operation, dict[str, Any]]:
    return {(path, method): op for path, item in document["paths"].items() for method, op in item.items() if method in HTTP_METHODS}


def registry() -> Registry:
    """The document and the profile schemas under their file URIs; anything else (e.g. the web) is refused, never fetched."""

    def refuse(uri: str) -> Resource:
        raise NoSuchResource(ref=uri)

    files = [OPENAPI_FILE, *PROFILES.glob("*.schema.json")]
    resources = [(path.resolve().as_uri(), DRAFT202012.create_resource(json.loads(path.read_text(encoding="utf-8")))) for path in files]
    return Registry(retrieve=refuse).with_resources(resources)  # type: ignore[call-arg]


def schema_validator(pointer: str) -> Draft202012Validator:
    """A validator for the schema at ``pointer`` in the document, resolving its $refs as a client reading the file would."""
    return Draft202012Validator({"$ref": f"{OPENAPI_FILE.resolve().as_uri()}#{pointer}"}, registry=registry())


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def decision_query() -> dict[str, str]:
    """A complete, valid decision question (no consent is on file, so the answer is a deny)."""
    return {"patient": VALID_NHS_NUMBER, "recipient-role": "parent", "information-type": "attendance", "purpose": "TREAT"}


# --------------------------------------------------------------------------- (1) a valid OpenAPI 3.1 document


def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    validate_openapi(document, base_uri=OPENAPI_FILE.resolve().as_uri())


def test_every_reference_resolves_without_leaving_the_repository(document: dict[str, Any]) -> None:
    resolver = registry().resolver(base_uri=OPENAPI_FILE.resolve().as_uri())
    unresolved = []
    for ref in sorted(set(refs(document))):
        try:
            resolver.lookup(ref)
        except Unresolvable as exc:
            unresolved.append(f"{ref}: {type(exc).__name__}")
    assert unresolved == []


def test_form_and_disclosure_bodies_are_the_profile_schemas_by_reference_not_copies(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert schemas["ConsentForm"] == {"$ref": "../profiles/casus-consent-form.schema.json"}
    assert schemas["Disclosure"] == {"$ref": "../profiles/casus-disclosure.schema.json"}


def test_form_request_body_accepts_the_example_forms_and_refuses_a_broken_one(document: dict[str, Any]) -> None:
    validator = schema_validator("/components/requestBodies/ConsentForm/content/application~1json/schema")
    examples = sorted((PROFILES / "examples").glob("form-*.json"))
    assert examples
    for path in examples:
        assert list(validator.iter_errors(json.loads(path.read_text(encoding="utf-8")))) == [], path.name
    broken = json.loads(examples[0].read_text(encoding="utf-8"))
    broken["status"] = "not-a-status"
    assert not validator.is_valid(broken)


# --------------------------------------------------------------------------- (2) route coverage, both ways


def test_every_route_is_documented(app: Flask, document: dict[str, Any]) -> None:
    undocumented = sorted(set(app_operations(app)) - set(documented_operations(document)))
    assert undocumented == []


def test_every_documented_operation_is_a_route(app: Flask, document: dict[str, Any]) -> None:
    unrouted = sorted(set(documented_operations(document)) - set(app_operations(app)))
    assert unrouted == []


def test_operation_ids_are_unique(document: dict[str, Any]) -> None:
    ids = [op["operationId"] for op in documented_operations(document).values()]
    assert len(ids) == len(set(ids))


# --------------------------------------------------------------------------- (3) security and scopes


def is_public(path: str) -> bool:
    """The health checks, the CapabilityStatements and the SMART configuration: what any client reads before it has a token."""
    return path.startswith("/health/") or path.endswith("/metadata") or "/.well-known/" in path


def test_only_the_public_routes_are_unguarded_and_documented_without_security(app: Flask, document: dict[str, Any]) -> None:
    ops = documented_operations(document)
    unguarded = {key for key, view in app_operations(app).items() if not hasattr(view, "required_scope")}
    assert unguarded == {key for key in ops if is_public(key[0])}
    assert all(ops[key]["security"] == [] for key in unguarded)


def test_every_guarded_operation_declares_bearer_security_with_its_views_scope(app: Flask, document: dict[str, Any]) -> None:
    ops = documented_operations(document)
    wrong = []
    for key, view in app_operations(app).items():
        if is_public(key[0]):
            continue
        scope = view.required_scope
        op = ops[key]
        if op.get("x-required-scope", "<missing>") != scope or op.get("security") != [{"bearer": [scope] if scope else []}]:
            wrong.append(f"{key}: view needs {scope!r}, document says {op.get('x-required-scope', '<missing>')!r} / {op.get('security')}")
    assert wrong == []


def test_bearer_scheme_is_http_bearer(document: dict[str, Any]) -> None:
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")


def test_every_guarded_operation_documents_401_and_scoped_ones_403_as_operation_outcomes(document: dict[str, Any]) -> None:
    outcome = {"$ref": "#/components/schemas/OperationOutcome"}
    responses = document["components"]["responses"]
    missing = []
    for key, op in documented_operations(document).items():
        if is_public(key[0]):
            continue
        expected = ["401", "403"] if op["x-required-scope"] else ["401"]
        for status in expected:
            name = op["responses"].get(status, {}).get("$ref", "").rpartition("/")[2]
            if responses.get(name, {}).get("content", {}).get("application/fhir+json", {}).get("schema") != outcome:
                missing.append(f"{key} {status}")
    assert missing == []


# --------------------------------------------------------------------------- parameters agree with the code


def test_fhir_search_documents_exactly_the_parameters_the_server_accepts(document: dict[str, Any]) -> None:
    components = document["components"]["parameters"]
    for base in ("/fhir", "/fhir/R4", "/fhir/R5"):
        names = {components[p["$ref"].rpartition("/")[2]]["name"] for p in document["paths"][f"{base}/Consent"]["get"]["parameters"]}
        assert names == fhir_rest.SEARCH_PARAMS, base


def test_fhir_search_status_values_are_the_servers(document: dict[str, Any]) -> None:
    assert set(document["components"]["parameters"]["SearchStatus"]["schema"]["enum"]) == set(fhir_rest.STATUS_TO_FORM)


def test_each_documented_required_decision_parameter_is_refused_when_missing(client: FlaskClient, document: dict[str, Any]) -> None:
    components = document["components"]["parameters"]
    params = [components[p["$ref"].rpartition("/")[2]] for p in document["paths"]["/api/decision"]["get"]["parameters"]]
    required = [p["name"] for p in params if p.get("required")]
    assert required
    assert client.get("/api/decision", query_string=decision_query(), headers=auth()).status_code == 200
    for name in required:
        query = {k: v for k, v in decision_query().items() if k != name}
        answer = client.get("/api/decision", query_string=query, headers=auth())
        assert (answer.status_code, answer.get_json()["issue"][0]["expression"]) == (400, [name])


# --------------------------------------------------------------------------- real answers conform to the documented schemas


def test_decision_json_answer_conforms_to_the_documented_schema(client: FlaskClient) -> None:
    answer = client.get("/api/decision", query_string=decision_query(), headers=auth())
    validator = schema_validator("/paths/~1api~1decision/get/responses/200/content/application~1json/schema")
    assert list(validator.iter_errors(answer.get_json())) == []


def test_decision_fhir_answer_conforms_to_the_documented_parameters_schema(client: FlaskClient) -> None:
    answer = client.get("/api/decision", query_string={**decision_query(), "_format": "fhir"}, headers=auth())
    validator = schema_validator("/paths/~1api~1decision/get/responses/200/content/application~1fhir+json/schema")
    assert answer.mimetype == "application/fhir+json"
    assert list(validator.iter_errors(answer.get_json())) == []


def test_an_unauthenticated_answer_conforms_to_the_documented_401(client: FlaskClient) -> None:
    answer = client.get("/api/decision", query_string=decision_query())
    validator = schema_validator("/components/responses/Unauthorized/content/application~1fhir+json/schema")
    assert answer.status_code == 401
    assert "WWW-Authenticate" in answer.headers
    assert list(validator.iter_errors(answer.get_json())) == []


# --------------------------------------------------------------------------- (4) the served document is the file


def test_served_document_equals_the_file(client: FlaskClient, document: dict[str, Any]) -> None:
    answer = client.get("/openapi.json", headers=auth())
    assert answer.status_code == 200
    assert answer.get_json() == document
