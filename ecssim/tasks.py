"""Simulated tasks and the agent that moves them through the ECS task lifecycle on the clock.

Lifecycle (developer guide, task-lifecycle.md): PROVISIONING -> PENDING ->
ACTIVATING -> RUNNING -> DEACTIVATING -> STOPPING -> DEPROVISIONING ->
STOPPED. StopTask sets desiredStatus STOPPED at once, but lastStatus stays
RUNNING until the agent acts (eventual consistency): that delay is what
makes "desiredStatus == STOPPED means gone" wrong.
"""
from __future__ import annotations

import datetime as dt
import heapq
import random
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .enums import STARTING, HealthStatus, StopCode, TargetState, TaskStatus
from .timings import Timings

USER_STOP_REASON = "Task stopped by user"
ESSENTIAL_EXITED = "Essential container in task exited"


def ts(t: float | None) -> dt.datetime | None:
    return None if t is None else dt.datetime.fromtimestamp(t, dt.UTC)


class Fate(StrEnum):
    """What happens to a task once started."""

    RUN = "run"  # runs until stopped
    CANNOT_PULL = "cannot-pull"  # PENDING -> STOPPED, TaskFailedToStart
    CRASH = "crash"  # RUNNING, then the essential container exits with exit_code
    EXIT = "exit"  # a one-off task: RUNNING, then exits with exit_code


@dataclass
class SimContainer:
    name: str
    image: str
    digest: str | None
    essential: bool
    has_health_check: bool
    arn: str
    cpu: str = "0"
    memory: str | None = None
    last_status: str = "PENDING"
    exit_code: int | None = None
    reason: str | None = None
    health: HealthStatus = HealthStatus.UNKNOWN


@dataclass
class TargetRegistration:
    """The task's target in its service's target group (awsvpc: the task's IP)."""

    target_group_arn: str
    ip: str
    port: int
    state: TargetState = TargetState.INITIAL
    registered: bool = False  # ECS registers the target once the task is RUNNING


