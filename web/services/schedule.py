"""Pause and resume of an environment's on/off schedule (operators and admins).

Like job creation, this is the contract between web and the scheduler
process: the web process writes the durable state (the pause row) and its
audit entry, then nudges the scheduler (``jobs.schedule_nudge``); the
scheduler (``workers.schedule_reconciler``) does every ECS change itself,
under its lock, with its own audit entries.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Callable

import redis

from jobs.audit_stream import AuditEvent, AuditLog
from jobs.schedule_nudge import PAUSE, RESUME, nudge
from scope.catalog import Environment
from scope.errors import Conflict, Forbidden
from scope.models import utcnow
from scope.roles import Permission
from scope.schedule_store import (
    NOT_PAUSED,
    Pause,
    ScheduleStore,
    parse_until,
    schedule_view,
)
from scope.times import iso
from web.context import principal, request_id, runtime, source
from web.guard import allow, audit_denied
from web.services.approvals import job_policy


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
              request_id: str = "", reason: str = "") -> dict[str, Any]:
        """Leave the environment as it is until ``until`` (None: until resumed)."""
        def audit(old: Pause | None, new: Pause) -> None:
            when = f"until {iso(until)}" if until else "until resumed"
            self.audit.record(AuditEvent(
                actor=actor, source=source, action=PAUSE, outcome="succeeded", environment=env.name,
                detail=f"Schedule paused {when}; the scheduler leaves {env.name} as it is.",
                before=old.record() if old else dict(NOT_PAUSED), after=new.record(), request_id=request_id,
                reason=reason))

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


def control() -> ScheduleControl:
    rt = runtime()
    return ScheduleControl(ScheduleStore(rt.sessions), rt.audit, rt.redis)


def _schedulable(env: str, action: str) -> Environment:
    """Authorize ``action`` on the environment's schedule; refusals are audited ``denied``."""
    environment, _ = allow(env, Permission.SCHEDULE, action=action)
    if environment.is_prod:
        # The scheduler never touches prod, even an enabled one: a pause there would promise nothing.
        detail = f"{env} is a production environment: the scheduler never touches it, so it cannot be paused or resumed."
        audit_denied(action, env, "", detail)
        raise Forbidden(detail)
    if environment.schedule is None:
        raise Conflict(f"{env} has no schedule (no 'schedule' key in its configuration): "
                       "there is nothing to pause or resume.")
    return environment


def pause_schedule(env: str, until: str | None, reason: str | None = None) -> dict[str, Any]:
    """Pause the schedule of ``env``, optionally until a time; returns the schedule state.

    Synchronous in two-person environments too: only operators and admins may
    pause, and they are the approvers there (docs/approvals.md)."""
    environment = _schedulable(env, PAUSE)
    assert environment.schedule is not None
    why, _ = job_policy(environment, PAUSE, "", reason)
    when = parse_until(until, environment.schedule, utcnow())
    return control().pause(environment, until=when, actor=principal().actor, source=source(),
                           request_id=request_id(), reason=why)


def resume_schedule(env: str) -> dict[str, Any]:
    """Resume the schedule of ``env``; the scheduler reconciles it at once."""
    environment = _schedulable(env, RESUME)
    return control().resume(environment, actor=principal().actor, source=source(),
                            request_id=request_id())
