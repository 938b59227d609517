"""The one place the Dramatiq broker is built and installed (before any actor is imported)."""
from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage, Middleware, ShutdownNotifications, TimeLimit, default_middleware

from jobs.kinds import ANNOUNCE_ACTOR, NOTIFY_QUEUE, QUEUE, RUN_JOB_ACTOR


def middleware() -> list[Middleware]:
    """Dramatiq's defaults without TimeLimit and ShutdownNotifications, plus CurrentMessage.

    Both stop a job by raising an exception asynchronously in its thread
    (over time, or at worker shutdown), wherever it happens to be: halfway through taking a lock or a
    pooled connection, which then stays taken for the life of the process.
    Every operation has its own deadline instead (stability and task timeouts,
    boto3 and Redis socket timeouts), and a job whose worker stops answering is
    taken over through its lease (jobs/service.py).
    """
    return [m() for m in default_middleware if m not in (TimeLimit, ShutdownNotifications)] + [CurrentMessage()]


def make_broker(redis_url: str) -> RedisBroker:
    broker = RedisBroker(url=redis_url, middleware=middleware())
    # Declaring the queue lets the web process enqueue without importing the actors.
    broker.declare_queue(QUEUE)
    broker.declare_queue(NOTIFY_QUEUE)
    return broker


def install(redis_url: str) -> RedisBroker:
    broker = make_broker(redis_url)
    dramatiq.set_broker(broker)
    return broker


def send_run_job(broker: dramatiq.Broker, job_id: str, attempt: int | None = None) -> None:
    """Enqueue the job; the message carries only the id, and for the next step of a suspended job
    the claim (``attempts``) that step continues (jobs/suspended.py)."""
    args: tuple[str] | tuple[str, int] = (job_id,) if attempt is None else (job_id, attempt)
    broker.enqueue(dramatiq.Message(queue_name=QUEUE, actor_name=RUN_JOB_ACTOR, args=args,
                                    kwargs={}, options={}))


def send_announce(broker: dramatiq.Broker, kind: str, job_id: str) -> None:
    """Enqueue an announcement about a job (workers/notify.py reads the rest from the job row)."""
    broker.enqueue(dramatiq.Message(queue_name=NOTIFY_QUEUE, actor_name=ANNOUNCE_ACTOR, args=(kind, job_id),
                                    kwargs={}, options={}))
