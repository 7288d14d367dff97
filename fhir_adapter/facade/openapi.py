"""Serves the facade's OpenAPI document, published at docs/openapi.json and shipped as package data."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from flask import Blueprint

from ..package_data import openapi_text
from .protocol import json_response, require

bp = Blueprint("openapi", __name__)


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    return json.loads(openapi_text())


@bp.get("/openapi.json")
@require(None)
def openapi() -> Any:
    return json_response(document())
