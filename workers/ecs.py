"""Restart and redeploy of an ECS service, with the wait until it is stable again.

Neither operation edits a task definition:
- restart stops the service's running tasks in batches no larger than
  minimumHealthyPercent allows; the ECS scheduler replaces them from the same
  deployment, so the image (digest) stays the same;
- redeploy asks ECS for a new deployment of the task definition already on
  the service (forceNewDeployment), which resolves a mutable tag anew.

Both checkpoint what they did into the job (through ``checkpoint``), so a
redelivered message resumes instead of repeating: no double restart.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

from cloud.ecs import EcsReader, ServiceState
from cloud.ecs_types import TASK_ENDING, DeploymentStatus, RolloutState, TaskStatus
from scope.errors import OperationFailed
from workers.context import JobContext, Outcome
from workers.errors import aws_call

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient
    from mypy_boto3_ecs.type_defs import TaskTypeDef

Progress = Callable[[str, str], None]  # (type, message)
Checkpoint = Callable[[dict[str, Any]], None]


def short_digest(d: str) -> str:
    return "sha:" + d.split(":", 1)[-1][:6] if d else "?"


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

    @property
    def reader(self) -> EcsReader:
        return EcsReader(self.ecs, self.cluster)

    _call = staticmethod(aws_call)

    def state(self, service: str, digests: bool = False) -> ServiceState:
        return self._call(f"reading {service}", lambda: self.reader.service(service, with_digests=digests))

    # ---- restart ----------------------------------------------------------
    def restart(self, service: str, params: dict[str, Any]) -> Outcome:
        started = self.clock()
        before = self.state(service)
        tasks = self._call(f"listing tasks of {service}", lambda: self.reader.running_tasks(service))
        before.image_digests = self.reader.digests_of(tasks)
        self.progress("state", f"Before: {before.running}/{before.desired} running, "
                               f"{before.task_definition}, {before.status}")
        resumed = "restart_tasks" in params
        if not resumed:
            params["restart_tasks"] = [t["taskArn"] for t in tasks]
            params["before"] = before.record()
            self.checkpoint(params)
        originals: list[str] = params["restart_tasks"]
        before_rec = params.get("before") or before.record()
        began_on = before_rec.get("task_definition") or before.task_definition
        if began_on != before.task_definition:
            # Resumed after a crash, and a deployment ran meanwhile: stopping tasks now would
            # restart a different version than the one this restart was asked for.
            raise OperationFailed(f"Task definition changed since this restart began ({began_on} → "
                                  f"{before.task_definition}); another deployment ran. No more tasks were stopped.")
        if not originals:
            after = self.wait_stable(service, started)
            return Outcome(f"Nothing to restart: no running tasks; {after.status} "
                           f"({after.running}/{after.desired} running)", before_rec, after.record())
        desired = max(before.desired, 1)
        # Tasks that may be down at once without going below minimumHealthyPercent;
        # at least one, or a 100% service could never be restarted task by task.
        floor = math.ceil(desired * before.min_healthy_percent / 100)
        batch = max(1, desired - floor)
        self.progress("plan", f"Replacing {len(originals)} task(s), {batch} at a time "
                              f"(minimumHealthyPercent {before.min_healthy_percent}%)")
        # A fresh job listed the originals as RUNNING just now; a redelivered one may
        # find some already stopped by the attempt that crashed, and must not stop them again.
        remaining = self._still_running(originals) if resumed else list(originals)
        if resumed and remaining:
            # The crashed attempt may have stopped a batch whose replacements are not up
            # yet: wait for them before taking more tasks down (minimumHealthyPercent).
            self.wait_stable(service, started)
        while remaining:
            group = remaining[:batch]
            self._stop(service, group)
            done = len(originals) - len(remaining) + len(group)
            self.progress("progress", f"Stopped {done} of {len(originals)} original task(s); waiting for replacements")
            remaining = self._wait_gone(group, remaining, started)
            if remaining:
                # The replacements must run before the next batch goes down (minimumHealthyPercent).
                self.wait_stable(service, started)
        # After the last batch this wait is both "replacements are up" and the outcome.
        after = self.wait_stable(service, started, digests=True)
        secs = round(self.clock() - started)
        if after.task_definition != began_on:
            raise OperationFailed(f"Task definition changed during restart ({began_on} → "
                                  f"{after.task_definition}); another deployment ran at the same time.")
        return Outcome(f"HEALTHY after {secs}s", before_rec, after.record())

    def _stop(self, service: str, arns: list[str]) -> None:
        for arn in arns:
            self._call(f"stopping a task of {service}", partial(
                self.ecs.stop_task, cluster=self.cluster, task=arn, reason=self.reason[:255]))

    def _still_running(self, arns: list[str]) -> list[str]:
        if not arns:
            return []
        got: list[TaskTypeDef] = []
        for i in range(0, len(arns), 100):  # DescribeTasks takes at most 100
            got += self._call("describing tasks", partial(
                self.ecs.describe_tasks, cluster=self.cluster, tasks=arns[i:i + 100])).get("tasks", [])
        alive = {t["taskArn"] for t in got if t.get("lastStatus") not in TASK_ENDING
                 and t.get("desiredStatus") != TaskStatus.STOPPED}
        return [a for a in arns if a in alive]

    def _wait_gone(self, stopped: list[str], remaining: list[str], started: float) -> list[str]:
        """Poll until none of ``stopped`` runs; the originals of ``remaining`` that still run.

        Describing every remaining original, not only the stopped batch, makes the
        last poll the next batch's list: an original that stopped on its own drops
        out there, and an empty answer after the last batch means none is left.
        """
        while True:
            alive = self._still_running(remaining)
            if not set(stopped) & set(alive):
                return alive
            self._tick(started, "waiting for stopped tasks to drain")

    # ---- redeploy ---------------------------------------------------------
    def redeploy(self, service: str, params: dict[str, Any]) -> Outcome:
        started = self.clock()
        before = self.state(service, digests=True)
        if "deployment_id" not in params:
            params["before"] = before.record()
            resp = self._call(f"starting a deployment of {service}", lambda: self.ecs.update_service(
                cluster=self.cluster, service=service, forceNewDeployment=True))
            primary = next((d for d in resp["service"].get("deployments", [])
                            if d.get("status") == DeploymentStatus.PRIMARY), None)
            params["deployment_id"] = primary.get("id", "") if primary else ""
            self.checkpoint(params)
            self.progress("deployment", f"Started deployment {params['deployment_id']} of {before.task_definition}")
        else:
            self.progress("deployment", f"Resuming: waiting for deployment {params['deployment_id']}")
        before_rec = params.get("before") or before.record()
        after = self.wait_stable(service, started, deployment_id=params["deployment_id"] or None, digests=True)
        secs = round(self.clock() - started)
        old, new = before_rec.get("image_digests") or [], after.image_digests
        if new:
            was = ", ".join(short_digest(d) for d in old) or "unknown"
            now = ", ".join(short_digest(d) for d in new)
            detail = f"Deployed {now} (unchanged)" if old == new else f"Deployed {now} (was {was})"
        else:
            detail = f"Deployed {after.image or after.task_definition}: HEALTHY after {secs}s"
        return Outcome(detail, before_rec, after.record())

    # ---- waiting ----------------------------------------------------------
    def _tick(self, started: float, what: str) -> None:
        if self.clock() - started > self.timeout:
            raise OperationFailed(f"Timed out after {round(self.timeout)}s {what}.")
        self.sleep(self.poll_interval)

    def wait_stable(self, service: str, started: float, deployment_id: str | None = None,
                    digests: bool = False) -> ServiceState:
        """Poll until one deployment (ours, if given) runs every desired task; fail on FAILED rollouts."""
        last = ""
        while True:
            st = self.state(service)
            p = st.primary
            if p and p.rollout_state == RolloutState.FAILED:
                why = p.reason or "the deployment circuit breaker stopped it"
                raise OperationFailed(f"Rollout FAILED: {why}")
            if deployment_id and p and p.id != deployment_id:
                raise OperationFailed(f"Deployment {deployment_id} was replaced by {p.id} before it finished.")
            line = (f"{st.running}/{st.desired} running, {st.pending} pending, "
                    f"{len(st.deployments)} deployment(s){', rollout ' + p.rollout_state if p and p.rollout_state else ''}")
            if line != last:
                self.progress("state", line)
                last = line
            if st.stable:
                if digests:
                    st.image_digests = self._call(f"reading the image digests of {service}",
                                                  lambda: self.reader.image_digests(service))
                return st
            elapsed = self.clock() - started
            if elapsed > self.timeout:
                raise OperationFailed(f"Timed out after {round(elapsed)}s: {line}.")
            self.sleep(self.poll_interval)


def _operations(ctx: JobContext) -> EcsOperations:
    s = ctx.settings
    return EcsOperations(ctx.ecs_client(ctx.env), ctx.env.cluster, ctx.progress, ctx.checkpoint,
                         poll_interval=s.poll_interval, timeout=s.stability_timeout, sleep=ctx.sleep,
                         reason=ctx.reason)


def restart(ctx: JobContext) -> Outcome:
    return _operations(ctx).restart(ctx.job.target, ctx.params)


def redeploy(ctx: JobContext) -> Outcome:
    return _operations(ctx).redeploy(ctx.job.target, ctx.params)
