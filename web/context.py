"""Request-scoped access to the process runtime and the current principal."""
from __future__ import annotations

from flask import current_app, g, request
from flask_login import current_user

from scope.access import Principal, principal_from_grants
from scope.errors import Unauthorized
from wiring.runtime import Runtime


def runtime() -> Runtime:
    return current_app.extensions["valetkey"]


def request_id() -> str:
    """This request's id (set before every request in web/__init__.py; echoed as X-Request-ID)."""
    return str(getattr(g, "request_id", "") or "")


def source() -> str:
    """Audit source of this request: the browser session is ``web``, a bearer token ``api``, and a
    verified Slack request ``slack`` (web/slack.py sets it with the principal it mapped)."""
    if getattr(g, "source", None):
        return str(g.source)
    return "api" if request.headers.get("Authorization", "").startswith("Bearer ") else "web"


def principal() -> Principal:
    """The signed-in principal with grants resolved (cached for the request); 401 if none."""
    p = getattr(g, "principal", None)
    if p is not None:
        return p
    if not current_user.is_authenticated:
        raise Unauthorized("Sign in, or send an API token as 'Authorization: Bearer <token>'.")
    user = current_user.user
    grants = runtime().users.grants_for(user.subjects)
    p = principal_from_grants(user.email, user.name, user.id, [(gr.environment, gr.role) for gr in grants])
    g.principal = p
    return p
