"""Environments: the list, one environment's live state, and the service actions."""
from __future__ import annotations

from typing import Any

from flask import request
from flask_smorest import Blueprint

from jobs.kinds import REDEPLOY, RESTART
from jobs.service import job_dict
from scope.access import visible_environments
from scope.errors import ValidationFailed
from scope.roles import Permission
from web.api.schemas import ActiveJobsSchema, EnvironmentDetailSchema, EnvironmentListSchema, JobSchema
from web.context import principal, runtime
from web.guard import allow
from web.services.environments import environment_detail, start_service_job
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


def _no_dry_run() -> None:
    """A client asking for a plan must never get a real restart instead.

    TODO(ecs-restart): the restart rewrite answers ``{"dry_run": true}`` with ``200 {plan}``
    and replaces this refusal; the pages offer the confirmation without a plan meanwhile.
    """
    body = request.get_json(silent=True)
    if isinstance(body, dict) and body.get("dry_run"):
        raise ValidationFailed({"dry_run": ["a plan is not available for this action yet; nothing was done"]})


@blp.post("/environments/<env>/services/<svc>/restart")
@blp.response(202, JobSchema)
def restart(env: str, svc: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Replace the service's tasks with fresh ones of the same version, then wait until healthy."""
    _no_dry_run()
    return start_service_job(env, svc, RESTART, Permission.RESTART)


@blp.post("/environments/<env>/services/<svc>/redeploy")
@blp.response(202, JobSchema)
def redeploy(env: str, svc: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Start a new deployment of the service's task definition so its image tag is resolved anew."""
    _no_dry_run()
    return start_service_job(env, svc, REDEPLOY, Permission.REDEPLOY)
