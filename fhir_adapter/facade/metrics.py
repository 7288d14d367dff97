"""``/metrics``: the sync metrics in the Prometheus text format, for a scraper holding the ``metrics.read`` scope."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from ..sync_metrics import CONTENT_TYPE, metrics_text
from .protocol import Answer, flask_response, require, service

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
@require("metrics.read")
def metrics() -> Any:
    return flask_response(Answer(200, metrics_text(service().store), CONTENT_TYPE))
