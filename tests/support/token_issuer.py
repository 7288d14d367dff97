"""A small OAuth 2.0 token issuer on 127.0.0.1 for the tests: its own signing keys, a JWKS endpoint, key rotation.

It stands in for the trust's authorisation server: the adapter fetches the JWKS over HTTP exactly as it would
from the real one; the tests sign access tokens with ``issue`` (well-formed or broken on purpose).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

AUDIENCE = "https://casus.test/fhir"


@dataclass
class SigningKey:
    kid: str
    private: Any
    alg: str

    def public_jwk(self) -> dict[str, Any]:
        algorithm = RSAAlgorithm if self.alg.startswith(("RS", "PS")) else ECAlgorithm
        jwk = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}


def new_key(alg: str = "ES384") -> SigningKey:
    private = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048) if alg.startswith(("RS", "PS")) else ec.generate_private_key(ec.SECP384R1())
    )
    return SigningKey(uuid.uuid4().hex[:12], private, alg)


@dataclass
class TokenIssuer:
    """The issuer's state: its published keys and how often the JWKS was fetched."""

    base_url: str = ""
    keys: list[SigningKey] = field(default_factory=list)
    jwks_requests: int = 0

    @property
    def issuer(self) -> str:
        return self.base_url

    @property
    def jwks_url(self) -> str:
        return f"{self.base_url}/jwks.json"

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self.keys]}

    def rotate(self) -> SigningKey:
        """Publish a new key and retire the old ones (what a scheduled rotation does)."""
        key = new_key(self.keys[-1].alg if self.keys else "ES384")
        self.keys = [key]
        return key

    def issue(self, scope: str = "system/Consent.rs", *, key: SigningKey | None = None, lifetime: int = 300, **overrides: Any) -> str:
        signing = key or self.keys[-1]
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": "trust-ehr",
            "client_id": "trust-ehr",
            "scope": scope,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "jti": uuid.uuid4().hex,
            **overrides,
        }
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, signing.private, algorithm=signing.alg, headers={"kid": signing.kid})


def start_token_issuer() -> tuple[TokenIssuer, ThreadingHTTPServer]:
    issuer = TokenIssuer(keys=[new_key()])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/jwks.json":
                self.send_error(404)
                return
            issuer.jwks_requests += 1
            body = json.dumps(issuer.jwks()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    issuer.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return issuer, server
