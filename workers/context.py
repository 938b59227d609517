"""What an operation gets to do its work, and what it returns."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from cloud.ecs_gateway import EcsGateway
from scope.catalog import Environment
from scope.models import Job
from scope.settings import Settings


class Suspend(Exception):
    """Raised by ``JobContext.sleep`` in a worker: the job's next step is due in ``seconds``; the
    thread is freed meanwhile. The operation checkpoints everything its next step needs first."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"next step in {seconds:.1f}s")
        self.seconds = seconds


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
    # Waits before the next poll. In a worker it raises Suspend (the step ends; the next one is
    # scheduled); elsewhere (tests, benchmarks) it may simply sleep and return.
    sleep: Callable[[float], None]
    ecs_client: Callable[[Environment], Any]
    # Any other AWS client of the environment (ecr, elbv2, ...); None: no such client (tests)
    aws_client: Callable[[Environment, str], Any] = lambda env, service: None
    clock: Callable[[], float] = time.monotonic  # what sleep() moves on (a fake clock in tests)
    logs_client: Callable[[Environment], Any] | None = None  # CloudWatch Logs (a one-off task's output)
    # True for a step that continues this claim after a suspension (not a first run or a takeover)
    continuing: bool = False
    # The process's ECS gateway: poll reads shared with every job watching the cluster (None: own reads),
    # and the AWS account an environment's calls go to (the gateway's keys name it).
    gateway: EcsGateway | None = None
    account_of: Callable[[Environment], str] = lambda env: "default"

    @property
    def reason(self) -> str:
        return f"Valet Key {self.job.action} by {self.job.actor} (job {self.job.id})"


Operation = Callable[[JobContext], Outcome]
