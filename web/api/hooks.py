"""Signed redeploy webhooks for CI (GitHub Actions).

These views never look at Flask-Login (current_user / principal()): the
caller is a CI job, not a user, and an OIDC bearer token must not be taken
for an API token. CSRF does not apply to /hooks/* (no ambient credentials).
"""
from __future__ import annotations

from typing import Any

from flask import current_app, request
from flask.blueprints import BlueprintSetupState
from werkzeug.exceptions import RequestEntityTooLarge

from jobs.service import job_dict
from web.api.blueprint import Blueprint
from web.api.schemas import JobSchema
from web.webhook_service import RedeployHookSchema, RedeployWebhook

blp = Blueprint("hooks", __name__, url_prefix="/hooks", description="Webhooks for CI")
EXTENSION = "valetkey_hooks"
MAX_BODY = 64 * 1024  # {"environment", "service", "timestamp"} needs well under 1 KiB
from web.context import request_id


@blp.record_once
def _build(state: BlueprintSetupState) -> None:
    # One per app: the JWKS cache and the service-existence cache live as long as the process.
    state.app.extensions[EXTENSION] = RedeployWebhook.from_runtime(state.app.extensions["valetkey"])


@blp.post("/redeploy")
@blp.doc(
    # The HMAC alternative is a header parameter below, hence the empty requirement.
    security=[{"bearer": []}, {}],
    requestBody={"required": True, "content": {"application/json": {"schema": RedeployHookSchema}}},
    parameters=[
        {"in": "header", "name": "X-Hub-Signature-256", "schema": {"type": "string"},
         "description": "sha256=<hex HMAC-SHA256 of the raw body with the environment's webhook secret>"},
        {"in": "header", "name": "X-GitHub-Delivery", "schema": {"type": "string"},
         "description": "unique per delivery: a repeat answers with the job of the first"},
    ],
)
@blp.response(202, JobSchema)
def redeploy() -> tuple[dict[str, Any], int, dict[str, str]]:
    """Redeploy a service from CI, authenticated by a body signature or a GitHub Actions OIDC token."""
    hooks: RedeployWebhook = current_app.extensions[EXTENSION]
    rid = request_id()
    request.max_content_length = MAX_BODY
    try:
        raw = request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise hooks.refuse_oversized(MAX_BODY, rid) from None
    caller = hooks.authenticate(request.headers, raw, rid)
    data = hooks.parse(caller, raw, rid)
    job, repeated = hooks.start(caller, data["environment"], data["service"],
                                request.headers.get("X-GitHub-Delivery"), rid, data["timestamp"])
    body = job_dict(job)
    headers = {"Location": body["url"]}
    if repeated:
        headers["X-Valetkey-Repeated-Delivery"] = "true"
    return body, 202, headers
