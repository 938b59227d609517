"""The Dramatiq actors (jobs; announcements and their deliveries), declared on a given broker (no broker is
touched at import time)."""
from __future__ import annotations

from typing import Any

import dramatiq
import redis
from dramatiq.middleware import CurrentMessage

from jobs.kinds import ANNOUNCE_ACTOR, DELIVER_ACTOR, NOTIFY_QUEUE, QUEUE, RUN_JOB_ACTOR
from scope.errors import TransientError, Unavailable, ValetKeyError
from workers.notify import Notifier, delivery_failed
from workers.runner import JobRunner

# A delivery is tried this many more times, the waits doubling from the minimum backoff (5 s by
# default: then 10, 20, 40 s … up to 10 minutes), so a receiver down for a deploy still hears.
NOTIFY_RETRIES = 8


class DeliveryRetry(Exception):
    """Raised to Dramatiq so that it retries one delivery with backoff."""


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


def _retry_delivery(retries: int, exc: Exception) -> bool:
    return isinstance(exc, DeliveryRetry) and retries < NOTIFY_RETRIES


def declare_notify(broker: dramatiq.Broker, notifier: Notifier, *, min_backoff_ms: int = 5_000) -> tuple[Any, Any]:
    """The two notify actors: ``announce`` fans out, ``deliver_webhook`` makes one delivery (Slack or webhook)."""
    def announce(kind: str, job_id: str) -> None:
        notifier.announce(kind, job_id)

    def deliver(target: str, kind: str, job_id: str, index: int = 0) -> None:
        msg = CurrentMessage.get_current_message()
        retries = int(msg.options.get("retries", 0)) if msg is not None else 0
        try:
            notifier.deliver(target, kind, job_id, index)
        except (TransientError, Unavailable, redis.RedisError) as e:
            if retries >= NOTIFY_RETRIES:
                delivery_failed(target, kind, job_id, index, e)
                return
            raise DeliveryRetry(getattr(e, "detail", type(e).__name__)) from None
        except ValetKeyError as e:  # refused for good (a 4xx): retrying would be refused the same way
            delivery_failed(target, kind, job_id, index, e)

    a = dramatiq.actor(broker=broker, actor_name=ANNOUNCE_ACTOR, queue_name=NOTIFY_QUEUE, max_retries=3)(announce)
    d = dramatiq.actor(broker=broker, actor_name=DELIVER_ACTOR, queue_name=NOTIFY_QUEUE, retry_when=_retry_delivery,
                       min_backoff=min_backoff_ms, max_backoff=600_000)(deliver)
    return a, d
