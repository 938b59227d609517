"""Redis flush by pattern: a dry-run count answered at once, or a flush job."""
from __future__ import annotations

import logging
from typing import Any

from flask import Response, jsonify

from web.api.blueprint import Blueprint
from web.api.schemas import FlushPreviewSchema, FlushRequestSchema, JobSchema
from web.services.flush import preview_flush, start_flush_job

blp = Blueprint("flush", __name__, url_prefix="/api/v1", description="Redis flush by pattern")
log = logging.getLogger("valetkey.web")


@blp.post("/environments/<env>/redis/<target>/flush")
@blp.arguments(FlushRequestSchema, error_status_code=400)
@blp.response(200, FlushPreviewSchema)
@blp.alt_response(202, schema=JobSchema, description="the flush job was queued")
def flush(args: dict[str, Any], env: str, target: str) -> Any:
    """Dry run (default): count the keys matching ``pattern``. With ``dry_run: false``: start the flush job."""
    if args["dry_run"]:
        return preview_flush(env, target, args["pattern"])
    body = start_flush_job(env, target, args["pattern"], args.get("reason"))
    resp: Response = jsonify(JobSchema().dump(body))
    return resp, 202, {"Location": body["url"]}
