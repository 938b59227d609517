"""The JSON API under /api/v1, documented by flask-smorest from the marshmallow schemas."""
from __future__ import annotations

from flask import Flask, current_app, request
from flask_smorest import Api

from web.api.schemas import ProblemSchema
from web.context import principal

AUTHENTICATED = "valetkey_api_authenticated"


class ValetKeyApi(Api):
    """flask-smorest's Api, minus its own error handler: web.errors answers with problem+json."""

    ERROR_SCHEMA = ProblemSchema

    def _register_error_handlers(self) -> None:
        pass


def init_app(app: Flask) -> None:
    app.config.setdefault("API_TITLE", "Valet Key")
    app.config.setdefault("API_VERSION", "v1")
    app.config.setdefault("OPENAPI_VERSION", "3.0.3")
    app.config.setdefault("OPENAPI_URL_PREFIX", "/api/v1")
    app.config.setdefault("OPENAPI_JSON_PATH", "openapi.json")
    api = ValetKeyApi(app, spec_kwargs={
        "info": {"description": "Scoped, queued, verified and audited operations on ECS environments."},
        "components": {"securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "session": {"type": "apiKey", "in": "cookie", "name": "session"}}},
        "security": [{"bearer": []}, {"session": []}],
    })
    from web.api import audit, environments, flush, hooks, jobs, logs, me, schedule, tasks

    modules = (me, environments, jobs, logs, flush, tasks, schedule, hooks, audit)
    for module in modules:
        api.register_blueprint(module.blp)
    app.extensions["valetkey_api"] = api
    # Every /api/v1 route but the public ones (openapi.json is flask-smorest's own
    # blueprint; /healthz and /readyz live elsewhere) and the webhook, which
    # authenticates by signature over the raw body before it parses anything.
    app.extensions[AUTHENTICATED] = frozenset(m.blp.name for m in modules if m is not hooks)
    app.before_request(authenticate_first)


def authenticate_first() -> None:
    """401 before any body or query is validated and before anything is looked up: an anonymous
    caller learns nothing from field errors, or from 404 versus 401 on an id."""
    if request.blueprint in current_app.extensions[AUTHENTICATED]:
        principal()
        # Then the body, once, with the bounded parser (cached for the view's own schema): a view
        # that takes no body must not accept, or choke on, one that is nested 50,000 deep.
        if request.is_json and request.get_data(cache=True):
            request.get_json()
