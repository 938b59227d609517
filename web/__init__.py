"""The Flask application factory."""
from __future__ import annotations

import logging
import os
import re
import uuid
from typing import Any, Mapping

from flask import Flask, Response, g, request, session
from flask_wtf.csrf import CSRFProtect

from scope.errors import ConfigError
from scope.settings import Settings
from wiring.runtime import Runtime

csrf = CSRFProtect()
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
from web.context import request_id
from web.json_body import BoundedJSONProvider


def create_app(config: Mapping[str, Any] | None = None, runtime: Runtime | None = None) -> Flask:
    """Build the app. ``config`` may hold Flask keys and VALETKEY_* overrides of the environment."""
    app = Flask(__name__, instance_relative_config=True)
    app.json = BoundedJSONProvider(app)  # request.get_json: bounded nesting, errors name the body
    app.config.from_mapping(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=12 * 3600,
        WTF_CSRF_CHECK_DEFAULT=False,  # checked in before_request: session-authenticated writes only
        WTF_CSRF_TIME_LIMIT=None,
        JSON_SORT_KEYS=False,
        MAX_CONTENT_LENGTH=1024 * 1024,
    )
    app.config.from_prefixed_env("VALETKEY")
    overrides = dict(config or {})
    app.config.update({k: v for k, v in overrides.items() if not k.startswith("VALETKEY_")})

    if runtime is None:
        environ = {**os.environ, **{k: str(v) for k, v in overrides.items() if k.startswith("VALETKEY_")}}
        settings = Settings.from_env(environ)
        runtime = Runtime.from_settings(settings)
    settings = runtime.settings
    if not settings.secret_key:
        raise ConfigError("environment", "VALETKEY_SECRET_KEY", "required: set a long random value")
    app.config["SECRET_KEY"] = settings.secret_key
    app.config["SESSION_COOKIE_SECURE"] = settings.base_url.startswith("https://")
    app.extensions["valetkey"] = runtime

    from web import admin, api, auth, errors, health, metrics, pages, saml, slack

    errors.init_app(app)
    csrf.init_app(app)
    _request_hooks(app)  # first: the request id and CSRF come before any blueprint's own checks
    auth.init_app(app)
    saml.init_app(app)
    app.register_blueprint(health.bp)
    metrics.init_app(app)
    api.init_app(app)
    pages.init_app(app)
    admin.init_app(app)
    slack.init_app(app)
    if not app.debug and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return app


def _request_hooks(app: Flask) -> None:
    @app.before_request
    def _request_id() -> None:
        rid = request.headers.get("X-Request-ID", "")
        g.request_id = rid if _REQUEST_ID.match(rid) else uuid.uuid4().hex

    @app.before_request
    def _csrf() -> None:
        # Only ambient credentials (the session cookie) can be abused cross-site:
        # bearer-token calls, signed webhooks and the SAML ACS are exempt, and an
        # API call without a session gets its 401 rather than a CSRF error.
        if request.method not in ("POST", "PUT", "PATCH", "DELETE") or request.routing_exception is not None \
                or not app.config.get("WTF_CSRF_ENABLED", True):
            return
        if request.headers.get("Authorization", "").startswith("Bearer ") \
                or request.path.startswith(("/hooks/", "/slack/")) \
                or request.endpoint in app.config.get("CSRF_EXEMPT_ENDPOINTS", ()):
            return
        if request.path.startswith("/api/") and "_user_id" not in session:
            return
        csrf.protect()

    @app.after_request
    def _headers(resp: Response) -> Response:
        resp.headers["X-Request-ID"] = request_id()
        resp.headers.setdefault("Content-Security-Policy",
                                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        if request.path.startswith("/api/"):
            resp.headers.setdefault("Cache-Control", "no-store")
        return resp
