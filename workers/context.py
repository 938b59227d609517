"""What an operation gets to do its work, and what it returns."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from scope.catalog import Environment
from scope.models import Job
from scope.settings import Settings


@dataclass
class Outcome:
    """A verified result: ``detail`` is the human outcome shown on the job and in the audit trail."""

    detail: str
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


@dataclass
class JobContext:
    settings: Settings  # the worker's knobs (poll interval, timeouts) and its environ for target URLs
    job: Job
    env: Environment
    params: dict[str, Any]  # job.params, mutable; persist changes with checkpoint()
    progress: Callable[[str, str], None]  # (type, message) -> job event
    checkpoint: Callable[[dict[str, Any]], None]  # persist params (and params["before"]) to the job row
    sleep: Callable[[float], None]  # sleeps and heartbeats the job
    ecs_client: Callable[[Environment], Any]
    # Any other AWS client of the environment (ecr, elbv2, ...); None: no such client (tests)
    aws_client: Callable[[Environment, str], Any] = lambda env, service: None
    clock: Callable[[], float] = time.monotonic  # what sleep() moves on (a fake clock in tests)
    logs_client: Callable[[Environment], Any] | None = None  # CloudWatch Logs (a one-off task's output)

    @property
    def reason(self) -> str:
        return f"Valet Key {self.job.action} by {self.job.actor} (job {self.job.id})"


Operation = Callable[[JobContext], Outcome]
