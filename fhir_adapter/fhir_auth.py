"""Credentials for the trust FHIR server, as ``requests`` auth plugins.

Three kinds, chosen by ``CASUS_FHIR_AUTH`` (see ``auth_from_env``):

* ``none``   – ``NoAuth``: a loopback test server.
* ``bearer`` – ``StaticBearer``: a token issued out of band, read from ``CASUS_FHIR_TOKEN``.
* ``smart``  – ``SmartBackendAuth``: SMART Backend Services (OAuth2 client credentials with a
  signed JWT client assertion, https://hl7.org/fhir/smart-app-launch/backend-services.html).
  The access token is cached and refreshed a minute before it expires; after a 401 from the FHIR
  server the client calls ``refresh()`` and re-sends once.

Secrets come from the environment or files, and never appear in logs, reprs or exception messages.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import jwt
import requests
from requests.auth import AuthBase

from .fhir_client import ConfigurationError, TransportError, Unauthorized, check_transport_security

log = logging.getLogger(__name__)

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_S = 300  # SMART: exp no more than five minutes in the future
DEFAULT_TOKEN_LIFETIME_S = 300  # used when a token response omits expires_in
SUPPORTED_ALGS = frozenset({"RS384", "ES384"})  # the two SMART Backend Services requires servers to support


class NoAuth(AuthBase):
    """Send requests without credentials."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        return r

    def refresh(self) -> bool:
        return False


