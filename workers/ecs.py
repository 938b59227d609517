"""Restart and redeploy of an ECS service, judged by task identity and health, never by counts.

Both start with the one preflight (cloud/ecs_plan.py, also behind dry runs):
CODE_DEPLOY/EXTERNAL services, a deployment in progress, a running digest gone
from ECR and a service with no running task are refused before anything
changes. Then:

- restart, when every running digest is still what its tag names in ECR: a new
  deployment (UpdateService forceNewDeployment) — ECS surges, drains targets
  and watches the circuit breaker — and afterwards a per-container check that
  the digests did not change;
- restart otherwise: StopTask in batches sized from the tasks healthy now and
  minimumHealthyPercent; before the next batch the stopped originals must be
  STOPPED and as many replacements (not originals, startedBy = the primary
  deployment) RUNNING and healthy; two failed replacements end the job;
- redeploy: a new deployment, followed through DescribeServiceDeployments
  until SUCCESSFUL, or reported as a circuit-breaker rollback.

Every mutation is checkpointed first (``params``), and a resumed job looks
before it acts: it adopts a deployment that appeared after its checkpoint and
never stops a task whose desiredStatus is already STOPPED.

Each wait between two looks goes through ``_wait``: the loop's state (when
the job started, which tasks were first seen RUNNING when, the batch count,
the last progress line, looks left for an adoption) is checkpointed, then
``sleep`` is called. In a worker ``sleep`` suspends the job (workers/context.py
``Suspend``): the thread is freed and the next step starts again from the top
with the checkpointed ``params`` — the same path a resumed job takes, minus
the "Resuming" note (``continuing``).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ReadTimeoutError

from cloud.ecr import EcrImages
from cloud.ecs import EcsReader, ServiceState
from cloud.ecs_gateway import EcsGateway, SharedReader
from cloud.ecs_plan import (
    BATCHES,
    DEPLOYMENT,
    Plan,
    batch_size,
    below_minimum,
    container_digests,
    describe_digests,
    has_health_check,
    min_allowed,
    plan_for,
    short_digest,
)
from cloud.ecs_types import (
    SERVICE_DEPLOYMENT_ROLLBACK,
    HealthStatus,
    RolloutState,
    ServiceDeploymentStatus,
    TaskStatus,
)
from cloud.elb import healthy_targets
from cloud.errors import AWS_ERRORS, aws_error, error_code
from scope.errors import OperationFailed, job_error
from workers.context import JobContext, Outcome
from workers.errors import aws_call

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient
    from mypy_boto3_ecs.type_defs import TaskTypeDef

__all__ = ["EcsOperations", "redeploy", "restart", "short_digest"]

Progress = Callable[[str, str], None]  # (type, message)
Checkpoint = Callable[[dict[str, Any]], None]
# Replacements that stopped before this many failed: enough to tell a crash loop from bad luck.
FAIL_FAST = 2
# Without a health check or a load balancer ECS counts a task as healthy 40 s after RUNNING
# (botocore model, DeploymentConfiguration.minimumHealthyPercent).
SETTLE_SECONDS = 40.0
# How long a COMPLETED deployment's tasks may stay unlisted (ListTasks lags the service's counts)
# before the job finishes on ECS' word alone, saying that the image was not verified.
UNLISTED_GRACE = 20.0


def _why(t: TaskTypeDef) -> str:
    """A failed task's reason: its stoppedReason and the essential container's exit code."""
    reason = t.get("stoppedReason") or t.get("stopCode") or "stopped"
    codes = [c["exitCode"] for c in t.get("containers", []) if c.get("exitCode") is not None]
    return f"{reason} (exit code {codes[0]})" if codes else str(reason)


def _ip(t: TaskTypeDef) -> str:
    for c in t.get("containers", []):
        for ni in c.get("networkInterfaces", []):
            if ni.get("privateIpv4Address"):
                return str(ni["privateIpv4Address"])
    return ""


@dataclass
class Look:
    """One look at the service's tasks: originals still around, replacements, failures."""

    state: ServiceState
    by_arn: dict[str, TaskTypeDef]
    healthy: list[str]  # RUNNING, wanted and healthy, any task of the service
    replacements: list[str]  # healthy, not originals, started by the primary deployment
    failed: list[TaskTypeDef]  # replacements that reached STOPPED


