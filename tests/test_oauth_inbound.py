"""OAuth 2.0 access tokens (SMART Backend Services) from a real token issuer on 127.0.0.1, beside the static tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from flask import Flask
from flask.testing import FlaskClient

from fhir_adapter.config import ConfigurationError, Settings
from fhir_adapter.oauth_tokens import OAuthSettings
from fhir_adapter.server import create_app
from fhir_adapter.store import Store
from tests.support.facade import bearer, example_form, grants
from tests.support.token_issuer import AUDIENCE, TokenIssuer, new_key, start_token_issuer

FORM_ID = example_form()["formId"]
#: How soon the adapter may refetch the JWKS for an unknown key id, in these tests (the default is 5 s).
REFRESH_SECONDS = 1.0
QUESTION = "/api/decision?patient=9434765919&recipient-role=mother&information-type=attendance&purpose=TREAT"


@pytest.fixture
def token_issuer() -> Iterator[TokenIssuer]:
    issuer, server = start_token_issuer()
    try:
        yield issuer
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def app(tmp_path: Path, token_issuer: TokenIssuer) -> Iterator[Flask]:
    store = Store.open(f"sqlite:///{tmp_path}/oauth.db")
    oauth = OAuthSettings(
        issuer=token_issuer.issuer,
        audience=AUDIENCE,
        jwks_url=token_issuer.jwks_url,
        token_endpoint=f"{token_issuer.base_url}/token",
        jwks_min_refresh_seconds=REFRESH_SECONDS,
    )
    application = create_app(Settings(grants=grants(), oauth=oauth), store=store)
    assert application.test_client().post("/api/forms", json=example_form(), headers=bearer("admin")).status_code == 201
    yield application
    store.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def _with(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_valid_access_token_reads_and_is_audited_under_its_client(client: FlaskClient, token_issuer: TokenIssuer) -> None:
    response = client.get(f"/fhir/Consent/{FORM_ID}", headers=_with(token_issuer.issue("system/Consent.rs")))
    assert response.status_code == 200
    audit = client.get("/api/audit?limit=1", headers=bearer("admin")).json["audit"]
    assert audit[0]["actor"] == "oauth:trust-ehr"


def test_static_tokens_keep_working_beside_access_tokens(client: FlaskClient) -> None:
    assert client.get(f"/fhir/Consent/{FORM_ID}", headers=bearer("ehr")).status_code == 200


def test_an_expired_access_token_is_a_401_saying_so(client: FlaskClient, token_issuer: TokenIssuer) -> None:
    response = client.get(f"/fhir/Consent/{FORM_ID}", headers=_with(token_issuer.issue(lifetime=-120)))
    assert response.status_code == 401 and 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_expiry_within_the_clock_skew_is_accepted(client: FlaskClient, token_issuer: TokenIssuer) -> None:
    assert client.get(f"/fhir/Consent/{FORM_ID}", headers=_with(token_issuer.issue(lifetime=-20))).status_code == 200


def test_a_token_not_valid_yet_is_a_401(client: FlaskClient, token_issuer: TokenIssuer) -> None:
    token = token_issuer.issue(nbf=int(time.time()) + 600)
    assert client.get(f"/fhir/Consent/{FORM_ID}", headers=_with(token)).status_code == 401


@pytest.mark.parametrize("claims", [{"aud": "https://another.example/fhir"}, {"iss": "https://another-issuer.example"}, {"exp": None}, {"aud": None}])
def test_a_token_for_another_audience_from_another_issuer_or_missing_a_claim_is_a_401(
    client: FlaskClient, token_issuer: TokenIssuer, claims: dict[str, object]
) -> None:
    response = client.get(f"/fhir/Consent/{FORM_ID}", headers=_with(token_issuer.issue(**claims)))
    assert response.status_code == 401 and response.json["resourceType"] == "OperationOutcome"


def test_a_token_signed_with_an_unpublished_key_is_a_401(client: FlaskClient, token_issuer: TokenIssuer) -> None:
    assert client.get(f"/fhir/Consent/{FORM_ID}", headers=_with(token_issuer.issue(key=new_key()))).status_code == 401


def test_a_token_signed_with_another_private_key_under_a_published_key_id_is_a_401(client: FlaskClient, token_issuer: TokenIssuer) -> None:
    impostor = new_key()
    impostor.kid = token_issuer.keys[-1].kid
    assert client.get(f"/fhir/Consent/{FORM_ID}", headers=_with(token_issuer.issue(key=impostor))).status_code == 401


def test_alg_none_is_refused(client: FlaskClient, token_issuer: TokenIssuer) -> None:
    genuine = token_issuer.issue()
    payload = genuine.split(".")[1]
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": token_issuer.keys[-1].kid}).encode())
    for token in (f"{header}.{payload}.", f"{header}.{payload}.{genuine.split('.')[2]}"):
        assert client.get(f"/fhir/Consent/{FORM_ID}", headers=_with(token)).status_code == 401


def test_hmac_signed_with_the_published_public_key_is_refused(client: FlaskClient, token_issuer: TokenIssuer) -> None:
    key = token_issuer.keys[-1]
    public_pem = key.private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    payload = token_issuer.issue().split(".")[1]
    signature = _b64(hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    assert client.get(f"/fhir/Consent/{FORM_ID}", headers=_with(f"{header}.{payload}.{signature}")).status_code == 401


def test_a_rotated_key_is_fetched_when_a_token_names_it(client: FlaskClient, token_issuer: TokenIssuer) -> None:
    assert client.get(f"/fhir/Consent/{FORM_ID}", headers=_with(token_issuer.issue())).status_code == 200
    old = token_issuer.keys[-1]
    token_issuer.rotate()
    time.sleep(REFRESH_SECONDS)
    fetched = token_issuer.jwks_requests
    assert client.get(f"/fhir/Consent/{FORM_ID}", headers=_with(token_issuer.issue())).status_code == 200
    assert token_issuer.jwks_requests == fetched + 1
    assert client.get(f"/fhir/Consent/{FORM_ID}", headers=_with(token_issuer.issue(key=old))).status_code == 401


def test_tokens_naming_unknown_keys_do_not_make_the_adapter_refetch_on_every_request(client: FlaskClient, token_issuer: TokenIssuer) -> None:
    assert client.get(f"/fhir/Consent/{FORM_ID}", headers=_with(token_issuer.issue())).status_code == 200
    fetched, started = token_issuer.jwks_requests, time.monotonic()
    stranger = new_key()
    for _ in range(20):
        stranger.kid = uuid.uuid4().hex
        assert client.get(f"/fhir/Consent/{FORM_ID}", headers=_with(token_issuer.issue(key=stranger))).status_code == 401
    assert token_issuer.jwks_requests <= fetched + 1 + int((time.monotonic() - started) / REFRESH_SECONDS)


def test_smart_v2_read_scopes_do_not_decide_or_write(client: FlaskClient, token_issuer: TokenIssuer) -> None:
    token = token_issuer.issue("system/Consent.rs")
    assert client.get(QUESTION, headers=_with(token)).status_code == 403
    assert client.put(f"/api/forms/{FORM_ID}", json=example_form(), headers={**_with(token), "If-Match": 'W/"1"'}).status_code == 403


def test_the_adapter_s_own_scope_asks_for_decisions(client: FlaskClient, token_issuer: TokenIssuer) -> None:
    assert client.get(QUESTION, headers=_with(token_issuer.issue("casus/decision.read"))).status_code == 200


def test_smart_v2_create_and_update_scopes_write(client: FlaskClient, token_issuer: TokenIssuer) -> None:
    token = token_issuer.issue("system/Consent.cu")
    assert client.put(f"/api/forms/{FORM_ID}", json=example_form(), headers={**_with(token), "If-Match": 'W/"1"'}).status_code == 200


@pytest.mark.parametrize("base", ["/fhir", "/fhir/R4", "/fhir/R5"])
def test_the_smart_configuration_is_public_and_names_the_issuer_and_its_keys(client: FlaskClient, token_issuer: TokenIssuer, base: str) -> None:
    document = client.get(f"{base}/.well-known/smart-configuration").json
    assert document["issuer"] == token_issuer.issuer and document["jwks_uri"] == token_issuer.jwks_url
    assert document["token_endpoint"] == f"{token_issuer.base_url}/token" and "permission-v2" in document["capabilities"]


def test_the_capability_statement_declares_the_smart_service(client: FlaskClient, token_issuer: TokenIssuer) -> None:
    security = client.get("/fhir/metadata").json["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    assert security["extension"][0]["extension"][0]["valueUri"] == f"{token_issuer.base_url}/token"


def test_without_an_authorisation_server_the_smart_configuration_is_a_404(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path}/plain.db")
    try:
        response = create_app(Settings(grants=grants()), store=store).test_client().get("/fhir/.well-known/smart-configuration")
        assert response.status_code == 404 and response.json["resourceType"] == "OperationOutcome"
    finally:
        store.close()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CASUS_OAUTH_ISSUER": "https://as.example", "CASUS_OAUTH_JWKS_URL": "https://as.example/jwks"}, "CASUS_OAUTH_AUDIENCE"),
        (
            {"CASUS_OAUTH_ISSUER": "https://as.example", "CASUS_OAUTH_AUDIENCE": "x", "CASUS_OAUTH_JWKS_URL": "http://as.example/jwks"},
            "CASUS_OAUTH_JWKS_URL",
        ),
        (
            {
                "CASUS_OAUTH_ISSUER": "https://as.example",
                "CASUS_OAUTH_AUDIENCE": "x",
                "CASUS_OAUTH_JWKS_URL": "https://as.example/jwks",
                "CASUS_OAUTH_LEEWAY_SECONDS": "3600",
            },
            "CASUS_OAUTH_LEEWAY_SECONDS",
        ),
    ],
)
def test_an_unusable_oauth_setting_is_a_configuration_error_naming_it(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        Settings.from_env(env)


def test_an_rs384_signed_token_is_accepted_as_an_es384_one_is(client: FlaskClient, token_issuer: TokenIssuer) -> None:
    token_issuer.keys.append(new_key("RS384"))
    time.sleep(REFRESH_SECONDS)
    assert client.get(f"/fhir/Consent/{FORM_ID}", headers=_with(token_issuer.issue())).status_code == 200


def test_a_token_whose_algorithm_does_not_fit_the_key_it_names_is_a_401(client: FlaskClient, token_issuer: TokenIssuer) -> None:
    rsa_key = new_key("RS384")
    token_issuer.keys.append(rsa_key)
    time.sleep(REFRESH_SECONDS)
    genuine = token_issuer.issue(key=rsa_key)
    header = _b64(json.dumps({"alg": "ES384", "typ": "JWT", "kid": rsa_key.kid}).encode())
    forged = f"{header}.{genuine.split('.')[1]}.{genuine.split('.')[2]}"
    assert client.get(f"/fhir/Consent/{FORM_ID}", headers=_with(forged)).status_code == 401
