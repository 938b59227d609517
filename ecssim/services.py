"""Simulated services: configuration, deployments, and counts that lag the tasks as on AWS.

Service.runningCount is "the number of tasks in the cluster that are in the
RUNNING state" (botocore model) and, like every ECS read, eventually
consistent: a change in the tasks shows in the counts only after a while.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .deployments import ServiceDeploymentRecord, SimDeployment
from .enums import ControllerType, DeploymentStatus


@dataclass
class CountSnapshot:
    time: float
    service: tuple[int, int]  # (running, pending)
    deployments: dict[str, tuple[int, int]]  # deployment id -> (running, pending)
    reads: int = 0  # DescribeServices answers that covered the service since this snapshot


@dataclass
class SimService:
    account: str
    region: str
    cluster_name: str
    cluster_arn: str
    name: str
    arn: str
    desired: int
    td_arn: str
    controller: ControllerType = ControllerType.ECS
    launch_type: str = "FARGATE"
    min_percent: int = 100
    max_percent: int = 200
    breaker_enable: bool = False
    breaker_rollback: bool = False
    health_check_grace: int = 0
    load_balancers: list[dict[str, Any]] = field(default_factory=list)
    network: dict[str, Any] = field(default_factory=dict)
    platform_version: str | None = None
    deployments: list[SimDeployment] = field(default_factory=list)  # PRIMARY first, then ACTIVE
    records: list[ServiceDeploymentRecord] = field(default_factory=list)
    last_completed: SimDeployment | None = None
    deleted: bool = False
    below_min_since: float | None = None  # autoscaling: when desired first fell outside [min, max]
    events: list[dict[str, Any]] = field(default_factory=list)
    snapshots: list[CountSnapshot] = field(default_factory=list)
    visible: CountSnapshot | None = None
    moto_service: Any = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.cluster_name, self.name)

    @property
    def primary(self) -> SimDeployment | None:
        return self.deployments[0] if self.deployments else None

    @property
    def min_healthy(self) -> int:
        return math.ceil(self.desired * self.min_percent / 100)

    @property
    def max_total(self) -> int:
        return math.floor(self.desired * self.max_percent / 100)

    def deployment_configuration(self) -> dict[str, Any]:
        return {"deploymentCircuitBreaker": {"enable": self.breaker_enable, "rollback": self.breaker_rollback},
                "maximumPercent": self.max_percent, "minimumHealthyPercent": self.min_percent}

    def set_deployment_configuration(self, dc: dict[str, Any]) -> None:
        self.max_percent = int(dc.get("maximumPercent", self.max_percent))
        self.min_percent = int(dc.get("minimumHealthyPercent", self.min_percent))
        cb = dc.get("deploymentCircuitBreaker") or {}
        self.breaker_enable = bool(cb.get("enable", self.breaker_enable))
        self.breaker_rollback = bool(cb.get("rollback", self.breaker_rollback))

    # ---- lagging counts --------------------------------------------------------
    def observe(self, now: float, service: tuple[int, int], deps: dict[str, tuple[int, int]]) -> None:
        last = self.snapshots[-1] if self.snapshots else None
        if last is None or last.service != service or last.deployments != deps:
            self.snapshots.append(CountSnapshot(now, service, deps))
        if self.visible is None:  # a new service shows its first counts at once
            self.visible = self.snapshots[0]

    def read_counts(self, now: float, lag_seconds: float, lag_reads: int, max_lag: float) -> CountSnapshot:
        """The counts a DescribeServices answer shows now; counts this read toward the lag."""
        for s in self.snapshots:
            s.reads += 1
        for s in reversed(self.snapshots):
            age = now - s.time
            if age >= lag_seconds and (s.reads > lag_reads or age >= max_lag):
                self.visible = s
                break
        # Older snapshots can never become visible again.
        if self.visible in self.snapshots:
            self.snapshots = self.snapshots[self.snapshots.index(self.visible):]
        assert self.visible is not None
        return self.visible

    def add_event(self, now: float, message: str, event_id: str) -> None:
        import datetime as dt

        self.events.insert(0, {"id": event_id, "createdAt": dt.datetime.fromtimestamp(now, dt.UTC),
                               "message": message})
        del self.events[100:]

    def render_deployments(self) -> list[dict[str, Any]]:
        if self.controller != ControllerType.ECS:
            return []  # CODE_DEPLOY / EXTERNAL: taskSets instead (boto/botocore#2865)
        return [d.render(self.desired if d.status == DeploymentStatus.PRIMARY else
                         d.counts.get("running", 0) + d.counts.get("pending", 0),
                         self.launch_type, self.network or None) for d in self.deployments]
