"""Every guarded endpoint refuses a missing, malformed, unknown, expired or under-scoped bearer token.

The public ones are health, the CapabilityStatements and the SMART configuration.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from fhir_adapter.access import SCOPES, TokenGrant, authenticate
from fhir_adapter.config import ConfigurationError, Settings, hash_token, parse_grants
from fhir_adapter.server import create_app
from tests.support.facade import grants

EXPIRED = "an-expired-token-0123456789"


def _routes(app):
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("pages."):  # browser pages: sessions, not tokens (test_consent_pages)
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            path = re.sub(r"<(?:int:)?([a-z_]+)>", lambda m: "1" if "int:" in m.group(0) else "x", rule.rule)
            yield method, path, app.view_functions[rule.endpoint]


@pytest.fixture
def guarded_app(store):
    expired = TokenGrant("expired", hash_token(EXPIRED), frozenset(SCOPES), datetime.now(UTC) - timedelta(minutes=1))
    return create_app(Settings(grants=(*grants(), expired)), store=store)


CASES = {
    "missing": {},
    "malformed": {"Authorization": "Basic dXNlcjpwYXNz"},
    "empty-bearer": {"Authorization": "Bearer "},
    "unknown": {"Authorization": "Bearer not-a-configured-token"},
    "expired": {"Authorization": f"Bearer {EXPIRED}"},
}


def test_every_guarded_endpoint_refuses_every_bad_token_with_401(guarded_app):
    client = guarded_app.test_client()
    table = {}
    for method, path, view in _routes(guarded_app):
        if not hasattr(view, "required_scope"):
            assert path.startswith("/health") or path.endswith("/metadata") or "/.well-known/" in path
            continue
        for case, headers in CASES.items():
            response = client.open(path, method=method, headers=headers, json={} if method in ("POST", "PUT") else None)
            table[(method, path, case)] = (response.status_code, response.json["resourceType"], "WWW-Authenticate" in response.headers)
    assert table and all(v == (401, "OperationOutcome", True) for v in table.values()), {k: v for k, v in table.items() if v[0] != 401}


def test_every_scoped_endpoint_refuses_a_token_without_its_scope_with_403(guarded_app):
    client = guarded_app.test_client()
    refused = {}
    for method, path, view in _routes(guarded_app):
        scope = getattr(view, "required_scope", None)
        if path.startswith("/health") or scope is None:
            continue
        other = next(s for s in sorted(SCOPES) if s not in (scope, "admin"))
        token = f"token-with-only-{other}"
        app_grants = (TokenGrant("narrow", hash_token(token), frozenset({other})),)
        guarded_app.config["CASUS_GRANTS"] = app_grants
        response = client.open(path, method=method, headers={"Authorization": f"Bearer {token}"}, json={} if method in ("POST", "PUT") else None)
        refused[(method, path)] = response.status_code
    assert refused and set(refused.values()) == {403}, refused


def test_health_endpoints_need_no_token_and_reveal_nothing(client):
    assert client.get("/health/live").json == {"status": "ok"}
    assert client.get("/health/ready").json == {"status": "ready"}


def test_responses_carry_security_headers(client):
    headers = client.get("/health/live").headers
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]


def test_an_admin_token_may_do_everything():
    admin = TokenGrant("admin", hash_token("admin-token"), frozenset({"admin"}))
    principal = authenticate("Bearer admin-token", (admin,), datetime.now(UTC))
    assert all(principal.may(scope) for scope in SCOPES)


def test_tokens_are_configured_by_hash_or_plain_text_never_kept_plain():
    grants_ = parse_grants(
        [{"name": "ehr", "token": "s3cret", "scopes": ["decision.read"]}, {"name": "ops", "token_sha256": hash_token("other"), "scopes": ["admin"]}]
    )
    assert all("s3cret" not in repr(g) for g in grants_)
    assert authenticate("Bearer s3cret", grants_, datetime.now(UTC)).name == "ehr"


@pytest.mark.parametrize(
    "entries",
    [
        {"name": "x"},
        [{"name": "x", "token": "t", "scopes": ["root"]}],
        [{"name": "x", "scopes": ["admin"]}],
        [{"name": "x", "token": "t", "scopes": ["admin"], "expires_at": "tomorrow"}],
    ],
)
def test_bad_token_configuration_is_refused_without_echoing_secrets(entries):
    with pytest.raises(ConfigurationError) as err:
        parse_grants(entries)
    assert "t'" not in str(err.value).replace("'x'", "")


def test_a_non_numeric_body_limit_is_a_configuration_error_not_a_crash():
    with pytest.raises(ConfigurationError, match="CASUS_MAX_BODY_BYTES"):
        Settings.from_env({"CASUS_MAX_BODY_BYTES": "lots"})