@dataclass
class SimTask:
    arn: str
    account: str
    region: str
    cluster_name: str
    cluster_arn: str
    td_arn: str
    group: str
    started_by: str
    launch_type: str
    containers: list[SimContainer]
    created_at: float
    fate: Fate = Fate.RUN
    run_for: float | None = None  # CRASH/EXIT: seconds RUNNING before the exit
    exit_code: int = 0
    pull_error: str = ""
    service: str | None = None  # the owning service's name
    deployment_id: str | None = None
    cpu: str | None = None
    memory: str | None = None
    platform_version: str | None = None
    ip: str = ""
    attachments: list[dict[str, Any]] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    tags: list[dict[str, str]] = field(default_factory=list)
    last_status: TaskStatus = TaskStatus.PROVISIONING
    desired_status: TaskStatus = TaskStatus.RUNNING
    pull_started_at: float | None = None
    pull_stopped_at: float | None = None
    started_at: float | None = None
    stopping_at: float | None = None
    execution_stopped_at: float | None = None
    stopped_at: float | None = None
    stop_code: StopCode | None = None
    stopped_reason: str | None = None
    targets: list[TargetRegistration] = field(default_factory=list)
    version: int = 1
    failure_counted: bool = False  # seen by its deployment's circuit breaker
    moto_task: Any = None
    _events: list[tuple[float, int, str]] = field(default_factory=list)
    _seq: int = 0

    @property
    def id(self) -> str:
        return self.arn.rsplit("/", 1)[-1]

    # ---- derived state ------------------------------------------------------
    @property
    def wanted_running(self) -> bool:
        return self.last_status == TaskStatus.RUNNING and self.desired_status == TaskStatus.RUNNING

    @property
    def gone(self) -> bool:
        return self.last_status == TaskStatus.STOPPED

    def health_status(self) -> HealthStatus:
        checked = [c for c in self.containers if c.essential and c.has_health_check]
        if not checked or self.last_status != TaskStatus.RUNNING:
            return HealthStatus.UNKNOWN
        if any(c.health == HealthStatus.UNHEALTHY for c in checked):
            return HealthStatus.UNHEALTHY
        return HealthStatus.HEALTHY if all(c.health == HealthStatus.HEALTHY for c in checked) else HealthStatus.UNKNOWN

    def counted_healthy(self, now: float, settle: float) -> bool:
        """Healthy as ECS counts it for minimumHealthyPercent: container health check HEALTHY,
        target healthy behind a load balancer, or (neither) RUNNING for ``settle`` seconds."""
        if not self.wanted_running:
            return False
        checked = any(c.essential and c.has_health_check for c in self.containers)
        if checked and self.health_status() != HealthStatus.HEALTHY:
            return False
        if self.targets and any(t.state != TargetState.HEALTHY for t in self.targets):
            return False
        if not checked and not self.targets:
            return self.started_at is not None and now >= self.started_at + settle
        return True

    # ---- events -------------------------------------------------------------
    def schedule(self, at: float, kind: str) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, self._seq, kind))

    def cancel(self, *kinds: str) -> None:
        self._events = [e for e in self._events if e[2] not in kinds]
        heapq.heapify(self._events)

    def next_event_at(self) -> float | None:
        return self._events[0][0] if self._events else None

    def pop_due(self, now: float) -> tuple[float, str] | None:
        if self._events and self._events[0][0] <= now:
            at, _, kind = heapq.heappop(self._events)
            return at, kind
        return None

    # ---- rendering (botocore shape "Task") -------------------------------------
    def render(self, include_tags: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "taskArn": self.arn, "clusterArn": self.cluster_arn, "taskDefinitionArn": self.td_arn,
            "group": self.group, "lastStatus": str(self.last_status), "desiredStatus": str(self.desired_status),
            "launchType": self.launch_type or "FARGATE", "createdAt": ts(self.created_at), "version": self.version,
            "availabilityZone": f"{self.region}a", "connectivity": "CONNECTED" if self.started_at else None,
            "connectivityAt": ts(self.started_at), "pullStartedAt": ts(self.pull_started_at),
            "pullStoppedAt": ts(self.pull_stopped_at), "startedAt": ts(self.started_at),
            "stoppingAt": ts(self.stopping_at), "executionStoppedAt": ts(self.execution_stopped_at),
            "stoppedAt": ts(self.stopped_at), "stopCode": str(self.stop_code) if self.stop_code else None,
            "stoppedReason": self.stopped_reason, "healthStatus": str(self.health_status()),
            "cpu": self.cpu, "memory": self.memory, "platformVersion": self.platform_version or "1.4.0",
            "platformFamily": "Linux", "attachments": self.attachments, "overrides": self.overrides or {},
            "containers": [{
                "containerArn": c.arn, "taskArn": self.arn, "name": c.name, "image": c.image,
                "imageDigest": c.digest, "runtimeId": f"{self.id}-{c.name}" if self.started_at else None,
                "lastStatus": c.last_status, "exitCode": c.exit_code, "reason": c.reason,
                "healthStatus": str(c.health), "cpu": c.cpu, "memory": c.memory,
                "networkInterfaces": [{"attachmentId": a["id"], "privateIpv4Address": self.ip}
                                      for a in self.attachments[:1]] if self.ip else [],
            } for c in self.containers],
        }
        if self.started_by:
            out["startedBy"] = self.started_by
        if include_tags:
            out["tags"] = self.tags
        return {k: v for k, v in out.items() if v is not None}


