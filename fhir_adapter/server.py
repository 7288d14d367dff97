"""The Flask facade: the application factory.

``create_app(settings)`` follows Flask's tutorial pattern: configuration in,
blueprints registered, the consent service attached as an extension.  Views
stay thin (parse, call, render).  Every request, whichever route, goes through
the one request pipeline (``facade/pipeline.py``): request id, auth, security
headers, access log, and every failure as an OperationOutcome (4xx naming the
field, or a 500 carrying an incident id and nothing else).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Flask, request

from .config import Settings
from .consent_service import ConsentService
from .oauth_tokens import AccessTokenVerifier
from .store import Store
from .validation_workers import ValidationWorkers


def create_app(settings: Settings | None = None, *, store: Store | None = None) -> Flask:
    """Build the facade. ``settings`` defaults to the environment; ``store`` lets tests share one."""
    from .facade import cds_hooks, decisions_api, fhir_rest, forms_api, health, metrics, openapi, pages, sessions
    from .facade.pipeline import RequestPipeline, render_error
    from .facade.protocol import SERVICE_EXTENSION, flask_response

    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        CASUS_GRANTS=settings.grants,
        CASUS_PUBLIC_BASE_URL=settings.public_base_url,
        CASUS_USERS=settings.users,
        CASUS_OAUTH=settings.oauth,
        CASUS_OAUTH_VERIFIER=AccessTokenVerifier(settings.oauth) if settings.oauth else None,
        CASUS_OAUTH_TOKEN_ENDPOINT=settings.oauth.token_endpoint if settings.oauth else None,
        JSON_SORT_KEYS=False,
    )
    if store is None:
        store = Store.open(settings.database_url)  # a SQLite file and its folder are created private
    app.extensions[SERVICE_EXTENSION] = ConsentService(store, backdated_after=timedelta(days=settings.backdated_days))
    app.extensions[fhir_rest.VALIDATION_WORKERS_EXTENSION] = ValidationWorkers(settings.validate_concurrency)
    app.register_blueprint(health.bp)
    app.register_blueprint(forms_api.bp)
    app.register_blueprint(decisions_api.bp)
    app.register_blueprint(cds_hooks.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(pages.bp)
    app.extensions[sessions.BOOK_EXTENSION] = store.page_sessions(
        idle=timedelta(minutes=settings.session_idle_minutes), max_age=timedelta(hours=settings.session_max_hours)
    )
    app.extensions[sessions.THROTTLE_EXTENSION] = sessions.SignInThrottle(
        store.sign_in_failures(window=timedelta(minutes=settings.sign_in_window_minutes)),
        per_username=settings.sign_in_failures_per_username,
        per_address=settings.sign_in_failures_per_address,
    )
    app.register_blueprint(fhir_rest.bp, url_prefix="/fhir", name="fhir")
    app.register_blueprint(fhir_rest.bp, url_prefix="/fhir/R4", name="fhir_r4")
    app.register_blueprint(fhir_rest.bp, url_prefix="/fhir/R5", name="fhir_r5")

    @app.errorhandler(Exception)
    def any_error(exc: Exception) -> Any:  # raised inside a view Flask dispatched: rendered as the pipeline renders
        return flask_response(render_error(exc, request.url_rule.rule if request.url_rule else "-"))

    app.wsgi_app = RequestPipeline(app, lean={"decisions.decide": decisions_api.lean_decision(app)})  # type: ignore[method-assign]
    return app
