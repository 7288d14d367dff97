"""The Flask facade: application factory, error rendering, security headers, request logging.

``create_app(settings)`` follows Flask's tutorial pattern: configuration in,
blueprints registered, the consent service attached as an extension.  Views
stay thin (parse, call, render); every failure leaves as an OperationOutcome
with a 4xx status, and an unexpected error as a 500 OperationOutcome that
carries an incident id and nothing else.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

from flask import Flask, g, request
from werkzeug.exceptions import HTTPException

from .config import Settings
from .consent_service import ConsentService, FormIdMismatch
from .outcome import InvalidInput, error
from .store import AlreadyExists, NotFound, Store, VersionConflict

log = logging.getLogger("fhir_adapter.http")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_SECURITY_HEADER_ITEMS = tuple(SECURITY_HEADERS.items())


def create_app(settings: Settings | None = None, *, store: Store | None = None) -> Flask:
    """Build the facade. ``settings`` defaults to the environment; ``store`` lets tests share one."""
    from .facade import cds_hooks, decisions_api, fhir_rest, forms_api, health, openapi
    from .facade.decision_fast_path import DecisionFastPath

    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        CASUS_GRANTS=settings.grants,
        CASUS_PUBLIC_BASE_URL=settings.public_base_url,
        JSON_SORT_KEYS=False,
    )
    if store is None:
        _ensure_sqlite_directory(settings.database_url)
        store = Store.open(settings.database_url)
    service = app.extensions["casus"] = ConsentService(store)
    app.register_blueprint(health.bp)
    app.register_blueprint(forms_api.bp)
    app.register_blueprint(decisions_api.bp)
    app.register_blueprint(cds_hooks.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(fhir_rest.bp, url_prefix="/fhir", name="fhir")
    app.register_blueprint(fhir_rest.bp, url_prefix="/fhir/R4", name="fhir_r4")
    app.register_blueprint(fhir_rest.bp, url_prefix="/fhir/R5", name="fhir_r5")
    _register_errors(app)
    app.before_request(_start_timer)
    app.after_request(_finish)
    # The EHR's hot route skips Flask's dispatch when the answer is a verdict (see decision_fast_path).
    app.wsgi_app = DecisionFastPath(app.wsgi_app, service, lambda: app.config["CASUS_GRANTS"],  # type: ignore[method-assign]
                                    _SECURITY_HEADER_ITEMS)
    return app


def _ensure_sqlite_directory(url: str) -> None:
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def _start_timer() -> None:
    g.started = time.perf_counter()
    g.request_id = (request.headers.get("X-Request-ID") or "")[:64] or uuid.uuid4().hex


def _finish(response: Any) -> Any:
    # No view sets these headers, so they are appended rather than looked up one by one (hot path).
    response.headers.extend(_SECURITY_HEADER_ITEMS)
    response.headers["X-Request-ID"] = g.get("request_id", "")
    if log.isEnabledFor(logging.INFO):
        from .facade.protocol import log_request

        rule = request.url_rule.rule if request.url_rule else "<unmatched>"
        who = g.principal.name if "principal" in g else "-"
        elapsed = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
        log_request(request.method, rule, response.status_code, elapsed, who, g.get("request_id", ""))
    return response


def _register_errors(app: Flask) -> None:
    from .facade.protocol import HttpProblem, etag, outcome_response

    @app.errorhandler(HttpProblem)
    def http_problem(exc: HttpProblem) -> Any:
        return outcome_response(exc.status, exc.issues, exc.headers)

    @app.errorhandler(InvalidInput)
    def invalid_input(exc: InvalidInput) -> Any:
        status = 422 if exc.issues and exc.issues[0].code == "processing" else 400
        return outcome_response(status, exc.issues)

    @app.errorhandler(NotFound)
    def not_found(exc: NotFound) -> Any:
        return outcome_response(404, [error("not-found", "", "no such resource")])

    @app.errorhandler(AlreadyExists)
    def already_exists(exc: AlreadyExists) -> Any:
        return outcome_response(409, [error("duplicate", "formId", "a form with this id already exists; update it instead")])

    @app.errorhandler(VersionConflict)
    def version_conflict(exc: VersionConflict) -> Any:
        current = exc.current_version
        return outcome_response(412, [error("conflict", "If-Match",
                                            f"the form has changed: version {current} is current; read it and apply your change again")],
                                {"ETag": etag(current)} if current else None)

    @app.errorhandler(FormIdMismatch)
    def form_id_mismatch(exc: FormIdMismatch) -> Any:
        return outcome_response(400, [error("invariant", "formId", str(exc))])

    @app.errorhandler(HTTPException)
    def http_exception(exc: HTTPException) -> Any:
        code = {404: "not-found", 405: "not-supported", 413: "too-long", 415: "not-supported"}.get(exc.code or 500, "processing")
        headers = {"Allow": exc.get_response().headers.get("Allow", "")} if exc.code == 405 else None
        return outcome_response(exc.code or 500, [error(code, "", exc.description or exc.name)], headers)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Any:
        incident = uuid.uuid4().hex
        # The exception's message may quote input; log only its type and where.
        log.error("unexpected %s in %s incident=%s", type(exc).__name__, request.url_rule.rule if request.url_rule else "-", incident)
        return outcome_response(500, [error("exception", "", f"internal error; incident {incident}")])
