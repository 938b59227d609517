"""ECS API calls the simulator answers (or post-processes) instead of moto.

Each handler gets the simulator, moto's response object (parsed parameters,
account and Region) and moto's own handler for delegation, and returns a
moto ``ActionResult`` so moto serializes it with botocore's shapes.
"""
from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any, cast

from moto.core.responses import ActionResult

from .enums import ControllerType, StopCode, TaskStatus
from .errors import (
    ConflictException,
    InvalidParameterException,
    ServiceNotFoundException,
)
from .region import ClientTokenEntry, RegionState
from .services import SimService
from .simulator import Simulator, _ecs_backend
from .tasks import USER_STOP_REASON, SimTask

Original = Callable[[Any], ActionResult]  # moto's own handler

_RUN_TASK_PARAMS = ("taskDefinition", "count", "startedBy", "group", "launchType", "networkConfiguration",
                    "overrides", "platformVersion", "capacityProviderStrategy", "tags", "propagateTags",
                    "enableExecuteCommand", "enableECSManagedTags", "placementConstraints", "placementStrategy",
                    "referenceId", "volumeConfigurations")


def _body(result: ActionResult) -> dict[str, Any]:
    return cast(dict[str, Any], result.result)


def _rs(sim: Simulator, resp: Any) -> RegionState:
    return sim.region(resp.region, resp.current_account)


def _cluster(resp: Any) -> str:
    return RegionState.cluster_name(resp._get_param("cluster"))


def adopt_moto_tasks(sim: Simulator, rs: RegionState) -> int:
    """Tasks moto holds that the simulator never saw (made before install): already RUNNING. How many."""
    backend = _ecs_backend(rs.account, rs.region)
    now = sim.clock.now()
    adopted = 0
    for per_cluster in backend.tasks.values():
        for arn, mt in list(per_cluster.items()):
            if arn not in rs.tasks:
                sim.adopt_task(rs, mt, now, running=True)
                adopted += 1
    return adopted


def sync_service(sim: Simulator, svc: SimService, read: bool) -> None:
    """Write the simulated view onto moto's Service object, which moto then serializes."""
    t = sim.timings
    if read:
        snap = svc.read_counts(sim.clock.now(), t.count_lag_seconds, t.count_lag_reads, t.count_lag_max_seconds)
    else:
        snap = svc.visible or svc.snapshots[-1]
    for d in svc.deployments:
        running, pending = snap.deployments.get(d.id, (0, 0))
        d.counts = {"running": running, "pending": pending}
    ms = svc.moto_service
    ms.running_count, ms.pending_count = snap.service
    ms.desired_count = svc.desired
    ms.task_definition = svc.td_arn
    ms.deployments = svc.render_deployments()
    ms.deployment_configuration = svc.deployment_configuration()
    ms.health_check_grace_period_seconds = svc.health_check_grace or None
    ms.events = svc.events
    ms.current_service_deployment = svc.records[-1].arn if svc.records else None


def _service(sim: Simulator, rs: RegionState, resp: Any, ref_param: str = "service") -> SimService:
    svc = rs.service_by_arn_or_name(_cluster(resp), str(resp._get_param(ref_param) or ""))
    if svc is None or svc.deleted:
        raise ServiceNotFoundException()
    return svc


# ---- tasks -----------------------------------------------------------------------------------------
def run_task(sim: Simulator, resp: Any, original: Original) -> ActionResult:
    rs = _rs(sim, resp)
    cluster = _cluster(resp)
    token = resp._get_param("clientToken")
    now = sim.clock.now()
    fingerprint = ""
    if token:
        params = {k: resp._get_param(k) for k in _RUN_TASK_PARAMS}
        # A family name means its latest ACTIVE revision: a revision registered in between changes
        # the request (aws-facts A5), so compare the resolved ARN.
        params["taskDefinition"] = _ecs_backend(rs.account, rs.region).describe_task_definition(
            params["taskDefinition"]).arn
        fingerprint = json.dumps(params, sort_keys=True, default=str)
        entry = rs.client_tokens.get((cluster, token))
        if entry is not None and now - entry.at <= sim.timings.client_token_ttl:
            if entry.fingerprint != fingerprint:
                raise ConflictException(
                    f"The clientToken {token} was already used with different parameters; "
                    f"tasks already started with it: {', '.join(entry.task_arns)}.", entry.task_arns)
            tasks = [rs.tasks[a] for a in entry.task_arns if a in rs.tasks]
            return ActionResult({"tasks": [t.render() for t in tasks], "failures": []})
    result = original(resp)
    made = [sim.adopt_task(rs, mt, now) for mt in _body(result)["tasks"]]
    if token:
        rs.client_tokens[(cluster, token)] = ClientTokenEntry(fingerprint, [t.arn for t in made], now)
    sim.observe_now(rs)
    return ActionResult({"tasks": [t.render() for t in made], "failures": []})


