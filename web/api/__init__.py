"""The JSON API under /api/v1, documented by flask-smorest from the marshmallow schemas."""
from __future__ import annotations

from flask import Flask
from flask_smorest import Api

from web.api.schemas import ProblemSchema


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
    from web.api import access, audit, environments, flush, hooks, jobs, logs, me, schedule, tasks

    for module in (me, environments, jobs, logs, flush, tasks, schedule, hooks, audit, access):
        api.register_blueprint(module.blp)
    app.extensions["valetkey_api"] = api
