"""Bearer tokens and scopes: who is asking, and may they?

Deciding access is separate from the HTTP layer: ``authenticate`` turns an
Authorization header into a ``Principal`` or a reason, and the facade only
renders 401/403.  Every configured grant is compared, in constant time, on
every request, so timing reveals neither which token nearly matched nor how
many there are.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime

from werkzeug.security import check_password_hash, generate_password_hash

#: consent.read: read forms, Consents, disclosures and summaries, and see the full reason of every decision;
#: decision.read: ask the decision endpoints (every deny then reads the same, revealing nothing);
#: form.write: create/change forms, record disclosures; validate: $validate; metrics.read: the sync metrics at
#: /metrics (for a scraper, which needs nothing else); admin: audit log and everything else.
SCOPES = frozenset({"consent.read", "decision.read", "form.write", "validate", "metrics.read", "admin"})


@dataclass(frozen=True)
class TokenGrant:
    name: str
    token_sha256: str
    scopes: frozenset[str]
    expires_at: datetime | None = None  # tokens can be issued for a limited time (e.g. a contractor's)


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[str]

    def may(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


@dataclass(frozen=True)
class Refusal:
    status: int  # 401 or 403
    code: str  # OperationOutcome issue code: login, forbidden
    reason: str


def authenticate(authorization: str | None, grants: tuple[TokenGrant, ...], now: datetime) -> Principal | Refusal:
    if not authorization:
        return Refusal(401, "login", "a bearer token is required")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token or len(token) > 4096:
        return Refusal(401, "login", "the Authorization header must be 'Bearer <token>'")
    presented = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest().encode()
    match: TokenGrant | None = None
    for grant in grants:  # no early exit: constant work whatever matches
        if hmac.compare_digest(presented, grant.token_sha256.encode()):
            match = grant
    if match is None:
        return Refusal(401, "login", "the bearer token is not recognised")
    if match.expires_at is not None and now >= match.expires_at:
        return Refusal(401, "expired", "the bearer token has expired")
    return Principal(match.name, match.scopes)


def authorise(principal: Principal, scope: str) -> Refusal | None:
    if principal.may(scope):
        return None
    return Refusal(403, "forbidden", f"this token lacks the '{scope}' scope")


@dataclass(frozen=True)
class PasswordUser:
    """A member of the team who signs in to the consent pages with a password (the embedded default's sign-in).

    ``password_hash`` is werkzeug's ``method$salt$hash`` string (scrypt by default), never the password.
    """

    username: str
    display_name: str
    password_hash: str
    scopes: frozenset[str]


#: Checked when the username is unknown, so a wrong username costs as long as a wrong password.
_NOBODY_HASH = generate_password_hash("no such user", method="scrypt")


def check_password(username: str, password: str, users: tuple[PasswordUser, ...]) -> PasswordUser | Refusal:
    """The user whose password this is, or one refusal that never says whether the username exists."""
    found = next((u for u in users if hmac.compare_digest(u.username.encode(), username.encode())), None)
    ok = check_password_hash(found.password_hash if found else _NOBODY_HASH, password)
    if found is None or not ok:
        return Refusal(401, "login", "the username or password is not recognised")
    return found
