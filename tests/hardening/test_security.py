"""Security checks with figures: the endpoint x token-case table, body limit, headers, no leaks, outbound TLS, CLI secrets."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from fhir_adapter.access import SCOPES, TokenGrant
from fhir_adapter.cli import DEMO_ROLES
from fhir_adapter.config import Settings, hash_token
from fhir_adapter.fhir_client import ConfigurationError, FhirClient
from fhir_adapter.server import create_app
from fhir_adapter.store import Store
from tests.hardening.conftest import MAX_BODY_BYTES, Facade
from tests.hardening.figures import FigureBook
from tests.hardening.probes import OPENAPI_PATH, is_operation_outcome, leaks_traceback
from tests.support.facade import bearer, example_form, grants

SECTION = "4. security"
EXPIRED_TOKEN = "an-expired-token-for-the-hardening-table-0123"
NARROW_TOKEN = "a-token-with-a-scope-no-route-needs-0123"
CASES: dict[str, dict[str, str]] = {
    "missing": {},
    "malformed": {"Authorization": "Basic dXNlcjpwYXNz"},
    "expired": {"Authorization": f"Bearer {EXPIRED_TOKEN}"},
    "under-scoped": {"Authorization": f"Bearer {NARROW_TOKEN}"},
}
#: The security headers docs/operators.md promises on every response.
REQUIRED_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
NOT_SERVED = (
    "/fhir/../",
    "/static/",
    "/static/../pyproject.toml",
    "/profiles/",
    "/profiles/casus-consent-form.schema.json",
    "/docs/",
    "/docs/openapi.json",
    "/.git/config",
    "/instance/casus.sqlite3",
    "/fhir/..%2f..%2fpyproject.toml",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/fhir/Consent/..%2F..%2Fetc%2Fpasswd/_history/1",
    "/api/",
    "/fhir/",
)
SECRET = "do-not-print-this-secret-token-0123456789"


def routes(app: Flask) -> Iterator[tuple[str, str, str | None]]:
    """(method, concrete path, required scope) for every route of the app."""
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("pages."):  # browser pages: sessions, not tokens (test_consent_pages)
            continue
        view = app.view_functions[rule.endpoint]
        path = re.sub(r"<(int:)?([a-z_]+)>", lambda m: "1" if m.group(1) else "x", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            yield method, path, getattr(view, "required_scope", None)


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Flask]:
    # The narrow token's scope is one no route asks for alone, so every scoped route refuses it.
    expired = TokenGrant("expired", hash_token(EXPIRED_TOKEN), frozenset(SCOPES), datetime.now(UTC) - timedelta(minutes=1))
    narrow = TokenGrant("narrow", hash_token(NARROW_TOKEN), frozenset({"validate"}))
    store = Store.open(f"sqlite:///{tmp_path / 'casus.db'}")
    yield create_app(Settings(grants=(*grants(), expired, narrow)), store=store)
    store.close()


def is_public(path: str) -> bool:
    """What any client reads before it has a token: health checks, CapabilityStatements, the SMART configuration."""
    return path.startswith("/health") or path.endswith("/metadata") or "/.well-known/" in path


def _auth_table(app: Flask) -> tuple[str, dict[tuple[str, str, str], int]]:
    client = app.test_client()
    statuses: dict[tuple[str, str, str], int] = {}
    lines = ["| endpoint | scope | " + " | ".join(CASES) + " |", "| --- | --- |" + " ---: |" * len(CASES)]
    for method, path, scope in routes(app):
        row = []
        for case, headers in CASES.items():
            # The narrow token holds 'validate', so it is under-scoped only where another scope is required.
            if case == "under-scoped" and scope in (None, "validate"):
                row.append("n/a")
                continue
            response = client.open(path, method=method, headers=headers, json={} if method in ("POST", "PUT") else None)
            statuses[(method, path, case)] = response.status_code
            row.append(str(response.status_code))
        lines.append(f"| `{method} {path}` | {scope or ('none' if is_public(path) else 'any token')} | " + " | ".join(row) + " |")
    return "\n".join(lines), statuses


def test_every_endpoint_refuses_each_bad_token_case_with_the_right_status(guarded: Flask, figures: FigureBook) -> None:
    table, statuses = _auth_table(guarded)
    figures.table("endpoint x token case -> status", table)
    # Public routes answer whatever the token; the SMART configuration is a 404 here (no authorisation server configured).
    public = {p: 404 if "/.well-known/" in p else 200 for (_, p, _) in statuses if is_public(p)}
    expected = {(m, p, c): public.get(p, 403 if c == "under-scoped" else 401) for (m, p, c) in statuses}
    wrong = {k: v for k, v in statuses.items() if v != expected[k]}
    figures.add(SECTION, "endpoint x token cases checked", len(statuses))
    figures.add(SECTION, "endpoint x token cases with the wrong status", len(wrong))
    assert statuses and not wrong, wrong


def _body_routes() -> list[tuple[str, str]]:
    document = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
    return [
        (method.upper(), re.sub(r"\{[a-z_]+\}", "x", path).replace("/versions/x", "/versions/1"))
        for path, operations in document["paths"].items()
        for method, op in operations.items()
        if isinstance(op, dict) and "requestBody" in op
    ]


@pytest.mark.parametrize(("method", "path"), _body_routes())
def test_a_body_over_the_limit_is_refused_with_413(facade: Facade, method: str, path: str, figures: FigureBook) -> None:
    body = b'{"x":"' + b"a" * MAX_BODY_BYTES + b'"}'
    response = facade.client.open(
        path, method=method, data=body, headers={**bearer("admin"), "Content-Type": "application/json", "If-Match": 'W/"1"'}
    )
    figures.add(SECTION, "oversize bodies sent", 1)
    figures.add(SECTION, "oversize bodies not refused with 413", response.status_code != 413)
    assert response.status_code == 413 and is_operation_outcome(response.data)


def test_every_route_answers_with_the_security_headers(facade: Facade, figures: FigureBook) -> None:
    client = facade.client
    missing = {}
    checked = 0
    for method, path, _scope in [*routes(facade.app), ("GET", "/no/such/route", None), ("DELETE", "/api/forms/x", None)]:
        for headers in (bearer("admin"), {}):
            response = client.open(path, method=method, headers=headers, json={} if method in ("POST", "PUT") else None)
            checked += 1
            absent = {k for k, v in REQUIRED_HEADERS.items() if response.headers.get(k) != v}
            absent |= {"Strict-Transport-Security"} - set(response.headers.keys())
            if absent:
                missing[(method, path, bool(headers))] = absent
    figures.add(SECTION, "responses checked for security headers", checked)
    figures.add(SECTION, "responses missing a security header", len(missing))
    assert not missing, missing


@pytest.mark.parametrize("path", NOT_SERVED)
def test_no_file_or_directory_is_served_outside_the_api(facade: Facade, path: str, figures: FigureBook) -> None:
    response = facade.client.get(path, headers=bearer("admin"))
    text = response.data.decode("utf-8", "replace")
    figures.add(SECTION, "directory/file probes", 1)
    figures.add(SECTION, "directory/file probes served", response.status_code != 404)
    assert response.status_code == 404 and is_operation_outcome(response.data)
    assert "[project]" not in text and "root:" not in text and "Index of" not in text and not leaks_traceback(response.data)


def test_an_internal_error_is_a_500_outcome_with_only_an_incident_id(facade: Facade, monkeypatch: pytest.MonkeyPatch, figures: FigureBook) -> None:
    form = example_form()

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"database exploded reading {form['youngPerson']['name']} at {Path(__file__)}")

    monkeypatch.setattr(facade.store, "get", broken)
    response = facade.client.get(f"/api/forms/{form['formId']}", headers=bearer("admin"))
    issues = response.json["issue"]
    figures.add(SECTION, "forced internal errors", 1)
    figures.add(SECTION, "forced internal errors leaking detail", len(issues) != 1 or "exploded" in response.data.decode())
    assert response.status_code == 500 and response.json["resourceType"] == "OperationOutcome"
    assert len(issues) == 1 and re.fullmatch(r"internal error; incident [0-9a-f]{32}", issues[0]["diagnostics"])
    assert not leaks_traceback(response.data) and form["youngPerson"]["name"] not in response.data.decode()


@pytest.mark.parametrize("url", ["http://fhir.trust.example.nhs.uk/fhir", "http://10.0.0.5/fhir", "ftp://fhir.example.org/fhir"])
def test_outbound_plain_http_to_a_remote_fhir_server_is_refused(url: str, figures: FigureBook) -> None:
    figures.add(SECTION, "insecure outbound URLs tried", 1)
    with pytest.raises(ConfigurationError):
        FhirClient(url)


class _RecordingSession:
    """Stands in for requests.Session and keeps the keyword arguments of each request."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.calls: list[dict[str, Any]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        raise ConnectionError("no network in this test")

    def close(self) -> None:
        pass


