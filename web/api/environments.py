"""Environments: the list, one environment's live state, and the service actions."""
from __future__ import annotations

from typing import Any

from flask import g
from flask_smorest import Blueprint

from jobs.kinds import REDEPLOY, RESTART
from jobs.schedule_control import ScheduleControl
from jobs.service import job_dict
from scope.access import visible_environments
from scope.catalog import Environment
from scope.ecs_state import EcsReader
from scope.errors import NotFound
from scope.roles import MUTATING, Permission, Role, allows
from scope.schedule_state import ScheduleStore
from web.api.guard import allow, audit_denied
from web.api.schemas import EnvironmentDetailSchema, EnvironmentListSchema, JobSchema
from web.context import principal, runtime, source

blp = Blueprint("environments", __name__, url_prefix="/api/v1", description="Environments and services")


def schedule_state(env: Environment) -> dict[str, Any] | None:
    if env.schedule is None:
        return None
    rt = runtime()
    return ScheduleControl(ScheduleStore(rt.sessions), rt.audit, rt.redis).state(env)


def permissions(env: Environment, role: Role) -> list[str]:
    return [p.value for p in Permission
            if allows(role, p) and (p not in MUTATING or env.actions_allowed)]


def environment_detail(env: Environment, role: Role) -> dict[str, Any]:
    reader = EcsReader(runtime().aws.ecs(env), env.cluster)
    services = []
    for s in reader.services():
        rec = s.record()
        services.append({k: rec[k] for k in ("name", "status", "running", "desired", "pending",
                                              "task_definition", "image", "last_deployment_at",
                                              "rollout_state")})
    return {"name": env.name, "cls": env.cls, "enabled": env.enabled, "role": role.value,
            "services": services, "redis": sorted(env.redis), "run_tasks": list(env.run_tasks),
            "schedule": schedule_state(env), "permissions": permissions(env, role)}


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


def start_service_job(env: str, svc: str, action: str, permission: Permission) -> tuple[dict[str, Any], int, dict[str, str]]:
    environment, _ = allow(env, permission, action=action, target=svc)
    rt = runtime()
    try:
        state = EcsReader(rt.aws.ecs(environment), environment.cluster).service(svc)
    except NotFound as e:
        audit_denied(action, env, svc, e.detail)
        raise
    job = rt.jobs.create(action=action, environment=env, target=svc, actor=principal().actor, source=source(),
                         request_id=getattr(g, "request_id", ""),
                         params={"requested_task_definition": state.task_definition})
    body = job_dict(job)
    return body, 202, {"Location": body["url"]}


@blp.post("/environments/<env>/services/<svc>/restart")
@blp.response(202, JobSchema)
def restart(env: str, svc: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Replace the service's tasks with fresh ones of the same version, then wait until healthy."""
    return start_service_job(env, svc, RESTART, Permission.RESTART)


@blp.post("/environments/<env>/services/<svc>/redeploy")
@blp.response(202, JobSchema)
def redeploy(env: str, svc: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Start a new deployment of the service's task definition so its image tag is resolved anew."""
    return start_service_job(env, svc, REDEPLOY, Permission.REDEPLOY)
