"""Pause and resume of an environment's schedule, and the nudge that tells the scheduler to act now.

Like job creation, this is the contract between web and the scheduler
process: the web process writes the durable state (the pause row) and its
audit entry, then nudges the scheduler through a Redis list; the scheduler
(``workers.schedule``) does every ECS change itself, under its lock, with its
own audit entries. A lost nudge costs at most one scheduler tick (a minute):
the database, not the nudge, is the truth.
"""
from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Callable

import redis

from jobs.audit_stream import AuditEvent, AuditLog
from scope.catalog import Environment
from scope.models import utcnow
from scope.schedule_state import NOT_PAUSED, Pause, ScheduleStore, iso, schedule_view

log = logging.getLogger(__name__)

PAUSE, RESUME = "schedule.pause", "schedule.resume"
NUDGE_KEY = "valetkey:schedule:nudge"
NUDGE_MAX = 100  # bounded: a scheduler that is down must not let the list grow forever


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
    value = got[1]
    return value.decode() if isinstance(value, bytes) else str(value)


class ScheduleControl:
    """What operators do to a schedule; each change is audited inside its database transaction."""

    def __init__(self, store: ScheduleStore, audit: AuditLog, r: redis.Redis,
                 clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.store, self.audit, self.redis, self.clock = store, audit, r, clock

    def state(self, env: Environment, now: dt.datetime | None = None) -> dict[str, Any] | None:
        now = now or self.clock()
        pause = self.store.pause_of(env.name, now) if env.schedule is not None else None
        return schedule_view(env, pause, now)

    def pause(self, env: Environment, *, until: dt.datetime | None, actor: str, source: str,
              request_id: str = "") -> dict[str, Any]:
        """Leave the environment as it is until ``until`` (None: until resumed)."""
        def audit(old: Pause | None, new: Pause) -> None:
            when = f"until {iso(until)}" if until else "until resumed"
            self.audit.record(AuditEvent(
                actor=actor, source=source, action=PAUSE, outcome="succeeded", environment=env.name,
                detail=f"Schedule paused {when}; the scheduler leaves {env.name} as it is.",
                before=old.record() if old else dict(NOT_PAUSED), after=new.record(), request_id=request_id))

        self.store.set_pause(env.name, until, actor, audit)
        return self._state(env)

    def resume(self, env: Environment, *, actor: str, source: str, request_id: str = "") -> dict[str, Any]:
        """Drop the pause and have the scheduler reconcile the environment at once."""
        def audit(old: Pause | None) -> None:
            detail = ("Schedule resumed; the scheduler reconciles now." if old else
                      "Schedule was not paused; the scheduler reconciles now.")
            self.audit.record(AuditEvent(
                actor=actor, source=source, action=RESUME, outcome="succeeded", environment=env.name,
                detail=detail, before=old.record() if old else dict(NOT_PAUSED), after=dict(NOT_PAUSED),
                request_id=request_id))

        self.store.clear_pause(env.name, audit)
        nudge(self.redis, env.name)
        return self._state(env)

    def _state(self, env: Environment) -> dict[str, Any]:
        return self.state(env) or {}  # callers only pause/resume environments with a schedule