def test_outbound_tls_verification_is_on_by_default(figures: FigureBook) -> None:
    session = _RecordingSession()
    client = FhirClient("https://fhir.trust.example.nhs.uk/fhir", session=session, max_retries=0)  # type: ignore[arg-type]
    with pytest.raises(Exception):  # noqa: B017  the request never leaves; only its arguments matter
        client.capabilities()
    assert session.calls and all(call.get("verify") is True for call in session.calls)
    assert FhirClient("http://127.0.0.1:8080/fhir").verify is True  # loopback may be plain http, verification stays on
    figures.add(SECTION, "outbound requests without TLS verification", sum(call.get("verify") is not True for call in session.calls))


def _cli(*args: str, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fhir_adapter", *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize(
    "tokens",
    [
        [{"name": "ehr", "token": SECRET, "scopes": ["decision.read", "root"]}],
        [{"name": "ops", "token": SECRET, "scopes": []}],
        f'[{{"name": "ehr", "token": "{SECRET}", "scopes": ["decision.read"]',
    ],
    ids=["bad-scope", "no-scopes", "broken-json"],
)
def test_serve_refuses_bad_token_configuration_without_printing_the_token(tmp_path: Path, tokens: Any, figures: FigureBook) -> None:
    env = {
        **os.environ,
        "CASUS_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}",
        "CASUS_TOKENS": tokens if isinstance(tokens, str) else json.dumps(tokens),
    }
    env.pop("CASUS_TOKENS_FILE", None)
    result = _cli("serve", "--port", "0", env=env, timeout=60)
    printed = SECRET in result.stdout + result.stderr
    figures.add(SECTION, "CLI runs checked for secrets", 1)
    figures.add(SECTION, "CLI runs that printed a secret", printed)
    assert result.returncode == 2 and "configuration error" in result.stderr
    assert not printed and "Traceback" not in result.stderr


def test_the_demo_prints_none_of_its_tokens_nor_its_password(tmp_path: Path, figures: FigureBook) -> None:
    result = _cli("demo", "--smoke", "--port", "0", "--database", str(tmp_path / "demo.db"), env=dict(os.environ))
    tokens = [line.split("=", 1)[1] for line in (tmp_path / "demo-tokens.env").read_text().splitlines() if "=" in line]
    printed = [t for t in tokens if t in result.stdout or t in result.stderr]
    figures.add(SECTION, "CLI runs checked for secrets", 1)
    figures.add(SECTION, "CLI runs that printed a secret", len(printed))
    assert result.returncode == 0 and len(tokens) == len(DEMO_ROLES) + 1  # the bearer tokens and the consent pages' demo password
    assert not printed
