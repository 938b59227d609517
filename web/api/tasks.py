"""One-off tasks from the allowlist."""
from __future__ import annotations

from typing import Any

from web.api.blueprint import Blueprint
from web.api.schemas import JobSchema, RunTaskRequestSchema
from web.services.tasks import start_task_job

blp = Blueprint("tasks", __name__, url_prefix="/api/v1", description="One-off tasks from the allowlist")


@blp.post("/environments/<env>/tasks")
@blp.arguments(RunTaskRequestSchema, error_status_code=400)
@blp.response(202, JobSchema)
def run_task(args: dict[str, Any], env: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Run an allow-listed task definition family once (latest revision, no overrides) and follow it to STOPPED."""
    body = start_task_job(env, args["task_definition"], args.get("reason"))
    return body, 202, {"Location": body["url"]}
