"""Environments: the list, one environment's live state, and the service actions."""
from __future__ import annotations

from typing import Any

from jobs.kinds import REDEPLOY, RESTART
from scope.access import visible_environments
from scope.roles import Permission
from web.api.blueprint import Blueprint
from web.api.schemas import EnvironmentDetailSchema, EnvironmentListSchema, JobSchema, ReasonSchema
from web.context import principal, runtime
from web.guard import allow
from web.services.environments import environment_detail, start_service_job

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


@blp.post("/environments/<env>/services/<svc>/restart")
@blp.arguments(ReasonSchema, error_status_code=400)
@blp.response(202, JobSchema)
def restart(args: dict[str, Any], env: str, svc: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Replace the service's tasks with fresh ones of the same version, then wait until healthy."""
    return start_service_job(env, svc, RESTART, Permission.RESTART, args.get("reason"))


@blp.post("/environments/<env>/services/<svc>/redeploy")
@blp.arguments(ReasonSchema, error_status_code=400)
@blp.response(202, JobSchema)
def redeploy(args: dict[str, Any], env: str, svc: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Start a new deployment of the service's task definition so its image tag is resolved anew."""
    return start_service_job(env, svc, REDEPLOY, Permission.REDEPLOY, args.get("reason"))
