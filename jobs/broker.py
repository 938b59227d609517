"""The one place the Dramatiq broker is built and installed (before any actor is imported)."""
from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

from jobs.kinds import QUEUE, RUN_JOB_ACTOR


def make_broker(redis_url: str) -> RedisBroker:
    broker = RedisBroker(url=redis_url)
    broker.add_middleware(CurrentMessage())
    # Declaring the queue lets the web process enqueue without importing the actors.
    broker.declare_queue(QUEUE)
    return broker


def install(redis_url: str) -> RedisBroker:
    broker = make_broker(redis_url)
    dramatiq.set_broker(broker)
    return broker


def send_run_job(broker: dramatiq.Broker, job_id: str) -> None:
    """Enqueue the job; the message carries only the id."""
    broker.enqueue(dramatiq.Message(queue_name=QUEUE, actor_name=RUN_JOB_ACTOR, args=(job_id,),
                                    kwargs={}, options={}))
