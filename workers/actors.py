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
from workers.runner import JobRunner, Retry

MAX_RETRIES = 3
# A delivery is tried this many more times, the waits doubling from the minimum backoff (5 s by
# default: then 10, 20, 40 s … up to 10 minutes), so a receiver down for a deploy still hears.
NOTIFY_RETRIES = 8


class DeliveryRetry(Exception):
    """Raised to Dramatiq so that it retries one delivery with backoff."""


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