class Agent:
    """Moves tasks along their lifecycle; every transition happens at its scheduled instant."""

    def __init__(self, timings: Timings, rng: random.Random) -> None:
        self.t, self.rng = timings, rng

    def launch(self, task: SimTask, now: float) -> None:
        task.schedule(now + self.t.provisioning.draw(self.rng), "provisioned")

    def request_stop(self, task: SimTask, now: float, code: StopCode, reason: str) -> bool:
        """desiredStatus STOPPED now; lastStatus follows later. False if it was already told to stop."""
        if task.desired_status == TaskStatus.STOPPED:
            return False
        task.desired_status = TaskStatus.STOPPED
        task.stop_code, task.stopped_reason, task.stopping_at = code, reason, now
        task.version += 1
        task.cancel("provisioned", "pulled", "activated", "healthy", "target_healthy", "exit")
        if task.last_status == TaskStatus.RUNNING:
            task.schedule(now + self.t.stop_signal.draw(self.rng), "deactivate")
        elif task.last_status in STARTING:
            task.schedule(now + self.t.deprovisioning.draw(self.rng), "stopped")
        return True

    def run_until(self, task: SimTask, now: float) -> bool:
        """Apply every transition due by ``now``; True if anything changed."""
        changed = False
        while (due := task.pop_due(now)) is not None:
            at, kind = due
            getattr(self, f"_on_{kind}")(task, at)
            task.version += 1
            changed = True
        return changed

    # ---- transitions ---------------------------------------------------------
    def _on_provisioned(self, task: SimTask, at: float) -> None:
        task.last_status = TaskStatus.PENDING
        task.pull_started_at = at
        task.schedule(at + self.t.pulling.draw(self.rng), "pulled")

    def _on_pulled(self, task: SimTask, at: float) -> None:
        if task.fate == Fate.CANNOT_PULL:
            # The pull fails in PENDING: the task never runs (stopCode TaskFailedToStart).
            task.desired_status = TaskStatus.STOPPED
            task.stop_code, task.stopped_reason = StopCode.TASK_FAILED_TO_START, task.pull_error
            task.stopping_at = task.execution_stopped_at = task.stopped_at = at
            task.last_status = TaskStatus.STOPPED
            for c in task.containers:
                c.last_status, c.reason = "STOPPED", task.pull_error
            return
        task.pull_stopped_at = at
        task.last_status = TaskStatus.ACTIVATING
        task.schedule(at + self.t.activating.draw(self.rng), "activated")

    def _on_activated(self, task: SimTask, at: float) -> None:
        task.last_status = TaskStatus.RUNNING
        task.started_at = at
        for c in task.containers:
            c.last_status = "RUNNING"
        if any(c.has_health_check for c in task.containers):
            task.schedule(at + self.t.health_grace.draw(self.rng), "healthy")
        for t in task.targets:
            t.registered = True
        if task.targets:
            task.schedule(at + self.t.target_healthy_after.draw(self.rng), "target_healthy")
        if not task.targets and not any(c.has_health_check for c in task.containers):
            # No event changes such a task when ECS starts counting it healthy; wake the scheduler.
            task.schedule(at + self.t.no_health_check_settle, "settled")
        if task.fate in (Fate.CRASH, Fate.EXIT) and task.run_for is not None:
            task.schedule(at + task.run_for, "exit")

    def _on_healthy(self, task: SimTask, at: float) -> None:
        for c in task.containers:
            if c.has_health_check:
                c.health = HealthStatus.HEALTHY

    def _on_settled(self, task: SimTask, at: float) -> None:
        pass

    def _on_target_healthy(self, task: SimTask, at: float) -> None:
        for t in task.targets:
            t.state = TargetState.HEALTHY

    def _on_exit(self, task: SimTask, at: float) -> None:
        # The essential container exits on its own: ECS stops the task (EssentialContainerExited).
        task.desired_status = TaskStatus.STOPPED
        task.stop_code, task.stopped_reason = StopCode.ESSENTIAL_CONTAINER_EXITED, ESSENTIAL_EXITED
        task.stopping_at = at
        ess = next((c for c in task.containers if c.essential), task.containers[0])
        ess.exit_code, ess.last_status = task.exit_code, "STOPPED"
        task.cancel("healthy", "target_healthy")
        self._on_deactivate(task, at)

    def _on_deactivate(self, task: SimTask, at: float) -> None:
        task.last_status = TaskStatus.DEACTIVATING
        for t in task.targets:
            t.state = TargetState.DRAINING
        task.schedule(at + self.t.deactivating.draw(self.rng), "stopping")

    def _on_stopping(self, task: SimTask, at: float) -> None:
        task.last_status = TaskStatus.STOPPING
        task.schedule(at + self.t.stopping.draw(self.rng), "deprovision")

    def _on_deprovision(self, task: SimTask, at: float) -> None:
        task.last_status = TaskStatus.DEPROVISIONING
        task.execution_stopped_at = at
        for c in task.containers:
            if c.last_status != "STOPPED":
                # SIGTERM honoured: a clean exit (0) for a stop the user or scheduler asked for.
                c.last_status, c.exit_code = "STOPPED", 0
            c.health = HealthStatus.UNKNOWN
        task.schedule(at + self.t.deprovisioning.draw(self.rng), "stopped")

    def _on_stopped(self, task: SimTask, at: float) -> None:
        task.last_status = TaskStatus.STOPPED
        task.stopped_at = at
        task.execution_stopped_at = task.execution_stopped_at or at
        task.targets = []
        for c in task.containers:
            c.last_status = "STOPPED"