def stop_task(sim: Simulator, resp: Any, original: Original) -> ActionResult:
    rs = _rs(sim, resp)
    adopted = adopt_moto_tasks(sim, rs)
    t = rs.find_task(_cluster(resp), str(resp._get_param("task") or ""))
    if t is None:
        raise InvalidParameterException("The referenced task was not found.")
    reason = resp._get_param("reason") or USER_STOP_REASON
    sim.stop_task(rs, t, sim.clock.now(), StopCode.USER_INITIATED, reason)
    owner = rs.services.get((t.cluster_name, t.service)) if t.service is not None else None
    if owner is not None and not adopted:  # only the stopped task's service changed
        sim.observe_now(rs, owner)
    else:
        sim.observe_now(rs)
    return ActionResult({"task": t.render()})


def describe_tasks(sim: Simulator, resp: Any, original: Original) -> ActionResult:
    rs = _rs(sim, resp)
    adopt_moto_tasks(sim, rs)
    cluster = _cluster(resp)
    include_tags = "TAGS" in (resp._get_param("include") or [])
    found: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    for ref in resp._get_param("tasks") or []:
        t = rs.find_task(cluster, ref)
        if t is None:
            arn = ref if ref.startswith("arn:") else f"arn:aws:ecs:{rs.region}:{rs.account}:task/{cluster}/{ref}"
            failures.append({"arn": arn, "reason": "MISSING"})
        else:
            found.append(t.render(include_tags))
    return ActionResult({"tasks": found, "failures": failures})


def list_tasks(sim: Simulator, resp: Any, original: Original) -> ActionResult:
    rs = _rs(sim, resp)
    adopt_moto_tasks(sim, rs)
    cluster = _cluster(resp)
    family, started_by = resp._get_param("family"), resp._get_param("startedBy")
    service, launch_type = resp._get_param("serviceName"), resp._get_param("launchType")
    # "The default status filter is RUNNING" (ListTasks API reference).
    desired = resp._get_param("desiredStatus") or "RUNNING"
    out: list[SimTask] = []
    for t in sorted(rs.tasks.values(), key=lambda t: (t.created_at, t.arn)):
        if t.cluster_name != cluster:
            continue
        if str(t.desired_status) != desired and not (desired == "PENDING" and t.last_status == TaskStatus.PENDING):
            continue
        if family and t.td_arn.rsplit("/", 1)[-1].split(":")[0] != family:
            continue
        if started_by and t.started_by != started_by:
            continue
        if service and t.service != str(service).rsplit("/", 1)[-1]:
            continue
        if launch_type and t.launch_type != launch_type:
            continue
        out.append(t)
    start = int(resp._get_param("nextToken") or 0)
    size = int(resp._get_param("maxResults") or 100)
    page = out[start:start + size]
    body: dict[str, Any] = {"taskArns": [t.arn for t in page]}
    if start + size < len(out):
        body["nextToken"] = str(start + size)
    return ActionResult(body)


# ---- services ----------------------------------------------------------------------------------------
def create_service(sim: Simulator, resp: Any, original: Original) -> ActionResult:
    rs = _rs(sim, resp)
    result = original(resp)
    ms = _body(result)["service"]
    svc = sim.adopt_service(rs, ms, {
        "deploymentConfiguration": resp._get_param("deploymentConfiguration"),
        "healthCheckGracePeriodSeconds": resp._get_param("healthCheckGracePeriodSeconds")})
    sync_service(sim, svc, read=False)
    sim.observe_now(rs, svc)
    return result


def describe_services(sim: Simulator, resp: Any, original: Original) -> ActionResult:
    rs = _rs(sim, resp)
    result = original(resp)
    for ms in _body(result)["services"]:
        svc = rs.services.get((ms.cluster_name, ms.name))
        if svc is None and ms.status == "ACTIVE":
            svc = sim.adopt_service(rs, ms, {})
        if svc is not None:
            sync_service(sim, svc, read=True)
    return result


def update_service(sim: Simulator, resp: Any, original: Original) -> ActionResult:
    rs = _rs(sim, resp)
    svc = _service(sim, rs, resp)
    force = bool(resp._get_param("forceNewDeployment"))
    td_ref = resp._get_param("taskDefinition")
    if svc.controller != ControllerType.ECS:
        ctl = str(svc.controller)
        code_deploy = svc.controller == ControllerType.CODE_DEPLOY
        hint = " Use AWS CodeDeploy to trigger a new deployment." if code_deploy else ""
        if td_ref:
            # Wording as AWS returns it (boto/boto3#1936).
            raise InvalidParameterException(
                f"Unable to update task definition on services with a {ctl} deployment controller.{hint}")
        if force:
            raise InvalidParameterException(
                f"Unable to force a new deployment on services with a {ctl} deployment controller.{hint}")
    new_td = None
    if td_ref:
        new_td = _ecs_backend(rs.account, rs.region).describe_task_definition(td_ref).arn
    result = original(resp)
    now = sim.clock.now()
    if resp._get_param("desiredCount") is not None:
        svc.desired = int(resp._get_param("desiredCount"))
    if resp._get_param("deploymentConfiguration"):
        svc.set_deployment_configuration(resp._get_param("deploymentConfiguration"))
    if resp._get_param("healthCheckGracePeriodSeconds") is not None:
        svc.health_check_grace = int(resp._get_param("healthCheckGracePeriodSeconds"))
    if svc.controller == ControllerType.ECS and (force or (new_td is not None and new_td != svc.td_arn)):
        sim.new_deployment(rs, svc, new_td or svc.td_arn, now)
    elif new_td is None and svc.moto_service is not None:
        svc.moto_service.task_definition = svc.td_arn
    sync_service(sim, svc, read=False)
    sim.observe_now(rs, svc)
    return result


