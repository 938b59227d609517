"""Environments: the list, one environment's live state, and the service actions."""
from __future__ import annotations

from typing import Any

from flask import Response, jsonify

from jobs.kinds import REDEPLOY, RESTART
from jobs.service import job_dict
from scope.access import visible_environments
from scope.roles import Permission
from web.api.blueprint import Blueprint
from web.api.schemas import (
    ActiveJobsSchema,
    EnvironmentDetailSchema,
    EnvironmentListSchema,
    JobSchema,
    PlanSchema,
    ServiceActionRequestSchema,
)
from web.context import principal, runtime
from web.guard import allow
from web.services.environments import environment_detail, plan_service_action, start_service_job
from web.services.jobs import active_jobs

blp = Blueprint("environments", __name__, url_prefix="/api/v1", description="Environments and services")


@blp.get("/environments")
@blp.response(200, EnvironmentListSchema)
def list_environments() -> dict[str, Any]:
    """The environments you hold a role in (others do not exist for you)."""
    envs = visible_environments(principal(), runtime().catalog)
    return {"environments": [{"name": e.name, "cls": e.cls, "enabled": e.enabled, "role": r.value}
                             for e, r in envs]}


@blp.get("/environments/<env>")
@blp.response(200, EnvironmentDetailSchema)
def get_environment(env: str) -> dict[str, Any]:
    """One environment with the live state of its services, read from ECS."""
    environment, role = allow(env, Permission.VIEW)
    return environment_detail(environment, role)


@blp.get("/environments/<env>/active-jobs")
@blp.response(200, ActiveJobsSchema)
def get_active_jobs(env: str) -> dict[str, Any]:
    """The environment's jobs that are not finished yet (the environment page polls this; no AWS call)."""
    environment, _ = allow(env, Permission.VIEW)
    return {"jobs": [job_dict(j) for j in active_jobs(environment.name)]}


def _service_action(args: dict[str, Any], env: str, svc: str, action: str, permission: Permission) -> Any:
    if args.get("dry_run"):
        return plan_service_action(env, svc, action, permission)
    body, status, headers = start_service_job(env, svc, action, permission, args.get("reason"))
    resp: Response = jsonify(JobSchema().dump(body))
    return resp, status, headers


@blp.post("/environments/<env>/services/<svc>/restart")
@blp.arguments(ServiceActionRequestSchema, required=False, error_status_code=400)
@blp.response(200, PlanSchema, description="dry run: the plan; nothing was done")
@blp.alt_response(202, schema=JobSchema, description="the restart job was queued")
def restart(args: dict[str, Any], env: str, svc: str) -> Any:
    """Replace the service's tasks with fresh ones of the same image, then wait until they are healthy.

    A new ECS deployment when every running digest is still what its tag names in ECR, else StopTask in
    batches; refused for CODE_DEPLOY/EXTERNAL services, a deployment in progress, a running image deleted
    from ECR, no running task. ``dry_run: true`` answers the plan and does nothing."""
    return _service_action(args, env, svc, RESTART, Permission.RESTART)


@blp.post("/environments/<env>/services/<svc>/redeploy")
@blp.arguments(ServiceActionRequestSchema, required=False, error_status_code=400)
@blp.response(200, PlanSchema, description="dry run: the plan; nothing was done")
@blp.alt_response(202, schema=JobSchema, description="the redeploy job was queued")
def redeploy(args: dict[str, Any], env: str, svc: str) -> Any:
    """Start a new deployment of the service's task definition so its image tags are resolved anew.

    ``dry_run: true`` answers the plan and does nothing."""
    return _service_action(args, env, svc, REDEPLOY, Permission.REDEPLOY)
