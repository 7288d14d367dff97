"""Every guarded route against every kind of bad OAuth access token, from a token issuer on 127.0.0.1: each a 401."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from flask import Flask

from fhir_adapter.config import Settings
from fhir_adapter.oauth_tokens import OAuthSettings
from fhir_adapter.server import create_app
from fhir_adapter.store import Store
from tests.hardening.figures import FigureBook
from tests.hardening.probes import is_operation_outcome
from tests.support.facade import grants
from tests.support.token_issuer import AUDIENCE, TokenIssuer, new_key, start_token_issuer

SECTION = "8. OAuth access tokens"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _alg_none(issuer: TokenIssuer) -> str:
    header = _b64(json.dumps({"alg": "none", "kid": issuer.keys[-1].kid}).encode())
    return f"{header}.{issuer.issue('casus/admin').split('.')[1]}."


def _hmac_with_public_key(issuer: TokenIssuer) -> str:
    key = issuer.keys[-1]
    pem = key.private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = _b64(json.dumps({"alg": "HS256", "kid": key.kid}).encode())
    signed = f"{header}.{issuer.issue('casus/admin').split('.')[1]}"
    return f"{signed}.{_b64(hmac.new(pem, signed.encode(), hashlib.sha256).digest())}"


def _impostor(issuer: TokenIssuer) -> str:
    impostor = new_key()
    impostor.kid = issuer.keys[-1].kid
    return issuer.issue("casus/admin", key=impostor)


BAD_TOKENS: dict[str, Callable[[TokenIssuer], str]] = {
    "expired": lambda i: i.issue("casus/admin", lifetime=-600),
    "not yet valid": lambda i: i.issue("casus/admin", nbf=int(time.time()) + 600),
    "another audience": lambda i: i.issue("casus/admin", aud="https://elsewhere.example/fhir"),
    "another issuer": lambda i: i.issue("casus/admin", iss="https://elsewhere.example"),
    "no exp": lambda i: i.issue("casus/admin", exp=None),
    "unpublished key": lambda i: i.issue("casus/admin", key=new_key()),
    "impostor key under a published kid": _impostor,
    "alg none": _alg_none,
    "HS256 with the public key": _hmac_with_public_key,
}


@pytest.fixture
def oauth_app(tmp_path: Path) -> Iterator[tuple[Flask, TokenIssuer]]:
    issuer, server = start_token_issuer()
    store = Store.open(f"sqlite:///{tmp_path}/oauth.db")
    settings = Settings(grants=grants(), oauth=OAuthSettings(issuer=issuer.issuer, audience=AUDIENCE, jwks_url=issuer.jwks_url))
    try:
        yield create_app(settings, store=store), issuer
    finally:
        store.close()
        server.shutdown()
        server.server_close()


def test_every_guarded_route_refuses_every_bad_access_token_with_401(oauth_app: tuple[Flask, TokenIssuer], figures: FigureBook) -> None:
    app, issuer = oauth_app
    client = app.test_client()
    tokens = {case: make(issuer) for case, make in BAD_TOKENS.items()}
    wrong = {}
    checked = 0
    for rule in app.url_map.iter_rules():
        if not hasattr(app.view_functions[rule.endpoint], "required_scope"):
            continue
        path = re.sub(r"<(int:)?([a-z_]+)>", lambda m: "1" if m.group(1) else "x", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            for case, token in tokens.items():
                response = client.open(
                    path, method=method, headers={"Authorization": f"Bearer {token}"}, json={} if method in ("POST", "PUT") else None
                )
                checked += 1
                if response.status_code != 401 or not is_operation_outcome(response.data):
                    wrong[(method, path, case)] = response.status_code
    figures.add(SECTION, "route x bad-token cases checked", checked)
    figures.add(SECTION, "route x bad-token cases not refused with 401", len(wrong))
    figures.add(SECTION, "JWKS fetches for all of them", issuer.jwks_requests)
    assert checked and not wrong, wrong