class StaticBearer(AuthBase):
    """A fixed bearer token; a 401 cannot be cured by retrying, so ``refresh`` declines."""

    def __init__(self, token: str) -> None:
        if not token or not token.strip():
            raise ConfigurationError("bearer token is empty")
        self._token = token.strip()

    @classmethod
    def from_env(cls, environ: Mapping[str, str], var: str = "CASUS_FHIR_TOKEN") -> StaticBearer:
        return cls(_required(environ, var))

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self._token}"
        return r

    def refresh(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "StaticBearer(token=<redacted>)"


@dataclass(frozen=True)
class AccessToken:
    value: str
    expires_at: float


def client_assertion_claims(client_id: str, token_url: str, now: float, jti: str) -> dict[str, object]:
    """The JWT claims SMART Backend Services asks for: iss = sub = client id, aud = token URL, exp <= 5 min, unique jti."""
    return {"iss": client_id, "sub": client_id, "aud": token_url, "exp": int(now) + ASSERTION_LIFETIME_S, "jti": jti}


class SmartBackendAuth(AuthBase):
    """SMART Backend Services client-credentials auth with a cached, early-refreshed access token."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        private_key_pem: str | bytes,
        key_id: str,
        alg: str = "RS384",
        scope: str = "system/Consent.*",
        *,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
        refresh_margin_s: float = 60,
        timeout: float | tuple[float, float] = (3.05, 30),
        verify: bool | str = True,
        allow_insecure_http: bool = False,
    ) -> None:
        check_transport_security(token_url, allow_insecure_http=allow_insecure_http)
        if alg not in SUPPORTED_ALGS:
            raise ConfigurationError(f"unsupported JWT algorithm {alg!r}; use one of {sorted(SUPPORTED_ALGS)}")
        if not client_id or not key_id:
            raise ConfigurationError("client_id and key_id are required")
        self.token_url = token_url
        self.client_id = client_id
        self.key_id = key_id
        self.alg = alg
        self.scope = scope
        self._key = private_key_pem
        self._session = session or requests.Session()
        self._clock = clock
        self._margin = refresh_margin_s
        self._timeout = timeout
        self._verify = verify
        self._token: AccessToken | None = None
        self._lock = threading.Lock()
        self.token_requests = 0

    def __repr__(self) -> str:
        return f"SmartBackendAuth(token_url={self.token_url!r}, client_id={self.client_id!r}, key_id={self.key_id!r})"

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self.access_token()}"
        return r

    def refresh(self) -> bool:
        """Forget the cached token (the server said it is no longer good); the next request fetches a new one."""
        with self._lock:
            self._token = None
        return True

    def access_token(self) -> str:
        """The cached token while it has more than ``refresh_margin_s`` left, else a new one."""
        with self._lock:
            now = self._clock()
            if self._token is None or now >= self._token.expires_at - self._margin:
                self._token = self._fetch(now)
            return self._token.value

    def client_assertion(self, now: float) -> str:
        """A freshly signed JWT proving we hold the registered private key."""
        claims = client_assertion_claims(self.client_id, self.token_url, now, uuid.uuid4().hex)
        try:
            return jwt.encode(claims, self._key, algorithm=self.alg, headers={"kid": self.key_id, "typ": "JWT"})
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise ConfigurationError("private key cannot sign a client assertion with the configured algorithm") from exc

    def _fetch(self, now: float) -> AccessToken:
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": self.client_assertion(now),
        }
        self.token_requests += 1
        try:
            response = self._session.post(
                self.token_url,
                data=form,
                headers={"Accept": "application/json"},
                timeout=self._timeout,
                verify=self._verify,
                allow_redirects=False,
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransportError(None, None, f"token endpoint unreachable: {type(exc).__name__}") from exc
        log.info("token request -> %d", response.status_code)
        return parse_token_response(response, now)


def parse_token_response(response: requests.Response, now: float) -> AccessToken:
    """Check a token endpoint answer; errors name the OAuth error code only (descriptions may echo input)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    if response.status_code != 200:
        error = body.get("error") if isinstance(body.get("error"), str) else "no error code"
        cls = TransportError if response.status_code >= 500 or response.status_code == 429 else Unauthorized
        raise cls(response.status_code, None, f"token endpoint refused: {response.status_code} {error}")
    token = body.get("access_token")
    if not isinstance(token, str) or not token:
        raise Unauthorized(response.status_code, None, "token endpoint answered without an access_token")
    if str(body.get("token_type", "bearer")).lower() != "bearer":
        raise Unauthorized(response.status_code, None, "token endpoint issued a non-bearer token")
    expires_in = body.get("expires_in", DEFAULT_TOKEN_LIFETIME_S)
    if not isinstance(expires_in, int | float) or isinstance(expires_in, bool) or expires_in <= 0:
        expires_in = DEFAULT_TOKEN_LIFETIME_S
    return AccessToken(token, now + float(expires_in))


def _required(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise ConfigurationError(f"{name} must be set")
    return value


def auth_from_env(environ: Mapping[str, str]) -> AuthBase:
    """Build the auth plugin from CASUS_FHIR_* variables; ConfigurationError names any that is missing.

    CASUS_FHIR_AUTH=none (default) | bearer (CASUS_FHIR_TOKEN) | smart (CASUS_FHIR_TOKEN_URL,
    CASUS_FHIR_CLIENT_ID, CASUS_FHIR_PRIVATE_KEY_FILE, CASUS_FHIR_KEY_ID; optional CASUS_FHIR_SCOPE,
    CASUS_FHIR_JWT_ALG).
    """
    kind = environ.get("CASUS_FHIR_AUTH", "none").strip().lower() or "none"
    if kind == "none":
        return NoAuth()
    if kind == "bearer":
        return StaticBearer.from_env(environ)
    if kind == "smart":
        key_file = Path(_required(environ, "CASUS_FHIR_PRIVATE_KEY_FILE"))
        try:
            key = key_file.read_bytes()
        except OSError as exc:
            raise ConfigurationError("CASUS_FHIR_PRIVATE_KEY_FILE cannot be read") from exc
        return SmartBackendAuth(
            token_url=_required(environ, "CASUS_FHIR_TOKEN_URL"),
            client_id=_required(environ, "CASUS_FHIR_CLIENT_ID"),
            private_key_pem=key,
            key_id=_required(environ, "CASUS_FHIR_KEY_ID"),
            alg=environ.get("CASUS_FHIR_JWT_ALG", "RS384").strip() or "RS384",
            scope=environ.get("CASUS_FHIR_SCOPE", "system/Consent.*").strip() or "system/Consent.*",
        )
    raise ConfigurationError("CASUS_FHIR_AUTH must be one of none, bearer, smart")
