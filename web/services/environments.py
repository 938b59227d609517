"""Environments: one environment's live state and the service actions (restart, redeploy)."""
from __future__ import annotations

from typing import Any

from cloud.ecr import EcrImages
from cloud.ecs import EcsReader
from cloud.ecs_plan import plan_for
from jobs.kinds import RESTART
from jobs.service import job_dict
from scope.catalog import Environment
from scope.errors import NotFound, UpstreamError
from scope.roles import DISABLED_REFUSES, Permission, Role, allows
from scope.schedule_store import ScheduleStore
from web.context import principal, request_id, runtime, source
from web.guard import allow, audit_denied
from web.services.approvals import job_policy
from web.services.schedule import ScheduleControl


def schedule_state(env: Environment) -> dict[str, Any] | None:
    if env.schedule is None:
        return None
    rt = runtime()
    return ScheduleControl(ScheduleStore(rt.sessions), rt.audit, rt.redis).state(env)


def permissions(env: Environment, role: Role) -> list[str]:
    return [p.value for p in Permission
            if allows(role, p) and (p not in DISABLED_REFUSES or env.actions_allowed)]


def environment_detail(env: Environment, role: Role) -> dict[str, Any]:
    reader = EcsReader(runtime().aws.ecs(env, shared_reads=True), env.cluster)  # many viewers, one AWS read
    services = []
    for s in reader.services():
        rec = s.record()
        services.append({k: rec[k] for k in ("name", "status", "running", "desired", "pending",
                                              "task_definition", "image", "last_deployment_at",
                                              "rollout_state")})
    return {"name": env.name, "cls": env.cls, "enabled": env.enabled, "role": role.value,
            "services": services, "redis": sorted(env.redis), "run_tasks": list(env.run_tasks),
            "schedule": schedule_state(env), "permissions": permissions(env, role),
            "approval": env.approval, "require_reason": env.require_reason}


def plan_service_action(env: str, svc: str, action: str, permission: Permission) -> dict[str, Any]:
    """A dry run: what a restart/redeploy would do, or why it would be refused. Reads only: no job, no
    audit entry (authorization refusals are audited by ``allow`` as for a real request)."""
    environment, _ = allow(env, permission, action=action, target=svc)
    rt = runtime()
    kind = "restart" if action == RESTART else "redeploy"
    ecr = EcrImages(rt.aws.client(environment, "ecr"), environment.region)
    try:
        plan = plan_for(kind, EcsReader(rt.aws.ecs(environment), environment.cluster), ecr, svc,
                        autoscaling=rt.aws.client(environment, "application-autoscaling"))
    except NotFound as e:
        audit_denied(action, env, svc, e.detail)
        raise
    return plan.as_dict()


def _plan_for_approvers(env: str, svc: str, action: str, permission: Permission) -> dict[str, Any] | None:
    try:
        return plan_service_action(env, svc, action, permission)
    except UpstreamError:  # AWS unreadable right now: approvers still see the request, without a plan
        return None


def start_service_job(env: str, svc: str, action: str, permission: Permission,
                      reason: str | None = None) -> tuple[dict[str, Any], int, dict[str, str]]:
    environment, _ = allow(env, permission, action=action, target=svc)
    why, approval = job_policy(environment, action, svc, reason)
    rt = runtime()
    try:
        state = EcsReader(rt.aws.ecs(environment), environment.cluster).service(svc)
    except NotFound as e:
        audit_denied(action, env, svc, e.detail)
        raise
    # Approvers decide on what would happen, so a job that waits for them carries the plan.
    plan = _plan_for_approvers(env, svc, action, permission) if approval else None
    job = rt.jobs.create(action=action, environment=env, target=svc, actor=principal().actor, source=source(),
                         request_id=request_id(), reason=why, approval=approval, plan=plan,
                         params={"requested_task_definition": state.task_definition})
    body = job_dict(job)
    return body, 202, {"Location": body["url"]}
