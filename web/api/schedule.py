"""Pause and resume of an environment's on/off schedule (operators and admins)."""
from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import g
from flask_smorest import Blueprint

from jobs.schedule_control import PAUSE, RESUME, ScheduleControl
from scope.catalog import Environment
from scope.errors import Conflict, Forbidden
from scope.models import utcnow
from scope.roles import Permission
from scope.schedule_state import ScheduleStore, parse_until
from web.api.guard import allow, audit_denied
from web.api.schemas import ScheduleSchema
from web.context import principal, runtime, source

blp = Blueprint("schedule", __name__, url_prefix="/api/v1", description="On/off schedules: pause and resume")


class PauseRequestSchema(ma.Schema):
    class Meta:
        unknown = ma.RAISE

    until = ma.fields.String(load_default=None, allow_none=True, metadata={
        "description": "ISO 8601; without an offset, wall-clock time in the environment's time zone. "
                       "In the future and at most 7 days ahead. Omitted: paused until resumed."})


class ScheduleResponseSchema(ma.Schema):
    schedule = ma.fields.Nested(ScheduleSchema, required=True)


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


def pause_schedule(env: str, until: str | None) -> dict[str, Any]:
    """Pause the schedule of ``env``, optionally until a time; returns the schedule state."""
    environment = _schedulable(env, PAUSE)
    assert environment.schedule is not None
    when = parse_until(until, environment.schedule, utcnow())
    return control().pause(environment, until=when, actor=principal().actor, source=source(),
                           request_id=getattr(g, "request_id", ""))


def resume_schedule(env: str) -> dict[str, Any]:
    """Resume the schedule of ``env``; the scheduler reconciles it at once."""
    environment = _schedulable(env, RESUME)
    return control().resume(environment, actor=principal().actor, source=source(),
                            request_id=getattr(g, "request_id", ""))


@blp.post("/environments/<env>/schedule/pause")
@blp.arguments(PauseRequestSchema, error_status_code=400)
@blp.response(200, ScheduleResponseSchema)
def pause(args: dict[str, Any], env: str) -> dict[str, Any]:
    """Leave the environment as it is (no scale-down, no restore) until `until` or until resumed."""
    return {"schedule": pause_schedule(env, args.get("until"))}


@blp.post("/environments/<env>/schedule/resume")
@blp.response(200, ScheduleResponseSchema)
def resume(env: str) -> dict[str, Any]:
    """End a pause; the scheduler brings the environment to its scheduled state within seconds."""
    return {"schedule": resume_schedule(env)}
