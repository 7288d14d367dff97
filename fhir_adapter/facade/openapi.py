"""Serves the facade's OpenAPI document, kept in the repository at docs/openapi.json."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from flask import Blueprint

from .protocol import json_response, require

bp = Blueprint("openapi", __name__)
OPENAPI_PATH = Path(__file__).resolve().parent.parent.parent / "docs" / "openapi.json"


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    return json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))


@bp.get("/openapi.json")
@require(None)
def openapi() -> Any:
    return json_response(document())
