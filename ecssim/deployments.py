"""Deployments (Service.deployments) and service deployments (DescribeServiceDeployments).

A rolling update has a PRIMARY deployment (the new one, rolloutState
IN_PROGRESS) and ACTIVE ones being drained; when done the old ones disappear
and the primary is COMPLETED. The deployment circuit breaker fails a
deployment whose tasks keep failing before any of them was healthy, and with
rollback starts a NEW primary deployment of the last completed revision
(botocore model: Deployment.failedTasks, DeploymentCircuitBreaker;
API_ServiceDeploymentCircuitBreaker: threshold 0.5 x desired, min 3, max 200).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .enums import (
    CircuitBreakerStatus,
    DeploymentStatus,
    RolloutState,
    ServiceDeploymentStatus,
)
from .tasks import ts

CIRCUIT_BREAKER_REASON = "ECS deployment circuit breaker: tasks failed to start."


def circuit_breaker_threshold(desired: int) -> int:
    return min(200, max(3, math.ceil(0.5 * desired)))


@dataclass
class ServiceRevision:
    """A service revision: the task definition and the digests resolved for it."""

    arn: str
    service_arn: str
    cluster_arn: str
    td_arn: str
    images: dict[str, tuple[str, str | None]]  # container name -> (image, pinned digest)
    created_at: float
    launch_type: str

    def render(self) -> dict[str, Any]:
        return {
            "serviceRevisionArn": self.arn, "serviceArn": self.service_arn, "clusterArn": self.cluster_arn,
            "taskDefinition": self.td_arn, "launchType": self.launch_type, "createdAt": ts(self.created_at),
            "containerImages": [{"containerName": n, "image": img, **({"imageDigest": d} if d else {})}
                                for n, (img, d) in self.images.items()],
        }


@dataclass
class ServiceDeploymentRecord:
    arn: str
    service_arn: str
    cluster_arn: str
    created_at: float
    target: ServiceRevision
    sources: list[ServiceRevision]
    deployment_configuration: dict[str, Any]
    status: ServiceDeploymentStatus = ServiceDeploymentStatus.IN_PROGRESS
    status_reason: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    stopped_at: float | None = None
    updated_at: float | None = None
    rollback: dict[str, Any] | None = None  # {"reason", "startedAt", "serviceRevisionArn"}
    breaker_enabled: bool = False
    breaker_triggered: bool = False
    failure_count: int = 0
    threshold: int = 3

    def _counts(self, counts: dict[str, tuple[int, int, int]], rev: ServiceRevision) -> dict[str, Any]:
        requested, running, pending = counts.get(rev.arn, (0, 0, 0))
        return {"arn": rev.arn, "requestedTaskCount": requested, "runningTaskCount": running,
                "pendingTaskCount": pending}

    def render(self, counts: dict[str, tuple[int, int, int]]) -> dict[str, Any]:
        if not self.breaker_enabled:
            breaker = CircuitBreakerStatus.DISABLED
        elif self.breaker_triggered:
            breaker = CircuitBreakerStatus.TRIGGERED
        elif self.status == ServiceDeploymentStatus.IN_PROGRESS:
            breaker = CircuitBreakerStatus.MONITORING
        else:
            breaker = CircuitBreakerStatus.MONITORING_COMPLETE
        out: dict[str, Any] = {
            "serviceDeploymentArn": self.arn, "serviceArn": self.service_arn, "clusterArn": self.cluster_arn,
            "createdAt": ts(self.created_at), "startedAt": ts(self.started_at), "finishedAt": ts(self.finished_at),
            "stoppedAt": ts(self.stopped_at), "updatedAt": ts(self.updated_at or self.created_at),
            "sourceServiceRevisions": [self._counts(counts, r) for r in self.sources],
            "targetServiceRevision": self._counts(counts, self.target),
            "status": str(self.status), "statusReason": self.status_reason,
            "deploymentConfiguration": self.deployment_configuration,
            "deploymentCircuitBreaker": {"status": str(breaker), "failureCount": self.failure_count,
                                         "threshold": self.threshold},
            "rollback": self.rollback,
        }
        return {k: v for k, v in out.items() if v is not None}

    def brief(self) -> dict[str, Any]:
        out = {"serviceDeploymentArn": self.arn, "serviceArn": self.service_arn, "clusterArn": self.cluster_arn,
               "startedAt": ts(self.started_at), "createdAt": ts(self.created_at),
               "finishedAt": ts(self.finished_at), "targetServiceRevisionArn": self.target.arn,
               "status": str(self.status), "statusReason": self.status_reason}
        return {k: v for k, v in out.items() if v is not None}


@dataclass
class SimDeployment:
    id: str  # ecs-svc/NNNN: what service tasks carry as startedBy
    revision: ServiceRevision
    created_at: float
    record: ServiceDeploymentRecord | None  # None: a rollback, which reports through the failed one's record
    status: DeploymentStatus = DeploymentStatus.PRIMARY
    rollout_state: RolloutState = RolloutState.IN_PROGRESS
    rollout_state_reason: str = ""
    updated_at: float = 0.0
    failed_tasks: int = 0
    ever_healthy: bool = False  # once a task was healthy, failedTasks resets and is no longer evaluated
    is_rollback: bool = False
    counts: dict[str, int] = field(default_factory=dict)  # lagged {"running", "pending"}, set by the service

    @property
    def td_arn(self) -> str:
        return self.revision.td_arn

    def render(self, desired: int, launch_type: str, network: dict[str, Any] | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "status": str(self.status), "taskDefinition": self.td_arn, "desiredCount": desired,
            "pendingCount": self.counts.get("pending", 0), "runningCount": self.counts.get("running", 0),
            "failedTasks": self.failed_tasks, "createdAt": ts(self.created_at),
            "updatedAt": ts(self.updated_at or self.created_at), "launchType": launch_type,
            "platformVersion": "1.4.0", "platformFamily": "Linux", "rolloutState": str(self.rollout_state),
            "rolloutStateReason": self.rollout_state_reason,
        }
        if network:
            out["networkConfiguration"] = network
        return out