def delete_service(sim: Simulator, resp: Any, original: Original) -> ActionResult:
    rs = _rs(sim, resp)
    svc = rs.service_by_arn_or_name(_cluster(resp), str(resp._get_param("service") or ""))
    result = original(resp)
    if svc is not None:
        svc.deleted = True
        for t in rs.tasks_of(svc):
            p = svc.primary
            sim.stop_task(rs, t, sim.clock.now(), StopCode.SERVICE_SCHEDULER_INITIATED,
                          f"Scaling activity initiated by (deployment {p.id if p else svc.name})")
    return result


# ---- service deployments and revisions (moto has none) -------------------------------------------------
def _revision_counts(sim: Simulator, rs: RegionState, svc: SimService) -> dict[str, tuple[int, int, int]]:
    counts: dict[str, tuple[int, int, int]] = {}
    for d in svc.deployments:
        mine = [t for t in rs.tasks_of(svc) if t.deployment_id == d.id]
        requested = svc.desired if d is svc.primary else 0
        counts[d.revision.arn] = (requested, sum(1 for t in mine if t.last_status == TaskStatus.RUNNING),
                                  sum(1 for t in mine if t.desired_status == TaskStatus.RUNNING
                                      and t.last_status in (TaskStatus.PROVISIONING, TaskStatus.PENDING,
                                                            TaskStatus.ACTIVATING)))
    return counts


def describe_service_deployments(sim: Simulator, resp: Any, original: Original) -> ActionResult:
    rs = _rs(sim, resp)
    found, failures = [], []
    for arn in resp._get_param("serviceDeploymentArns") or []:
        hit = next(((svc, r) for svc in rs.services.values() for r in svc.records if r.arn == arn), None)
        if hit is None:
            failures.append({"arn": arn, "reason": "MISSING"})
        else:
            svc, rec = hit
            found.append(rec.render(_revision_counts(sim, rs, svc)))
    return ActionResult({"serviceDeployments": found, "failures": failures})


def _ts(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, dt.datetime):
        return v.timestamp()
    return float(v)


def list_service_deployments(sim: Simulator, resp: Any, original: Original) -> ActionResult:
    rs = _rs(sim, resp)
    svc = _service(sim, rs, resp)
    statuses = set(resp._get_param("status") or [])
    created = resp._get_param("createdAt") or {}
    before, after = _ts(created.get("before")), _ts(created.get("after"))
    recs = [r for r in reversed(svc.records)  # newest first
            if (not statuses or str(r.status) in statuses)
            and (before is None or r.created_at <= before) and (after is None or r.created_at >= after)]
    start = int(resp._get_param("nextToken") or 0)
    size = int(resp._get_param("maxResults") or 20)
    body: dict[str, Any] = {"serviceDeployments": [r.brief() for r in recs[start:start + size]]}
    if start + size < len(recs):
        body["nextToken"] = str(start + size)
    return ActionResult(body)


def describe_service_revisions(sim: Simulator, resp: Any, original: Original) -> ActionResult:
    rs = _rs(sim, resp)
    found, failures = [], []
    for arn in resp._get_param("serviceRevisionArns") or []:
        rev = next((r for svc in rs.services.values() for rec in svc.records
                    for r in [rec.target, *rec.sources] if r.arn == arn), None)
        if rev is None:
            rev = next((d.revision for svc in rs.services.values() for d in svc.deployments
                        if d.revision.arn == arn), None)
        if rev is None:
            failures.append({"arn": arn, "reason": "MISSING"})
        else:
            found.append(rev.render())
    return ActionResult({"serviceRevisions": found, "failures": failures})


HANDLERS: dict[str, Callable[[Simulator, Any, Original], ActionResult]] = {
    "run_task": run_task, "stop_task": stop_task, "describe_tasks": describe_tasks, "list_tasks": list_tasks,
    "create_service": create_service, "describe_services": describe_services, "update_service": update_service,
    "delete_service": delete_service, "describe_service_deployments": describe_service_deployments,
    "list_service_deployments": list_service_deployments,
    "describe_service_revisions": describe_service_revisions,
}