@dataclass
class EcsOperations:
    ecs: ECSClient
    cluster: str
    progress: Progress
    checkpoint: Checkpoint
    poll_interval: float = 3.0
    timeout: float = 900.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    reason: str = "Valet Key"
    ecr: Any = None  # an ECR client of the environment's Region; None: digests cannot be checked
    elbv2: Any = None  # an elbv2 client; None: target health is not checked
    autoscaling: Any = None  # an Application Auto Scaling client, for the plan's warning only
    region: str = ""
    settle_seconds: float = SETTLE_SECONDS
    continuing: bool = False  # this call continues a suspended job: no "Resuming" note
    # The process's ECS gateway (cloud/ecs_gateway.py) and the account the cluster is in: poll reads
    # shared per tick with every job watching the cluster, waits ending on tick boundaries. None: own reads.
    gateway: EcsGateway | None = None
    account: str = ""
    _reader: EcsReader | None = None
    _changed_at: float = float("-inf")  # this job's last mutation (params["changed_at"]): older reads refused
    # task ARN -> when it was first seen RUNNING (checkpointed: params["first_running"])
    _first_running: dict[str, float] = field(default_factory=dict)
    _settled: set[str] = field(default_factory=set)  # the originals: RUNNING since before the job

    @property
    def reader(self) -> EcsReader:
        if self._reader is None:
            if self.gateway is None:
                self._reader = EcsReader(self.ecs, self.cluster)
            else:
                self._reader = self.gateway.reader(self.ecs, self.cluster, self.account, self.clock)
                self._reader.not_before = self._changed_at
        return self._reader

    def _after_change(self, params: dict[str, Any]) -> None:
        """With a gateway, the look after a mutation waits for the next tick: ECS takes seconds to act
        anyway, and that tick's shared read answers it (a look now would be a read of its own)."""
        if self.gateway is not None:
            self._wait(params, self.poll_interval)

    def _changed(self, params: dict[str, Any]) -> None:
        """After a mutation of ours: reads before it are no answer any more, to this step nor to the
        next ones (which may run at once, in another process: the time is checkpointed)."""
        if self.gateway is not None:
            reader = self.reader
            assert isinstance(reader, SharedReader)
            reader.changed()
            params["changed_at"] = reader.not_before

    _call = staticmethod(aws_call)

    def state(self, service: str, digests: bool = False) -> ServiceState:
        return self._call(f"reading {service}", lambda: self.reader.service(service, with_digests=digests))

    def plan(self, action: str, service: str) -> Plan:
        ecr = EcrImages(self.ecr, self.region or self.ecs.meta.region_name) if self.ecr is not None else None
        return self._call(f"checking {service} before the {action}",
                          lambda: plan_for(action, self.reader, ecr, service, self.autoscaling))

    def _start(self, action: str, service: str) -> Plan:
        plan = self.plan(action, service)
        if plan.blocked:
            raise OperationFailed(f"Refused, nothing was changed: {plan.blocked}")
        for w in plan.warnings:
            self.progress("warning", w)
        self.progress("plan", f"{plan.mechanism}: " + "; ".join(plan.steps))
        return plan

    # ---- restart ----------------------------------------------------------
    def _begin(self, params: dict[str, Any]) -> float:
        """When the job started (checkpointed with its first step), and the loop state it saved."""
        started = float(params.setdefault("started", self.clock()))
        self._changed_at = float(params.get("changed_at", float("-inf")))
        if not self.continuing and ("mechanism" in params or "deploy_from" in params):
            # Resumed after a crash or a takeover: a mutation may have been sent after the last checkpoint.
            self._changed_at = self.clock()
        if isinstance(self._reader, SharedReader):
            self._reader.not_before = max(self._reader.not_before, self._changed_at)
        self._first_running = params.setdefault("first_running", {})
        return started

    def _note(self, text: str) -> None:
        if not self.continuing:
            self.progress("resume", text)

    def restart(self, service: str, params: dict[str, Any]) -> Outcome:
        started = self._begin(params)
        if params.get("mechanism") == DEPLOYMENT:
            self._note("Resuming the restart: looking for the deployment it started")
            return self._finish_deployment_restart(service, params, started)
        if params.get("mechanism") == BATCHES:
            self._note("Resuming the restart: looking at which tasks are already stopping")
            return self._batches(service, params, started)
        plan = self._start("restart", service)
        assert plan.state is not None
        st = plan.state
        params["mechanism"] = plan.mechanism
        params["before"] = st.record()
        if plan.mechanism == DEPLOYMENT:
            self._deploy(service, params, st, started)
            self._after_change(params)
            return self._finish_deployment_restart(service, params, started)
        params["restart_tasks"] = [t["taskArn"] for t in plan.tasks]
        params["stopped_before"] = self._call(f"listing the tasks of {service}", lambda: self.reader.task_arns(
            service, TaskStatus.STOPPED))
        params["health_checked"] = plan.health_checked
        self.checkpoint(params)
        return self._batches(service, params, started)

    def _finish_deployment_restart(self, service: str, params: dict[str, Any], started: float) -> Outcome:
        before = params["before"]
        if not params.get("deployment_id"):
            self._adopt_or_deploy(service, params, started)
        after = self._follow(service, params, started)
        if params.get("unverified"):
            secs = round(self.clock() - started)
            return Outcome(f"HEALTHY after {secs}s (deployment COMPLETED) · image not verified: "
                           f"{params['unverified']}", before, after.record())
        return self._same_image(before, after, started, "the tag moved while the deployment ran")

    def _same_image(self, before: dict[str, Any], after: ServiceState, started: float, cause: str) -> Outcome:
        was: dict[str, str] = before.get("container_digests") or {}
        now = after.container_digests
        changed = {c: (was.get(c, ""), d) for c, d in now.items() if was.get(c) and was[c] != d}
        if changed:
            what = ", ".join(f"{c} {short_digest(a)} → {short_digest(b)}" for c, (a, b) in changed.items())
            raise OperationFailed(f"The image changed during the restart ({cause}): {what}. "
                                  "The service runs the new image now; Redeploy or roll back on purpose.")
        secs = round(self.clock() - started)
        if now and not was:  # nothing to compare with: never claim "same"
            image = f" · now runs {describe_digests(now)} (the image before could not be read)"
        else:
            image = f" · same image {describe_digests(now)}" if now else ""
        return Outcome(f"HEALTHY after {secs}s{image}", before, after.record())

    # ---- deployments (restart by deployment, redeploy) ----------------------------------
    def _deploy(self, service: str, params: dict[str, Any], st: ServiceState, started: float) -> None:
        """Checkpoint, then UpdateService(forceNewDeployment); never retried blindly."""
        params["deploy_from"] = st.primary.id if st.primary else ""
        params["deploy_from_sd"] = st.service_deployment_arn
        self.checkpoint(params)
        try:
            with no_blind_retry(self.ecs):
                resp = self.ecs.update_service(cluster=self.cluster, service=service, forceNewDeployment=True)
        except ReadTimeoutError:
            # The request may have reached ECS: look (at ECS after it) instead of asking again.
            self._changed(params)
            self.progress("deployment", "ECS did not answer in time; looking whether the deployment started")
            params["adopt"] = {"looks": 3, "then": "fail"}
            self._adopting(service, params, started)
            return
        except AWS_ERRORS as e:
            raise job_error(aws_error(e, f"starting a deployment of {service}")) from e
        self._changed(params)
        svc = resp["service"]
        primary = next((d for d in svc.get("deployments", []) if d.get("status") == "PRIMARY"), None)
        params["deployment_id"] = primary.get("id", "") if primary else ""
        params["service_deployment"] = svc.get("currentServiceDeployment", "")
        self.checkpoint(params)
        self.progress("deployment", f"Started deployment {params['deployment_id']} of {st.task_definition}")

    def _adopting(self, service: str, params: dict[str, Any], started: float) -> None:
        """A deployment newer than the checkpointed one is ours (it appeared after the checkpoint): adopt it.

        ``params["adopt"]`` counts the looks left (checkpointed across suspensions) and says what
        happens when none shows: "fail" (UpdateService was sent and not answered: never sent again)
        or "deploy" (a resumed job that may have crashed before sending it)."""
        while True:
            st = self.state(service)
            p = st.primary
            adopt = params["adopt"]
            if p is not None and p.id != params.get("deploy_from"):
                del params["adopt"]
                params["deployment_id"] = p.id
                params["service_deployment"] = (st.service_deployment_arn
                                                if st.service_deployment_arn != params.get("deploy_from_sd") else "")
                self.checkpoint(params)
                self.progress("deployment", f"Adopted deployment {p.id}, started after this job's checkpoint")
                return
            adopt["looks"] = int(adopt["looks"]) - 1
            if adopt["looks"] <= 0:
                del params["adopt"]
                if adopt["then"] == "fail":
                    raise OperationFailed("ECS did not answer the request for a new deployment, and none appeared "
                                          "since; nothing else was changed. Try again.")
                self._deploy(service, params, self.state(service), started)
                return
            self._wait(params, self.poll_interval)

    def _adopt_or_deploy(self, service: str, params: dict[str, Any], started: float) -> None:
        """Resumed after the checkpoint of an UpdateService: adopt its deployment; ask only if none appeared."""
        params.setdefault("adopt", {"looks": 2, "then": "deploy"})
        self._adopting(service, params, started)

    def _service_deployment(self, arn: str) -> dict[str, Any] | None:
        try:
            got = self.reader.service_deployments([arn])
        except AWS_ERRORS as e:
            if error_code(e) in ("UnknownOperationException", "InvalidAction"):
                return None  # an ECS without service deployments: the rollout state decides
            raise job_error(aws_error(e, "reading the deployment")) from e
        return dict(got[0]) if got else None

    def _follow(self, service: str, params: dict[str, Any], started: float) -> ServiceState:
        """Wait until our deployment succeeded and its tasks are healthy; fail on rollback, stop, crash loop."""
        dep_id, sd_arn = params.get("deployment_id", ""), params.get("service_deployment", "")
        while True:
            st = self.state(service)
            p = st.primary
            sd = self._service_deployment(sd_arn) if sd_arn else None
            status = str(sd.get("status", "")) if sd else ""
            if status in SERVICE_DEPLOYMENT_ROLLBACK:
                why = (sd or {}).get("statusReason") or "the deployment failed"
                if status in (ServiceDeploymentStatus.ROLLBACK_SUCCESSFUL, ServiceDeploymentStatus.ROLLBACK_FAILED):
                    done = "" if status == ServiceDeploymentStatus.ROLLBACK_SUCCESSFUL else " (the rollback FAILED too)"
                    raise OperationFailed(f"Rolled back by the deployment circuit breaker: {why}{done}")
                line = f"Rolling back: {why}"
            elif status in (ServiceDeploymentStatus.STOPPED, ServiceDeploymentStatus.STOP_REQUESTED):
                raise OperationFailed(f"Deployment stopped: {(sd or {}).get('statusReason') or 'by ECS'}")
            else:
                mine = next((d for d in st.deployments if d.id == dep_id), None)
                if mine is not None and mine.rollout_state == RolloutState.FAILED:
                    why = mine.reason or "the deployment circuit breaker stopped it"
                    if p is not None and p.id != dep_id:
                        raise OperationFailed(f"Rolled back by the deployment circuit breaker: {why}")
                    raise OperationFailed(f"Rollout FAILED: {why}")
                if dep_id and p is not None and p.id != dep_id:
                    raise OperationFailed(f"Deployment {dep_id} was replaced by {p.id} (another deployment) "
                                          "before it finished.")
                line = (f"New tasks: {mine.running if mine else 0} of {st.desired} running"
                        + (f", {mine.pending} starting" if mine and mine.pending else "")
                        + (f"; old tasks still running: {sum(d.running for d in st.deployments if d.id != dep_id)}"
                           if len(st.deployments) > 1 else ""))
                finished = (status == ServiceDeploymentStatus.SUCCESSFUL if sd else mine is not None
                            and len(st.deployments) == 1 and mine.rollout_state != RolloutState.IN_PROGRESS)
                if finished:
                    # A finished deployment: ECS itself waited until its tasks counted as healthy (40 s
                    # after RUNNING without health check or load balancer), no need to wait that again.
                    look = self._look(service, st, originals=set(), started_by=dep_id or None,
                                      stopped_before=set(), health_checked=self._health_checked(st), settle=False)
                    if dep_id and len(look.failed) >= FAIL_FAST:
                        # A COMPLETED deployment is no longer watched by the circuit breaker.
                        raise OperationFailed(f"New tasks keep failing after the deployment completed: "
                                              f"{_why(look.failed[0])}.")
                    if len(look.replacements) >= st.desired:
                        st.container_digests = container_digests(
                            [look.by_arn[a] for a in look.replacements])
                        st.image_digests = sorted(set(st.container_digests.values()))
                        return st
                    if self._unlisted(params, st, mine, look):
                        return st
                    line = (f"Deployment done; {len(look.replacements)} of {st.desired} new tasks healthy so far"
                            if "unlisted_since" not in params else
                            f"Deployment {dep_id} COMPLETED with {st.running} of {st.desired} running; waiting "
                            "for ECS to list its tasks")
                else:
                    if mine is not None and mine.running >= st.desired and isinstance(self.reader, SharedReader):
                        # Its tasks will be looked at once ECS says the deployment finished: from the
                        # next ticks' shared reads, not a read of this job's own.
                        self.reader.expect_tasks(service)
                    if not st.circuit_breaker and dep_id:
                        failed = self._failed(service, started_by=dep_id, exclude=set())
                        if len(failed) >= FAIL_FAST:
                            raise OperationFailed(
                                f"New tasks keep failing: {_why(failed[0])}. ECS keeps the old tasks serving while "
                                f"the deployment {dep_id} stays in progress; fix the image or roll back.")
            self._line(params, line)
            self._tick(params, started, f"waiting for deployment {dep_id or ''} ({line})")

    def _unlisted(self, params: dict[str, Any], st: ServiceState, mine: Any, look: Look) -> bool:
        """ECS reports our deployment done and every task of it running, yet lists none of them.

        ListTasks and DescribeTasks lag the service's own counters (eventual consistency), for
        seconds on AWS. The deployment's state is ECS' word that its tasks reached steady state;
        the task list is only how we read their image. Wait ``UNLISTED_GRACE`` for the list to
        catch up, then finish on ECS' word and say plainly that the image was not verified
        (``params["unverified"]``, in the outcome), rather than fail a restart that happened."""
        dep_id = params.get("deployment_id", "")
        ours_listed = any(t.get("startedBy") == dep_id for t in look.by_arn.values())
        steady = (mine is not None and mine.running >= st.desired >= 1 and not mine.pending
                  and st.running >= st.desired)
        if not dep_id or ours_listed or not steady:
            params.pop("unlisted_since", None)
            return False
        since = float(params.setdefault("unlisted_since", self.clock()))
        if self.clock() - since < UNLISTED_GRACE:
            return False
        st.container_digests, st.image_digests = {}, []
        params["unverified"] = (f"ECS listed none of deployment {dep_id}'s tasks within {UNLISTED_GRACE:.0f}s of "
                                f"reporting it COMPLETED with {st.running} of {st.desired} running")
        return True

    # ---- batches ------------------------------------------------------------------------
    def _batches(self, service: str, params: dict[str, Any], started: float) -> Outcome:
        originals: list[str] = params["restart_tasks"]
        before: dict[str, Any] = params["before"]
        stopped_before = set(params.get("stopped_before") or [])
        health_checked = bool(params.get("health_checked"))
        began_on = before.get("deployment_id", "")
        total = len(originals)
        self._settled = set(originals)  # they ran before the job began: settled long ago
        while True:
            look = self._wait_batch(service, params, started, began_on, stopped_before, health_checked)
            st = look.state
            # Originals still wanted: desiredStatus RUNNING (StopTask sets STOPPED at once).
            remaining = [a for a in originals if a in look.by_arn
                         and look.by_arn[a].get("desiredStatus") == TaskStatus.RUNNING]
            if not remaining:
                break
            minimum = min_allowed(st.desired, st.min_healthy_percent)
            if refusal := below_minimum(st, len(look.healthy)):
                raise OperationFailed(f"Stopped before the next batch: {refusal}")
            batch = batch_size(len(look.healthy), minimum, len(remaining), total)
            group = remaining[:batch]
            rounds = params["rounds"] = int(params.get("rounds", 0)) + 1
            if len(look.healthy) - batch < minimum and not params.get("minimum_noted"):
                params["minimum_noted"] = True
                self.progress("warning", f"{len(look.healthy)} healthy task(s), {minimum} required: replacing one "
                                         "at a time; the service is briefly at reduced capacity")
            left = len(remaining)
            batches_left = -(-left // batch)
            self.progress("progress", f"Batch {rounds} of {rounds + batches_left - 1}: stopping {len(group)} old "
                                      f"task(s); {max(len(look.healthy) - len(group), 0)} keep serving")
            params["stopping"] = group
            self.checkpoint(params)
            try:
                for arn in group:
                    self._call(f"stopping a task of {service}", partial(
                        self.ecs.stop_task, cluster=self.cluster, task=arn, reason=self.reason[:255]))
            finally:
                self._changed(params)
            self._after_change(params)
        after = self.state(service)
        last = self._look(service, after, set(originals), None, stopped_before, health_checked)
        after.container_digests = container_digests([last.by_arn[a] for a in last.healthy])
        after.image_digests = sorted(set(after.container_digests.values()))
        return self._same_image(before, after, started, "a container with versionConsistency disabled pulled "
                                                        "its tag again")

    def _wait_batch(self, service: str, params: dict[str, Any], started: float, began_on: str,
                    stopped_before: set[str], health_checked: bool) -> Look:
        """Wait until every original told to stop is STOPPED and as many replacements are healthy."""
        originals = set(params["restart_tasks"])
        while True:
            st = self.state(service)
            p = st.primary
            if began_on and p is not None and p.id != began_on:
                raise OperationFailed(f"Another deployment ({p.id}) started during the restart; no more tasks "
                                      "were stopped.")
            look = self._look(service, st, originals, p.id if p else None, stopped_before, health_checked)
            if len(look.failed) >= FAIL_FAST:
                raise OperationFailed(f"Replacement tasks keep failing: {_why(look.failed[0])}. No further task was "
                                      f"stopped; {len(look.healthy)} task(s) still serve.")
            told = [a for a in originals if a not in look.by_arn
                    or look.by_arn[a].get("desiredStatus") == TaskStatus.STOPPED]
            draining = [a for a in told if a in look.by_arn and look.by_arn[a].get("lastStatus") != TaskStatus.STOPPED]
            still = len(originals) - len(told)
            need = min(len(told), max(st.desired - still, 0))
            if not draining and len(look.replacements) >= need:
                return look
            line = (f"Old tasks going: {len(draining)} still stopping; new tasks: {len(look.replacements)} of "
                    f"{need} running and healthy")
            self._line(params, line)
            self._tick(params, started, f"waiting for replacement tasks ({line})")

    # ---- looking at tasks ---------------------------------------------------------------
    def _health_checked(self, st: ServiceState) -> bool:
        td = self._call("reading the task definition", lambda: self.reader.task_definition(st.task_definition_arn))
        return has_health_check(td)

    def _look(self, service: str, st: ServiceState, originals: set[str], started_by: str | None,
              stopped_before: set[str], health_checked: bool, settle: bool = True) -> Look:
        running = self._call(f"listing the tasks of {service}", lambda: self.reader.task_arns(service))
        stopped = self._call(f"listing the tasks of {service}",
                             lambda: self.reader.task_arns(service, TaskStatus.STOPPED))
        ask = list(dict.fromkeys([*originals, *running, *(a for a in stopped if a not in stopped_before)]))
        tasks = self._call("describing tasks", lambda: self.reader.tasks(ask))
        by_arn = {t["taskArn"]: t for t in tasks}
        healthy = self._healthy(st, [t for t in tasks if t["taskArn"] in set(running)], health_checked, settle)
        replacements = [a for a in healthy if a not in originals
                        and (started_by is None or by_arn[a].get("startedBy") == started_by)]
        failed = [t for t in tasks if t["taskArn"] not in originals and t["taskArn"] not in stopped_before
                  and t.get("lastStatus") == TaskStatus.STOPPED
                  and (started_by is None or t.get("startedBy") == started_by)]
        return Look(st, by_arn, healthy, replacements, failed)

    def _failed(self, service: str, started_by: str, exclude: set[str]) -> list[TaskTypeDef]:
        """The tasks ``started_by`` our deployment that reached STOPPED: its crash loop, if any."""
        reader = self.reader
        if isinstance(reader, SharedReader):
            # Only the STOPPED tasks: the service's running ones are not described every tick for it.
            every = self._call(f"listing the tasks of {service}", lambda: reader.stopped_tasks(service))
            tasks = [t for t in every if t["taskArn"] not in exclude]
        else:
            stopped = self._call(f"listing the tasks of {service}",
                                 lambda: reader.task_arns(service, TaskStatus.STOPPED))
            tasks = self._call("describing tasks", lambda: reader.tasks([a for a in stopped if a not in exclude]))
        return [t for t in tasks if t.get("startedBy") == started_by and t.get("lastStatus") == TaskStatus.STOPPED]

    def _healthy(self, st: ServiceState, tasks: list[TaskTypeDef], health_checked: bool,
                 settle: bool = True) -> list[str]:
        """ARNs of the tasks ECS would count as healthy: RUNNING and wanted, container health HEALTHY
        (with a health check), target healthy (behind a load balancer), else RUNNING for a while."""
        now = self.clock()
        up = [t for t in tasks if t.get("lastStatus") == TaskStatus.RUNNING
              and t.get("desiredStatus") == TaskStatus.RUNNING]
        seen = self._first_running
        for arn in [a for a in seen if a not in {t["taskArn"] for t in up}]:
            del seen[arn]  # no longer running: nothing to remember (the checkpoint stays small)
        for t in up:
            seen.setdefault(t["taskArn"], now)
        if health_checked:
            up = [t for t in up if t.get("healthStatus") == HealthStatus.HEALTHY]
        if st.target_groups and self.elbv2 is not None:
            for tg in st.target_groups:
                ips = [ip for t in up if (ip := _ip(t))]
                ok = self._call("reading target health", partial(healthy_targets, self.elbv2, tg["arn"], ips,
                                                                 tg.get("port")))
                up = [t for t in up if _ip(t) in ok]
        elif not health_checked and settle:
            up = [t for t in up if t["taskArn"] in self._settled or now - seen[t["taskArn"]] >= self.settle_seconds]
        return [t["taskArn"] for t in up]

    # ---- redeploy ---------------------------------------------------------
    def redeploy(self, service: str, params: dict[str, Any]) -> Outcome:
        started = self._begin(params)
        if "deploy_from" not in params:
            plan = self._start("redeploy", service)
            assert plan.state is not None
            params["before"] = plan.state.record()
            self._deploy(service, params, plan.state, started)
        else:
            self._note("Resuming: looking for the deployment this job started")
            if not params.get("deployment_id"):
                self._adopt_or_deploy(service, params, started)
        before = params["before"]
        after = self._follow(service, params, started)
        was: dict[str, str] = before.get("container_digests") or {}
        now = after.container_digests
        if not now:
            secs = round(self.clock() - started)
            unverified = f" · image not verified: {params['unverified']}" if params.get("unverified") else ""
            return Outcome(f"Deployed {after.image or after.task_definition}: HEALTHY after {secs}s{unverified}",
                           before, after.record())
        if len(now) == 1:
            (name, d), = now.items()
            old = was.get(name, "")
            detail = f"Deployed {short_digest(d)} " + ("(unchanged)" if old == d else f"(was {short_digest(old)})")
        else:
            detail = "Deployed " + ", ".join(
                f"{c} {short_digest(d)} " + ("(unchanged)" if was.get(c) == d else f"(was {short_digest(was.get(c, ''))})")
                for c, d in now.items())
        return Outcome(detail, before, after.record())

    # ---- waiting ----------------------------------------------------------
    def _line(self, params: dict[str, Any], line: str) -> None:
        """A progress line, once while it stays the same (across suspensions too)."""
        if line != params.get("last_line"):
            self.progress("progress", line)
            params["last_line"] = line

    def _tick(self, params: dict[str, Any], started: float, what: str) -> None:
        if self.clock() - started > self.timeout:
            raise OperationFailed(f"Timed out after {round(self.timeout)}s {what}.")
        self._wait(params, self.poll_interval)

    def _wait(self, params: dict[str, Any], seconds: float) -> None:
        """Checkpoint what the next look needs, then wait (in a worker: suspend the job). With a gateway
        a poll wait ends just after a tick boundary, where every watcher of the cluster wakes."""
        self.checkpoint(params)
        if self.gateway is not None and seconds == self.poll_interval:
            seconds = self.gateway.until_next_tick(self.clock(), params.get("changed_at"))
        self.sleep(seconds)


_guard = threading.local()


def _refuse_blind_retry(caught_exception: BaseException | None = None, **_: Any) -> None:
    """botocore's standard retry mode resends a request whose answer timed out; for a mutating call
    that may do it twice. Within ``no_blind_retry`` the timeout reaches the caller instead, who looks."""
    if getattr(_guard, "active", False) and isinstance(caught_exception, ReadTimeoutError):
        raise caught_exception


@contextmanager
def no_blind_retry(client: Any) -> Iterator[None]:
    # Registered once per client (clients are shared by threads); it acts only inside this block.
    client.meta.events.register_first("needs-retry.ecs.UpdateService", _refuse_blind_retry,
                                      unique_id="valetkey-no-blind-retry")
    _guard.active = True
    try:
        yield
    finally:
        _guard.active = False


def _operations(ctx: JobContext) -> EcsOperations:
    s = ctx.settings
    env = ctx.env
    return EcsOperations(ctx.ecs_client(env), env.cluster, ctx.progress, ctx.checkpoint,
                         poll_interval=s.poll_interval, timeout=s.stability_timeout, sleep=ctx.sleep,
                         clock=ctx.clock, reason=ctx.reason, ecr=ctx.aws_client(env, "ecr"),
                         elbv2=ctx.aws_client(env, "elbv2"), region=env.region, continuing=ctx.continuing,
                         gateway=ctx.gateway, account=ctx.account_of(env) if ctx.gateway is not None else "")


def restart(ctx: JobContext) -> Outcome:
    return _operations(ctx).restart(ctx.job.target, ctx.params)


def redeploy(ctx: JobContext) -> Outcome:
    return _operations(ctx).redeploy(ctx.job.target, ctx.params)
