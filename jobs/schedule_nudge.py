"""The nudge that tells the scheduler process to reconcile an environment now.

The web process writes a pause/resume durably (``web.services.schedule``)
and then nudges the scheduler (``workers.schedule_reconciler``) through a
bounded Redis list. A lost nudge costs at most one scheduler tick (a minute):
the database, not the nudge, is the truth.
"""
from __future__ import annotations

import logging

import redis

log = logging.getLogger(__name__)

PAUSE, RESUME = "schedule.pause", "schedule.resume"
NUDGE_KEY = "valetkey:schedule:nudge"
NUDGE_MAX = 100  # bounded: a scheduler that is down must not let the list grow forever
from scope.text import as_text


def nudge(r: redis.Redis, environment: str) -> bool:
    """Ask the scheduler to reconcile ``environment`` now; False (logged) when Redis refused."""
    try:
        with r.pipeline(transaction=True) as p:
            p.rpush(NUDGE_KEY, environment)
            p.ltrim(NUDGE_KEY, -NUDGE_MAX, -1)
            p.execute()
        return True
    except redis.RedisError as e:
        log.warning("could not nudge the scheduler for %s (%s); it reconciles within a minute anyway",
                    environment, type(e).__name__)
        return False


def take_nudge(r: redis.Redis, timeout: int = 1) -> str | None:
    """Wait up to ``timeout`` seconds for a nudge; the environment name, or None."""
    got = r.blpop([NUDGE_KEY], timeout=timeout)
    if not got:
        return None
    return as_text(got[1])


