"""The Dramatiq actor, declared on a given broker (no broker is touched at import time)."""
from __future__ import annotations

from typing import Any

import dramatiq

from jobs.kinds import QUEUE, RUN_JOB_ACTOR
from workers.runner import JobRunner


def _never_retry(retries: int, exc: Exception) -> bool:
    # A message is never retried by Dramatiq: transient AWS trouble suspends the job with a
    # backoff (workers/runner.py), anything else already ended it; a message lost with a crash
    # is sent again by the due set (jobs/suspended.py) or the sweeper.
    return False


def declare(broker: dramatiq.Broker, runner: JobRunner, *, max_age_ms: int) -> Any:
    def run_job(job_id: str, attempt: int | None = None) -> None:
        runner.run(job_id, attempt)

    return dramatiq.actor(broker=broker, actor_name=RUN_JOB_ACTOR, queue_name=QUEUE, retry_when=_never_retry,
                          max_age=max_age_ms)(run_job)
