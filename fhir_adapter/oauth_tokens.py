"""OAuth 2.0 access tokens from the trust's authorisation server (SMART Backend Services), as callers.

The EHR and the integration engine get a signed JWT access token from the trust's authorisation server and
send it as a bearer token.  It is accepted when its signature verifies with a key from the server's JWKS,
its ``iss`` is the configured issuer, its ``aud`` names this adapter, and ``exp``/``nbf`` hold within a
bounded clock skew.  Only asymmetric algorithms are accepted: ``alg: none`` and HMAC (which a forger could
sign with the published public key) are refused before any key is looked at.

Keys are fetched on first use and cached; a token signed with a key id the cache does not know refetches the
JWKS (key rotation), at most once every ``MIN_REFRESH_SECONDS``, so tokens with made-up key ids cannot make
the adapter hammer the authorisation server (a rotated key is therefore seen at most that long after the first
token that names it).

SMART scopes map onto the adapter's own (``access.SCOPES``): ``system/Consent.rs`` (v2) or
``system/Consent.read`` (v1) -> consent.read; ``system/Consent.cu`` or ``system/Consent.write`` ->
form.write; ``system/Consent.*`` -> both; ``casus/<scope>`` -> that adapter scope (decisions, validation,
admin have no FHIR resource scope).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import jwt
import requests

from .access import SCOPES, Principal, Refusal
from .fhir_client import check_transport_security

log = logging.getLogger("fhir_adapter.oauth")

#: Asymmetric signature algorithms only: never "none", never HS256/384/512.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
#: The JWK key type each algorithm family signs with (by the first two letters of ``alg``).
KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
MIN_REFRESH_SECONDS = 5.0
MAX_LEEWAY_SECONDS = 300
FETCH_TIMEOUT_SECONDS = 5.0
MAX_JWKS_BYTES = 200_000
_V2_SCOPE = re.compile(r"^system/Consent\.([cruds]+)(\?.*)?$")


@dataclass(frozen=True)
class OAuthSettings:
    issuer: str
    audience: str
    jwks_url: str
    token_endpoint: str | None = None
    leeway_seconds: int = 60
    ca_bundle: str | None = None
    jwks_min_refresh_seconds: float = MIN_REFRESH_SECONDS


def adapter_scopes(granted: str) -> frozenset[str]:
    """The adapter scopes a token's space-separated SMART ``scope`` claim grants.

    >>> sorted(adapter_scopes("system/Consent.rs casus/decision.read openid"))
    ['consent.read', 'decision.read']
    >>> sorted(adapter_scopes("system/Consent.cruds"))
    ['consent.read', 'form.write']
    >>> sorted(adapter_scopes("system/Consent.r system/Consent.c"))
    []
    """
    out: set[str] = set()
    permissions = ""
    for scope in granted.split():
        if scope in ("system/Consent.read", "system/Consent.*"):
            out.add("consent.read")
        if scope in ("system/Consent.write", "system/Consent.*"):
            out.add("form.write")
        if (match := _V2_SCOPE.match(scope)) and not match.group(2):  # a scope narrowed by a query grants nothing here
            permissions += match.group(1)
        if scope.startswith("casus/") and scope.removeprefix("casus/") in SCOPES:
            out.add(scope.removeprefix("casus/"))
    if {"r", "s"} <= set(permissions):  # consent.read both reads and searches
        out.add("consent.read")
    if {"c", "u"} <= set(permissions):  # form.write both creates and updates
        out.add("form.write")
    return frozenset(out)


class JwksCache:
    """The authorisation server's signing keys by key id, fetched on first use and on an unknown key id."""

    def __init__(
        self, url: str, *, ca_bundle: str | None = None, min_refresh_seconds: float = MIN_REFRESH_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        check_transport_security(url)
        self._url = url
        self._min_refresh = min_refresh_seconds
        self._verify: bool | str = ca_bundle or True
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = threading.Lock()
        self.fetches = 0

    def key(self, kid: str) -> jwt.PyJWK | None:
        """The published key ``kid``; a known key never waits for a fetch, and at most one fetch runs at a time."""
        known = self._keys.get(kid)
        if known is not None:
            return known
        with self._lock:
            if kid not in self._keys and self._may_fetch():
                self._fetch()
            return self._keys.get(kid)

    def _may_fetch(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self._min_refresh

    def _fetch(self) -> None:
        self._fetched_at = self._clock()
        self.fetches += 1
        try:
            response = requests.get(self._url, timeout=FETCH_TIMEOUT_SECONDS, verify=self._verify, headers={"Accept": "application/json"})
            response.raise_for_status()
            if len(response.content) > MAX_JWKS_BYTES:
                raise ValueError("JWKS too large")
            document = json.loads(response.content)
        except (requests.RequestException, ValueError) as exc:
            log.warning("cannot fetch the authorisation server's keys (%s); keeping %d cached", type(exc).__name__, len(self._keys))
            return
        keys = {}
        for entry in document.get("keys", []) if isinstance(document, dict) else []:
            if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str) or entry.get("use", "sig") != "sig":
                continue
            try:
                keys[entry["kid"]] = jwt.PyJWK.from_dict(entry)
            except jwt.PyJWTError:
                continue  # a key type this adapter cannot use (or a symmetric one): ignored
        self._keys = keys


class AccessTokenVerifier:
    """A bearer JWT -> the calling system with its adapter scopes, or the reason it is refused."""

    def __init__(self, settings: OAuthSettings, keys: JwksCache | None = None) -> None:
        self.settings = settings
        self._leeway = min(max(settings.leeway_seconds, 0), MAX_LEEWAY_SECONDS)
        self._keys = keys or JwksCache(settings.jwks_url, ca_bundle=settings.ca_bundle, min_refresh_seconds=settings.jwks_min_refresh_seconds)

    def authenticate(self, token: str) -> Principal | Refusal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return Refusal(401, "login", "the access token is not a JWT")
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            return Refusal(401, "login", f"access tokens must be signed with one of {', '.join(ALGORITHMS)}")
        if not isinstance(kid, str):
            return Refusal(401, "login", "the access token names no key (kid)")
        key = self._keys.key(kid)
        if key is None:
            return Refusal(401, "login", "the access token is signed with a key the authorisation server does not publish")
        if key.key_type != KEY_TYPES.get(alg[:2]):  # an RSA key named with ES256, say: PyJWT would fail on the key, not the token
            return Refusal(401, "login", "the access token's algorithm does not fit the key it names")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            return Refusal(401, "expired", "the access token has expired")
        except jwt.ImmatureSignatureError:
            return Refusal(401, "login", "the access token is not valid yet (nbf)")
        except jwt.InvalidAudienceError:
            return Refusal(401, "login", "the access token is for another audience")
        except jwt.InvalidIssuerError:
            return Refusal(401, "login", "the access token is from another issuer")
        except (jwt.PyJWTError, TypeError, ValueError):  # TypeError/ValueError: a key PyJWT cannot use with this alg
            return Refusal(401, "login", "the access token's signature or claims do not verify")
        caller = claims.get("client_id") or claims.get("sub") or "unnamed"
        name = "oauth:" + re.sub(r"[^A-Za-z0-9._:@/-]", "_", str(caller))[:64]
        return Principal(name, adapter_scopes(str(claims.get("scope", ""))))


def looks_like_jwt(token: str) -> bool:
    """Three base64url parts: a JWT, not one of the static tokens (which have no dots)."""
    return token.count(".") == 2
