"""The Dramatiq actor, declared on a given broker (no broker is touched at import time)."""
from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage

from jobs.kinds import QUEUE, RUN_JOB_ACTOR
from workers.runner import JobRunner, Retry

MAX_RETRIES = 3


def _retry_when(retries: int, exc: Exception) -> bool:
    # Only transient AWS trouble is retried (the runner raises Retry for it);
    # anything else already failed the job and must not run again.
    return isinstance(exc, Retry) and retries < MAX_RETRIES


def declare(broker: dramatiq.Broker, runner: JobRunner, *, max_age_ms: int) -> Any:
    def run_job(job_id: str) -> None:
        msg = CurrentMessage.get_current_message()
        retries = int(msg.options.get("retries", 0)) if msg is not None else 0
        runner.run(job_id, retries=retries, max_retries=MAX_RETRIES)

    return dramatiq.actor(broker=broker, actor_name=RUN_JOB_ACTOR, queue_name=QUEUE, retry_when=_retry_when,
                          min_backoff=2_000, max_backoff=30_000, max_age=max_age_ms)(run_job)
