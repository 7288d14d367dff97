"""Settings from the environment (12-factor): nothing secret lives in the repository.

Bearer tokens are configured as SHA-256 digests where possible, so a leaked
configuration file does not leak working tokens; plain tokens from the
environment are hashed as soon as they are read.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .access import SCOPES, PasswordUser, TokenGrant
from .fhir_client import ConfigurationError as UnsafeUrl
from .fhir_client import check_transport_security
from .oauth_tokens import MAX_LEEWAY_SECONDS, OAuthSettings

DEFAULT_DATABASE_URL = "sqlite:///instance/casus.sqlite3"


class ConfigurationError(ValueError):
    """The configuration cannot be used; the message names the setting, never its secret value."""


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    grants: tuple[TokenGrant, ...] = ()
    max_body_bytes: int = 1_000_000
    public_base_url: str | None = None  # for absolute links in Bundles when behind a proxy
    page_size: int = 20
    backdated_days: int = 90  # a version recorded this many days before it is stored is flagged in the audit
    users: tuple[PasswordUser, ...] = ()  # who may sign in to the consent pages with a password
    session_idle_minutes: int = 20  # a consent page session ends after this long without a request ...
    session_max_hours: int = 10  # ... and after this long whatever happens
    sign_in_failures_per_username: int = 5  # failed sign-ins for one username within the window before more are refused ...
    sign_in_failures_per_address: int = 20  # ... and from one client address (behind a proxy: the proxy's, shared by all)
    sign_in_window_minutes: int = 15  # the window failures are counted over; refusals lift as failures age out of it
    connection_limit: int = 1_000  # open connections waitress keeps before it stops accepting
    channel_timeout_seconds: int = 30  # a connection silent this long is closed
    switch_interval_microseconds: int = 100  # how long a thread may hold the GIL while another waits (serving.py)
    running_requests: int = 1  # requests running Python at once in each serving process (request_turns.py)
    trusted_proxy: str | None = None  # the reverse proxy's address, whose X-Forwarded-For names the client
    validate_concurrency: int = 2  # $validate requests run at once; more get 503 with Retry-After
    oauth: OAuthSettings | None = None  # access tokens from the trust's authorisation server, beside the static tokens
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            database_url=env.get("CASUS_DATABASE_URL", DEFAULT_DATABASE_URL),
            grants=grants_from_env(env),
            max_body_bytes=_positive_int(env.get("CASUS_MAX_BODY_BYTES", "1000000"), "CASUS_MAX_BODY_BYTES"),
            public_base_url=env.get("CASUS_PUBLIC_BASE_URL") or None,
            backdated_days=_positive_int(env.get("CASUS_BACKDATED_DAYS", "90"), "CASUS_BACKDATED_DAYS"),
            users=users_from_env(env),
            session_idle_minutes=_positive_int(env.get("CASUS_SESSION_IDLE_MINUTES", "20"), "CASUS_SESSION_IDLE_MINUTES"),
            session_max_hours=_positive_int(env.get("CASUS_SESSION_MAX_HOURS", "10"), "CASUS_SESSION_MAX_HOURS"),
            sign_in_failures_per_username=_positive_int(env.get("CASUS_SIGN_IN_FAILURES_PER_USERNAME", "5"), "CASUS_SIGN_IN_FAILURES_PER_USERNAME"),
            sign_in_failures_per_address=_positive_int(env.get("CASUS_SIGN_IN_FAILURES_PER_ADDRESS", "20"), "CASUS_SIGN_IN_FAILURES_PER_ADDRESS"),
            sign_in_window_minutes=_positive_int(env.get("CASUS_SIGN_IN_WINDOW_MINUTES", "15"), "CASUS_SIGN_IN_WINDOW_MINUTES"),
            connection_limit=_positive_int(env.get("CASUS_CONNECTION_LIMIT", "1000"), "CASUS_CONNECTION_LIMIT"),
            channel_timeout_seconds=_positive_int(env.get("CASUS_CHANNEL_TIMEOUT_SECONDS", "30"), "CASUS_CHANNEL_TIMEOUT_SECONDS"),
            switch_interval_microseconds=_positive_int(env.get("CASUS_SWITCH_INTERVAL_MICROSECONDS", "100"), "CASUS_SWITCH_INTERVAL_MICROSECONDS"),
            running_requests=_positive_int(env.get("CASUS_RUNNING_REQUESTS", "1"), "CASUS_RUNNING_REQUESTS"),
            validate_concurrency=_positive_int(env.get("CASUS_VALIDATE_CONCURRENCY", "2"), "CASUS_VALIDATE_CONCURRENCY"),
            trusted_proxy=_ip_address(env.get("CASUS_TRUSTED_PROXY"), "CASUS_TRUSTED_PROXY"),
            oauth=oauth_from_env(env),
        )


def oauth_from_env(env: Mapping[str, str]) -> OAuthSettings | None:
    """CASUS_OAUTH_ISSUER and its companions, or None when no authorisation server is configured."""
    issuer = env.get("CASUS_OAUTH_ISSUER")
    if not issuer:
        return None
    for name in ("CASUS_OAUTH_AUDIENCE", "CASUS_OAUTH_JWKS_URL"):
        if not env.get(name):
            raise ConfigurationError(f"{name} is required with CASUS_OAUTH_ISSUER")
    for name in ("CASUS_OAUTH_JWKS_URL", "CASUS_OAUTH_TOKEN_ENDPOINT"):
        if env.get(name):
            try:
                check_transport_security(env[name])
            except UnsafeUrl:
                raise ConfigurationError(f"{name} must be an https URL (http only on loopback)") from None
    leeway = _positive_int(env.get("CASUS_OAUTH_LEEWAY_SECONDS", "60"), "CASUS_OAUTH_LEEWAY_SECONDS")
    if leeway > MAX_LEEWAY_SECONDS:
        raise ConfigurationError(f"CASUS_OAUTH_LEEWAY_SECONDS must be at most {MAX_LEEWAY_SECONDS}")
    return OAuthSettings(
        issuer=issuer,
        audience=env["CASUS_OAUTH_AUDIENCE"],
        jwks_url=env["CASUS_OAUTH_JWKS_URL"],
        token_endpoint=env.get("CASUS_OAUTH_TOKEN_ENDPOINT") or None,
        leeway_seconds=leeway,
        ca_bundle=env.get("CASUS_OAUTH_CA_BUNDLE") or None,
    )


def _ip_address(value: str | None, name: str) -> str | None:
    """One IP address, or None when unset: a host name could resolve elsewhere, and the proxy is trusted by address."""
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ConfigurationError(f"{name} must be one IP address (the reverse proxy's)") from None


def _positive_int(value: str, name: str) -> int:
    if not (value.strip().isascii() and value.strip().isdigit()) or len(value.strip()) > 12 or int(value) <= 0:
        raise ConfigurationError(f"{name} must be a positive whole number")
    return int(value)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_grants(entries: Any) -> tuple[TokenGrant, ...]:
    """Grants from a JSON list of {"name", "scopes", and "token" or "token_sha256"}."""
    if not isinstance(entries, list):
        raise ConfigurationError("token configuration must be a JSON list")
    grants = []
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ConfigurationError(f"token entry {n} needs a name")
        digest = entry.get("token_sha256") or (hash_token(entry["token"]) if isinstance(entry.get("token"), str) else None)
        if not digest or len(digest) != 64:
            raise ConfigurationError(f"token entry {entry['name']!r} needs a token or a 64-hex-digit token_sha256")
        scopes = entry.get("scopes")
        if not isinstance(scopes, list) or not scopes or any(s not in SCOPES for s in scopes):
            raise ConfigurationError(f"token entry {entry['name']!r}: scopes must be a non-empty list drawn from {sorted(SCOPES)}")
        grants.append(TokenGrant(entry["name"], digest.lower(), frozenset(scopes), _expiry(entry)))
    return tuple(grants)


def _expiry(entry: dict[str, Any]) -> datetime | None:
    if entry.get("expires_at") is None:
        return None
    try:
        parsed = datetime.fromisoformat(str(entry["expires_at"]))
    except ValueError:
        raise ConfigurationError(f"token entry {entry['name']!r}: expires_at is not an ISO date-time") from None
    if parsed.tzinfo is None:
        raise ConfigurationError(f"token entry {entry['name']!r}: expires_at needs a time zone")
    return parsed


def grants_from_env(env: Mapping[str, str]) -> tuple[TokenGrant, ...]:
    """CASUS_TOKENS_FILE (a JSON file) or CASUS_TOKENS (the same JSON inline)."""
    if env.get("CASUS_TOKENS_FILE"):
        path = Path(env["CASUS_TOKENS_FILE"])
        try:
            return parse_grants(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigurationError(f"CASUS_TOKENS_FILE cannot be read as JSON: {type(exc).__name__}") from None
    if env.get("CASUS_TOKENS"):
        try:
            return parse_grants(json.loads(env["CASUS_TOKENS"]))
        except json.JSONDecodeError:
            raise ConfigurationError("CASUS_TOKENS is not valid JSON") from None
    return ()


def parse_users(entries: Any) -> tuple[PasswordUser, ...]:
    """Users from a JSON list of {"username", "name", "password_hash", "scopes"}; the hash is werkzeug's
    ``scrypt:...$salt$hash`` string (``python -c "from werkzeug.security import generate_password_hash as g; print(g(input()))"``)."""
    if not isinstance(entries, list):
        raise ConfigurationError("user configuration must be a JSON list")
    users = []
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("username"), str) or not entry["username"].strip():
            raise ConfigurationError(f"user entry {n} needs a username")
        name = entry["username"]
        digest = entry.get("password_hash")
        if not isinstance(digest, str) or not digest.startswith(("scrypt:", "pbkdf2:")) or digest.count("$") != 2:
            raise ConfigurationError(f"user {name!r} needs a password_hash made by werkzeug.security.generate_password_hash")
        scopes = entry.get("scopes")
        if not isinstance(scopes, list) or not scopes or any(s not in SCOPES for s in scopes):
            raise ConfigurationError(f"user {name!r}: scopes must be a non-empty list drawn from {sorted(SCOPES)}")
        display = entry["name"].strip() if isinstance(entry.get("name"), str) and entry["name"].strip() else name
        users.append(PasswordUser(name, display, digest, frozenset(scopes)))
    return tuple(users)


def users_from_env(env: Mapping[str, str]) -> tuple[PasswordUser, ...]:
    """CASUS_USERS_FILE (a JSON file) or CASUS_USERS (the same JSON inline)."""
    if env.get("CASUS_USERS_FILE"):
        try:
            return parse_users(json.loads(Path(env["CASUS_USERS_FILE"]).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigurationError(f"CASUS_USERS_FILE cannot be read as JSON: {type(exc).__name__}") from None
    if env.get("CASUS_USERS"):
        try:
            return parse_users(json.loads(env["CASUS_USERS"]))
        except json.JSONDecodeError:
            raise ConfigurationError("CASUS_USERS is not valid JSON") from None
    return ()
