"""Fixtures for HTTP tests of the facade: an app on a fresh SQLite store, tokens per role, sample forms."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from fhir_adapter.access import TokenGrant
from fhir_adapter.config import Settings, hash_token
from fhir_adapter.form import PROFILES_DIR
from fhir_adapter.server import create_app
from fhir_adapter.store import Store

ROLES: dict[str, frozenset[str]] = {
    "ehr": frozenset({"decision.read", "consent.read"}),
    "clinician": frozenset({"form.write", "consent.read", "decision.read"}),
    "engineer": frozenset({"validate"}),
    "admin": frozenset({"admin"}),
    "decider": frozenset({"decision.read"}),
}
TOKENS = {role: f"test-token-for-{role}-0123456789" for role in ROLES}
EXAMPLES = PROFILES_DIR / "examples"


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def example_form(name: str = "competent-under-16") -> dict[str, Any]:
    return copy.deepcopy(json.loads((EXAMPLES / f"form-{name}.json").read_text(encoding="utf-8")))


def grants() -> tuple[TokenGrant, ...]:
    return tuple(TokenGrant(role, hash_token(TOKENS[role]), scopes) for role, scopes in ROLES.items())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(f"sqlite:///{tmp_path}/casus.db")
    yield opened
    opened.close()


@pytest.fixture
def app(store: Store) -> Flask:
    return create_app(Settings(grants=grants(), max_body_bytes=200_000), store=store)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
