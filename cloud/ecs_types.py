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
