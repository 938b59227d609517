"""The JSON API under /api/v1, documented by flask-smorest from the marshmallow schemas."""
from __future__ import annotations

import http
from typing import Any

from apispec import BasePlugin
from flask import Flask, current_app, request
from flask_smorest import Api
from flask_smorest.utils import prepare_response

from scope.errors import ValidationFailed
from web.api.schemas import ProblemSchema
from web.context import principal
from web.errors import PROBLEM

AUTHENTICATED = "valetkey_api_authenticated"


class ValetKeyApi(Api):
    """flask-smorest's Api, minus its own error handler: web.errors answers with problem+json."""

    ERROR_SCHEMA = ProblemSchema

    def _register_error_handlers(self) -> None:
        pass

    def _register_responses(self) -> None:
        # Every error answer is application/problem+json (web.errors), so document it as such.
        for status in http.HTTPStatus:
            if status >= 400:
                response = {"description": status.phrase, "schema": self.ERROR_SCHEMA}
                prepare_response(response, self.spec, PROBLEM)
                self.spec.components.response(status.name, response, lazy=True)
        response = {"description": "Default error response", "schema": self.ERROR_SCHEMA}
        prepare_response(response, self.spec, PROBLEM)
        self.spec.components.response("DEFAULT_ERROR", response, lazy=True)


class Conventions(BasePlugin):
    """Documents, once for every operation, what holds for all of them.

    The refusals any of them can answer (see DESIGN.md): 401 before anything else, 403/404 from
    the role and scope rules, 429 for too many failed sign-ins, 502/503 when AWS or our own
    Redis/database fails; with a body (or a JSON body sent anyway) 400 and 413; and 409 for a
    POST (a job already running, a delivery being processed). And that an empty query parameter
    (``?after=&wait=``) means the parameter was not given (web.api.schemas.QuerySchema).
    """

    ALWAYS = (401, 403, 404, 429, 502, 503)

    def operation_helper(self, path: str | None = None, operations: dict[str, Any] | None = None,
                         **kwargs: Any) -> None:
        for method, op in (operations or {}).items():
            if not isinstance(op, dict) or method == "parameters":
                continue
            codes = list(self.ALWAYS)
            if method == "post":
                codes += [400, 409, 413]
            elif op.get("parameters"):
                codes.append(400)
            for param in op.get("parameters", []):
                if isinstance(param, dict) and param.get("in") == "query":
                    param.setdefault("allowEmptyValue", True)
            responses = op.setdefault("responses", {})
            for code in codes:
                responses.setdefault(str(code), http.HTTPStatus(code).name)


def init_app(app: Flask) -> None:
    app.config.setdefault("API_TITLE", "Valet Key")
    app.config.setdefault("API_VERSION", "v1")
    app.config.setdefault("OPENAPI_VERSION", "3.0.3")
    app.config.setdefault("OPENAPI_URL_PREFIX", "/api/v1")
    app.config.setdefault("OPENAPI_JSON_PATH", "openapi.json")
    api = ValetKeyApi(app, spec_kwargs={
        "extra_plugins": [Conventions()],
        "info": {"description": "Scoped, queued, verified and audited operations on ECS environments."},
        "components": {"securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "session": {"type": "apiKey", "in": "cookie", "name": "session"}}},
        "security": [{"bearer": []}, {"session": []}],
    })
    from web.api import access, audit, environments, flush, hooks, jobs, logs, me, schedule, tasks

    modules = (me, environments, jobs, logs, flush, tasks, schedule, hooks, audit, access)
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
        # Every query parameter of the API is a single value: a repeated one is refused rather
        # than silently read as its first value (schemathesis: ?filter=a&filter=b was accepted).
        repeated = sorted(k for k, vs in request.args.lists() if len(vs) > 1)
        if repeated:
            raise ValidationFailed({k: ["given more than once; give it once"] for k in repeated})
