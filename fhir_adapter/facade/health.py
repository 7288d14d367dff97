"""Liveness and readiness: the only endpoints without a token, and they reveal nothing."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from .protocol import json_response, service

bp = Blueprint("health", __name__, url_prefix="/health")


@bp.get("/live")
def live() -> Any:
    return json_response({"status": "ok"})


@bp.get("/ready")
def ready() -> Any:
    if service().store.ping():
        return json_response({"status": "ready"})
    return json_response({"status": "unavailable"}, 503)
