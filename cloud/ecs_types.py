"""ECS's status words as enums, and Valet Key's own summary of a service's health.

StrEnum members compare equal to the strings boto3 returns, so raw AWS
dicts are compared against members (``t.get("lastStatus") == TaskStatus.RUNNING``)
and fields holding AWS' values keep whatever AWS sent, an unknown word too.
"""
from __future__ import annotations

import enum


class TaskStatus(enum.StrEnum):
    """A task's ``lastStatus`` / ``desiredStatus`` (the task lifecycle)."""

    PROVISIONING = "PROVISIONING"
    PENDING = "PENDING"
    ACTIVATING = "ACTIVATING"
    RUNNING = "RUNNING"
    DEACTIVATING = "DEACTIVATING"
    STOPPING = "STOPPING"
    DEPROVISIONING = "DEPROVISIONING"
    STOPPED = "STOPPED"
    DELETED = "DELETED"


# A task in one of these is on its way out (or gone): it no longer counts as running.
TASK_ENDING = frozenset({TaskStatus.STOPPING, TaskStatus.DEPROVISIONING, TaskStatus.STOPPED})


class ServiceStatus(enum.StrEnum):
    """A service's ``status``."""

    ACTIVE = "ACTIVE"
    DRAINING = "DRAINING"
    INACTIVE = "INACTIVE"


class DeploymentStatus(enum.StrEnum):
    """A deployment's ``status``: the newest is PRIMARY, older ones still running are ACTIVE."""

    PRIMARY = "PRIMARY"
    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"


class RolloutState(enum.StrEnum):
    """A deployment's ``rolloutState`` (absent for services without the ECS deployment controller)."""

    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


class ServiceDeploymentStatus(enum.StrEnum):
    """A service deployment's ``status`` (ListServiceDeployments / DescribeServiceDeployments)."""

    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCESSFUL = "SUCCESSFUL"
    STOPPED = "STOPPED"
    STOP_REQUESTED = "STOP_REQUESTED"
    ROLLBACK_REQUESTED = "ROLLBACK_REQUESTED"
    ROLLBACK_IN_PROGRESS = "ROLLBACK_IN_PROGRESS"
    ROLLBACK_SUCCESSFUL = "ROLLBACK_SUCCESSFUL"
    ROLLBACK_FAILED = "ROLLBACK_FAILED"


# Terminal service deployment states, and the ones that mean the circuit breaker (or an alarm) rolled back.
SERVICE_DEPLOYMENT_DONE = frozenset({ServiceDeploymentStatus.SUCCESSFUL, ServiceDeploymentStatus.STOPPED,
                                     ServiceDeploymentStatus.ROLLBACK_SUCCESSFUL,
                                     ServiceDeploymentStatus.ROLLBACK_FAILED})
SERVICE_DEPLOYMENT_ROLLBACK = frozenset({ServiceDeploymentStatus.ROLLBACK_REQUESTED,
                                         ServiceDeploymentStatus.ROLLBACK_IN_PROGRESS,
                                         ServiceDeploymentStatus.ROLLBACK_SUCCESSFUL,
                                         ServiceDeploymentStatus.ROLLBACK_FAILED})


class DeploymentController(enum.StrEnum):
    """A service's ``deploymentController.type``: only ECS services have ``deployments`` and can be force-deployed."""

    ECS = "ECS"
    CODE_DEPLOY = "CODE_DEPLOY"
    EXTERNAL = "EXTERNAL"


class HealthStatus(enum.StrEnum):
    """A task's or container's ``healthStatus``."""

    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"
    UNKNOWN = "UNKNOWN"


class LaunchType(enum.StrEnum):
    FARGATE = "FARGATE"
    EC2 = "EC2"
    EXTERNAL = "EXTERNAL"


class AssignPublicIp(enum.StrEnum):
    ENABLED = "ENABLED"
    DISABLED = "DISABLED"


class ServiceHealth(enum.StrEnum):
    """Valet Key's one-word summary of a service (shown on pages, stored in job and audit records)."""

    HEALTHY = "HEALTHY"
    DEPLOYING = "DEPLOYING"
    DEGRADED = "DEGRADED"
    STOPPED = "STOPPED"
    FAILED = "FAILED"
    DRAINING = "DRAINING"
    INACTIVE = "INACTIVE"
