"""What a restart or redeploy would do, and whether it must be refused: the one preflight.

The same code answers a dry run (``{"dry_run": true}`` → ``200 {plan}``) and
starts a real run (workers/ecs.py), so a plan never promises what the job
would not do. Every fact it relies on is in docs/ecs.md with its source:

- CODE_DEPLOY / EXTERNAL services have no ``deployments`` and cannot be
  force-deployed (boto/botocore#2865; botocore model UpdateService): refused.
- A deployment in progress (a PRIMARY rolling out, or more than one): refused,
  the originals would mix two versions.
- A running digest deleted from ECR: replacements could not pull it
  (aws/amazon-ecs-agent#4226): refused, Redeploy resolves the tag anew.
- Every running digest still what its tag names in ECR: the restart is a new
  deployment (ECS surges, drains targets, watches the circuit breaker);
  otherwise tasks are replaced in batches, which reuse the pinned digest.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cloud.ecr import EcrImages, ImageCheck, ImageVerdict
from cloud.ecs import EcsReader, ServiceState
from cloud.ecs_types import DeploymentController, HealthStatus, TaskStatus
from cloud.errors import AWS_ERRORS

if TYPE_CHECKING:
    from mypy_boto3_ecs.type_defs import TaskTypeDef

DEPLOYMENT, BATCHES = "deployment", "batches"
# A rough figure per replacement round for the plan's "~N s" (stop, start, health checks);
# the job reports what it really took.
ROUND_SECONDS = 45


def short_digest(d: str) -> str:
    return "sha:" + d.split(":", 1)[-1][:6] if d else "?"


def container_digests(tasks: list[TaskTypeDef]) -> dict[str, str]:
    """Container name -> the digest most of ``tasks`` run for it."""
    seen: dict[str, Counter[str]] = {}
    for t in tasks:
        for c in t.get("containers", []):
            if c.get("imageDigest"):
                seen.setdefault(c.get("name", ""), Counter())[c["imageDigest"]] += 1
    return {name: counts.most_common(1)[0][0] for name, counts in sorted(seen.items())}


def describe_digests(digests: dict[str, str]) -> str:
    """``sha:a3f2b1`` for one container; ``app sha:a3f2b1, envoy sha:77e0c2`` for several."""
    if len(digests) == 1:
        return short_digest(next(iter(digests.values())))
    return ", ".join(f"{name} {short_digest(d)}" for name, d in digests.items()) or "unknown image"


def min_allowed(desired: int, min_percent: int) -> int:
    """Tasks that must stay healthy: minimumHealthyPercent of desired, rounded up (as ECS does)."""
    return math.ceil(desired * min_percent / 100)


def below_minimum(st: ServiceState, healthy_now: int) -> str | None:
    """Why batches may not start (or go on): one more task down would break the minimum on a service
    that is neither single-task nor at minimumHealthyPercent 100 (those go one at a time, on purpose)."""
    minimum = min_allowed(st.desired, st.min_healthy_percent)
    if healthy_now - 1 >= minimum or st.desired <= 1 or st.min_healthy_percent >= 100:
        return None
    return (f"{st.name} has {healthy_now} healthy task(s) of {st.desired} and must keep {minimum} "
            f"(minimumHealthyPercent {st.min_healthy_percent}%): replacing tasks one by one would go below that. "
            "Redeploy instead (ECS starts new tasks first), or find out why the others do not start.")


def batch_size(healthy_now: int, minimum: int, remaining: int, total: int) -> int:
    """How many originals to stop now: what the healthy tasks allow above the minimum, at least one,
    and at most half the originals, so that minimumHealthyPercent 0 still goes in batches."""
    return max(1, min(healthy_now - minimum, math.ceil(total / 2), remaining))


@dataclass
class Plan:
    """A plan as the API shows it, plus what the worker needs to carry it out."""

    action: str  # "restart" | "redeploy"
    mechanism: str  # DEPLOYMENT | BATCHES
    steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    blocked: str | None = None
    state: ServiceState | None = None
    tasks: list[TaskTypeDef] = field(default_factory=list)  # RUNNING and wanted
    health_checked: bool = False  # an essential container defines a health check
    verdicts: list[ImageVerdict] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"mechanism": self.mechanism, "steps": list(self.steps), "warnings": list(self.warnings),
                "blocked": self.blocked}


def _controller_refusal(st: ServiceState) -> str | None:
    if st.controller == DeploymentController.CODE_DEPLOY:
        return (f"{st.name} deploys through AWS CodeDeploy (deployment controller CODE_DEPLOY): ECS cannot "
                "restart or force-deploy it. Start a CodeDeploy deployment instead.")
    if st.controller != DeploymentController.ECS:
        return (f"{st.name} uses the {st.controller} deployment controller: its task sets are managed by your "
                "own deployment tooling, and ECS cannot restart or force-deploy it.")
    return None


def _in_progress_refusal(st: ServiceState) -> str | None:
    p = st.primary
    if len(st.deployments) > 1:
        return (f"A deployment of {st.name} is in progress ({len(st.deployments)} deployments active"
                f"{', newest ' + p.id if p else ''}); wait until it finishes.")
    if st.in_progress and p is not None:
        return f"A deployment of {st.name} is in progress ({p.id}, rollout IN_PROGRESS); wait until it finishes."
    return None


def wanted_running(tasks: list[TaskTypeDef]) -> list[TaskTypeDef]:
    return [t for t in tasks if t.get("lastStatus") == TaskStatus.RUNNING
            and t.get("desiredStatus") == TaskStatus.RUNNING]


def has_health_check(td: Any) -> bool:
    return any(c.get("essential", True) and c.get("healthCheck") for c in td.get("containerDefinitions") or [])


def _td_warnings(td: Any, action: str) -> list[str]:
    out = []
    for c in td.get("containerDefinitions") or []:
        if c.get("versionConsistency") == "disabled" and action == "restart":
            out.append(f"Container {c.get('name')} opts out of version consistency (versionConsistency: disabled): "
                       "its replacements pull the tag again and may run another image; the restart fails if so.")
    return out


def _autoscaling_warning(autoscaling: Any, cluster: str, st: ServiceState) -> str | None:
    if autoscaling is None:
        return None
    try:
        found = autoscaling.describe_scalable_targets(
            ServiceNamespace="ecs", ResourceIds=[f"service/{cluster}/{st.name}"],
            ScalableDimension="ecs:service:DesiredCount").get("ScalableTargets", [])
    except AWS_ERRORS:
        return None  # the warning is a courtesy: without the permission, no warning
    if not found:
        return None
    t = found[0]
    return (f"Application Auto Scaling manages the task count (min {t.get('MinCapacity')}, max "
            f"{t.get('MaxCapacity')}): it may change the count while this runs.")


def plan_for(action: str, reader: EcsReader, ecr: EcrImages | None, service: str,
             autoscaling: Any = None) -> Plan:
    """The preflight of ``action`` ("restart" or "redeploy") on ``service``; reads only."""
    st = reader.service(service)
    plan = Plan(action=action, mechanism=DEPLOYMENT, state=st)
    refusal = _controller_refusal(st) or _in_progress_refusal(st)
    if refusal:
        plan.blocked = refusal
        return plan
    td = reader.task_definition(st.task_definition_arn) if st.task_definition_arn else {}
    plan.health_checked = has_health_check(td)
    plan.tasks = wanted_running(reader.tasks(reader.task_arns(service)))
    primary = st.primary
    own = [t for t in plan.tasks if primary is None or t.get("startedBy") in (None, primary.id)]
    st.container_digests = container_digests(own or plan.tasks)
    st.image_digests = sorted(set(st.container_digests.values()))
    plan.warnings += _td_warnings(td, action)
    if warning := _autoscaling_warning(autoscaling, reader.cluster, st):
        plan.warnings.append(warning)
    if action == "redeploy":
        _plan_redeploy(plan, st)
    else:
        _plan_restart(plan, st, td, ecr)
    if st.alarms and plan.mechanism == DEPLOYMENT and not plan.blocked:
        plan.warnings.append(f"Deployment alarms are configured ({', '.join(st.alarms)}): ECS rolls the "
                             "deployment back if one of them fires.")
    return plan


def _plan_redeploy(plan: Plan, st: ServiceState) -> None:
    plan.steps = [f"start a new deployment of {st.task_definition}; ECS resolves every image tag anew",
                  f"ECS starts new tasks (up to {st.max_percent}% of {st.desired}) and stops old ones, never "
                  f"fewer than {min_allowed(st.desired, st.min_healthy_percent)} healthy",
                  "wait until ECS reports the deployment SUCCESSFUL"
                  + (" (the circuit breaker rolls back a failing one)" if st.circuit_breaker else ""),
                  "report the image digests before and after, per container"]


def _plan_restart(plan: Plan, st: ServiceState, td: Any, ecr: EcrImages | None) -> None:
    n = len(plan.tasks)
    if n == 0 and st.running == 0:
        plan.blocked = (f"{st.name} has no running task to restart ({st.running}/{st.desired} running). "
                        "Redeploy it, or scale it up.")
        return
    if n == 0:
        _plan_unlisted_restart(plan, st)
        return
    for c in td.get("containerDefinitions") or []:
        name, image = str(c.get("name", "")), str(c.get("image", ""))
        running = st.container_digests.get(name, "")
        if ecr is None:
            plan.verdicts.append(ImageVerdict(name, image, running, ImageCheck.UNKNOWN, why="ECR not consulted"))
        else:
            plan.verdicts.append(ecr.verify(name, image, running))
    gone = [v for v in plan.verdicts if v.check == ImageCheck.GONE]
    if gone:
        v = gone[0]
        plan.blocked = (f"The running image of container {v.container} ({short_digest(v.running)}) no longer "
                        "exists in ECR, so replacement tasks could not start. Redeploy instead: a new "
                        "deployment resolves the tag anew.")
        return
    minimum = min_allowed(st.desired, st.min_healthy_percent)
    if all(v.check == ImageCheck.SAME for v in plan.verdicts):
        plan.mechanism = DEPLOYMENT
        surge = max(1, math.floor(st.desired * st.max_percent / 100) - st.desired)
        rounds = math.ceil(max(n, 1) / surge)
        plan.steps = [
            f"start a new deployment of {st.task_definition} (same image {describe_digests(st.container_digests)}: "
            "every tag still names the running digest)",
            f"ECS starts up to {surge} new task(s) at a time before stopping old ones; never fewer than "
            f"{max(minimum, 1 if st.desired else 0)} healthy"
            + ("; old tasks are drained from the load balancer first" if st.target_groups else ""),
            "wait until ECS reports the deployment SUCCESSFUL and the new tasks are healthy"
            + (" (the circuit breaker rolls back a failing one)" if st.circuit_breaker else ""),
            f"check that every container still runs the same digest; ~{rounds * ROUND_SECONDS} s",
        ]
        return
    plan.mechanism = BATCHES
    for v in plan.verdicts:
        if v.check == ImageCheck.MOVED:
            plan.warnings.append(f"The tag of container {v.container} now names {short_digest(v.tag_digest)} while "
                                 f"the service runs {short_digest(v.running)}: a new deployment would change the "
                                 "image, so tasks are replaced in batches (they reuse the running digest).")
        elif v.check == ImageCheck.UNKNOWN:
            plan.warnings.append(f"The image of container {v.container} cannot be checked ({v.why}): tasks are "
                                 "replaced in batches, which reuse the running digest.")
    healthy = len(healthy_by_container(plan.tasks, plan.health_checked))
    plan.blocked = below_minimum(st, healthy)
    if plan.blocked:
        return
    batch = batch_size(healthy, minimum, n, n)
    rounds = math.ceil(n / batch)
    reduced = healthy - batch < minimum
    plan.steps = [
        f"replace {n} task(s), {batch} at a time; never fewer than {max(healthy - batch, 0)} serving; "
        f"~{rounds * ROUND_SECONDS} s",
        "before each next batch: the stopped tasks are STOPPED and as many new ones run and are healthy",
        "stop at once if two replacements fail",
        f"check that every container still runs the same digest ({describe_digests(st.container_digests)})",
    ]
    if reduced:
        plan.warnings.append(
            f"{st.name} runs {healthy} healthy task(s) and must keep {minimum} (minimumHealthyPercent "
            f"{st.min_healthy_percent}% of {st.desired}): tasks are replaced one at a time, and the service is "
            "briefly at reduced capacity while each replacement starts.")


def _plan_unlisted_restart(plan: Plan, st: ServiceState) -> None:
    """ECS counts running tasks but lists none RUNNING: ListTasks and DescribeTasks lag the
    service's counters (eventual consistency), or its tasks are being replaced right now.
    Batches need the tasks themselves; a new deployment does not (ECS replaces whatever it
    runs). What cannot be known is the running digest, so the plan says the image is not
    verified beforehand and the outcome reports the one that runs after."""
    plan.mechanism = DEPLOYMENT
    plan.warnings.append(
        f"ECS counts {st.running} running task(s) of {st.name} but lists none as RUNNING yet, so the running "
        "image cannot be read: the restart starts a new deployment, which resolves every tag anew, and "
        "reports the image the service runs afterwards.")
    plan.steps = [
        f"start a new deployment of {st.task_definition}",
        f"ECS starts new tasks (up to {st.max_percent}% of {st.desired}) and stops old ones, never fewer than "
        f"{min_allowed(st.desired, st.min_healthy_percent)} healthy",
        "wait until ECS reports the deployment SUCCESSFUL and its new tasks are healthy"
        + (" (the circuit breaker rolls back a failing one)" if st.circuit_breaker else ""),
        "report the image digests the service runs afterwards",
    ]


def healthy_by_container(tasks: list[TaskTypeDef], health_checked: bool) -> list[TaskTypeDef]:
    """Running, wanted tasks whose container health check (when there is one) says HEALTHY."""
    return [t for t in wanted_running(tasks)
            if not health_checked or t.get("healthStatus") == HealthStatus.HEALTHY]
