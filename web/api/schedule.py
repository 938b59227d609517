"""Pause and resume of an environment's on/off schedule (operators and admins)."""
from __future__ import annotations

from typing import Any

import marshmallow as ma

from web.api.blueprint import Blueprint
from web.api.schemas import ScheduleSchema, reason_field
from web.services.schedule import pause_schedule, resume_schedule

blp = Blueprint("schedule", __name__, url_prefix="/api/v1", description="On/off schedules: pause and resume")


class PauseRequestSchema(ma.Schema):
    class Meta:
        unknown = ma.RAISE

    until = ma.fields.String(load_default=None, allow_none=True, metadata={
        "description": "ISO 8601; without an offset, wall-clock time in the environment's time zone. "
                       "In the future and at most 30 days ahead. Omitted: paused until resumed."})
    reason = reason_field()


class ScheduleResponseSchema(ma.Schema):
    schedule = ma.fields.Nested(ScheduleSchema, required=True)


@blp.post("/environments/<env>/schedule/pause")
@blp.arguments(PauseRequestSchema, error_status_code=400)
@blp.response(200, ScheduleResponseSchema)
def pause(args: dict[str, Any], env: str) -> dict[str, Any]:
    """Leave the environment as it is (no scale-down, no restore) until `until` or until resumed."""
    return {"schedule": pause_schedule(env, args.get("until"), args.get("reason"))}


@blp.post("/environments/<env>/schedule/resume")
@blp.response(200, ScheduleResponseSchema)
def resume(env: str) -> dict[str, Any]:
    """End a pause; the scheduler brings the environment to its scheduled state within seconds."""
    return {"schedule": resume_schedule(env)}
