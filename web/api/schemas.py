"""Marshmallow schemas of the HTTP API; the OpenAPI document is generated from them."""
from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate

from jobs.events import event_id_problem
from jobs.kinds import AUDIT_ACTIONS, AUDIT_OUTCOMES, AUDIT_SOURCES, JOB_STATUSES


class ProblemSchema(ma.Schema):
    class Meta:
        unknown = ma.INCLUDE  # RFC 9457: problem types may carry extension members

    type = ma.fields.String()
    status = ma.fields.Integer(required=True)
    title = ma.fields.String(required=True)
    detail = ma.fields.String(required=True)
    errors = ma.fields.Dict(metadata={"description": "field name -> messages (validation errors)"})
    request_id = ma.fields.String()
    job_id = ma.fields.String(metadata={"description": "409: the job already in progress"})
    job_url = ma.fields.String(metadata={"description": "409: its URL"})
    request_url = ma.fields.String(metadata={"description": "409: your access request already waiting"})
    retry_after = ma.fields.Integer(metadata={"description": "seconds to wait (also in Retry-After)"})


class GrantSchema(ma.Schema):
    environment = ma.fields.String(required=True)
    role = ma.fields.String(required=True)
    subject = ma.fields.String(metadata={"description": "the e-mail or group:NAME the grant is held through"})
    expires_at = ma.fields.String(allow_none=True, metadata={
        "description": "when a time-boxed grant stops counting (ISO 8601 UTC); null: until revoked"})


class MeSchema(ma.Schema):
    email = ma.fields.String(required=True)
    name = ma.fields.String()
    groups = ma.fields.List(ma.fields.String())
    grants = ma.fields.List(ma.fields.Nested(GrantSchema), required=True)


class EnvironmentSummarySchema(ma.Schema):
    name = ma.fields.String(required=True)
    # "class" is a Python keyword: the attribute is cls, the JSON key is class.
    cls = ma.fields.String(data_key="class", required=True)
    enabled = ma.fields.Boolean(required=True)
    role = ma.fields.String(required=True)


class EnvironmentListSchema(ma.Schema):
    environments = ma.fields.List(ma.fields.Nested(EnvironmentSummarySchema), required=True)


class ServiceSchema(ma.Schema):
    name = ma.fields.String(required=True)
    status = ma.fields.String(required=True, metadata={
        "description": "HEALTHY, DEPLOYING, DEGRADED, STOPPED, FAILED"})
    running = ma.fields.Integer(required=True)
    desired = ma.fields.Integer(required=True)
    pending = ma.fields.Integer()
    task_definition = ma.fields.String(required=True)
    image = ma.fields.String(required=True)
    last_deployment_at = ma.fields.String(allow_none=True)
    rollout_state = ma.fields.String()


class ScheduleSchema(ma.Schema):
    timezone = ma.fields.String()
    up = ma.fields.List(ma.fields.String())
    up_now = ma.fields.Boolean()
    paused = ma.fields.Boolean()
    paused_until = ma.fields.String(allow_none=True)
    paused_by = ma.fields.String(allow_none=True, metadata={"description": "who paused it (while paused)"})
    paused_at = ma.fields.String(allow_none=True, metadata={"description": "when it was paused (while paused)"})
    next_transition = ma.fields.String(allow_none=True)


class EnvironmentDetailSchema(ma.Schema):
    name = ma.fields.String(required=True)
    cls = ma.fields.String(data_key="class", required=True)
    enabled = ma.fields.Boolean(required=True)
    role = ma.fields.String(required=True)
    services = ma.fields.List(ma.fields.Nested(ServiceSchema), required=True)
    redis = ma.fields.List(ma.fields.String(), required=True)
    run_tasks = ma.fields.List(ma.fields.String(), required=True)
    schedule = ma.fields.Nested(ScheduleSchema, allow_none=True)
    permissions = ma.fields.List(ma.fields.String(), metadata={
        "description": "actions the caller may start here (the server checks again on each)"})
    approval = ma.fields.String(metadata={"description": "none, or two-person: mutating jobs wait for approval"})
    require_reason = ma.fields.Boolean(metadata={"description": "mutating requests must carry a reason"})


class JobSchema(ma.Schema):
    id = ma.fields.String(required=True)
    action = ma.fields.String(required=True)
    environment = ma.fields.String(required=True)
    target = ma.fields.String(required=True)
    status = ma.fields.String(required=True, validate=validate.OneOf(JOB_STATUSES))
    detail = ma.fields.String(required=True)
    actor = ma.fields.String(required=True)
    source = ma.fields.String()
    created_at = ma.fields.String(required=True)
    started_at = ma.fields.String(allow_none=True)
    finished_at = ma.fields.String(allow_none=True)
    url = ma.fields.String(required=True)
    reason = ma.fields.String(metadata={"description": "the requester's reason (may be empty)"})
    approved_by = ma.fields.String(allow_none=True, metadata={"description": "who approved it (two-person)"})
    approved_at = ma.fields.String(allow_none=True)
    approval_expires_at = ma.fields.String(allow_none=True, metadata={
        "description": "while awaiting_approval: when the job ends rejected (approval expired)"})
    plan = ma.fields.Dict(allow_none=True, metadata={
        "description": "{mechanism, steps, warnings, blocked} when one was made (null otherwise)"})


class ActiveJobsSchema(ma.Schema):
    jobs = ma.fields.List(ma.fields.Nested(JobSchema), required=True,
                          metadata={"description": "the environment's jobs not finished yet, oldest first"})


class JobEventSchema(ma.Schema):
    id = ma.fields.String(required=True)
    time = ma.fields.String(required=True)
    type = ma.fields.String(required=True)
    message = ma.fields.String(required=True)


class QuerySchema(ma.Schema):
    """Query strings: an empty value (``?after=&wait=``) means the parameter was not given."""

    @ma.pre_load
    def _drop_empty(self, data: Any, **_: Any) -> Any:
        if hasattr(data, "items"):
            return {k: v for k, v in data.items() if v != ""}
        return data


def _event_id(value: str) -> None:
    problem = event_id_problem(value)
    if problem:
        raise ma.ValidationError(problem)


class JobEventsQuerySchema(QuerySchema):
    after = ma.fields.String(load_default=None, validate=_event_id,
                             metadata={"description": "id of the last event seen", "pattern": "^[0-9]{1,20}-[0-9]{1,20}$"})
    wait = ma.fields.Float(load_default=0.0, validate=validate.Range(min=0, max=25),
                           metadata={"description": "seconds to long-poll for new events (at most 25)"})


class JobEventsSchema(ma.Schema):
    events = ma.fields.List(ma.fields.Nested(JobEventSchema), required=True)
    next = ma.fields.String(allow_none=True, required=True)
    done = ma.fields.Boolean(required=True)


class AuditEntrySchema(ma.Schema):
    id = ma.fields.Integer(required=True)
    time = ma.fields.String(required=True)
    actor = ma.fields.String(required=True)
    source = ma.fields.String(required=True, validate=validate.OneOf(AUDIT_SOURCES))
    environment = ma.fields.String(required=True)
    action = ma.fields.String(required=True, validate=validate.OneOf(AUDIT_ACTIONS))
    target = ma.fields.String(required=True)
    outcome = ma.fields.String(required=True, validate=validate.OneOf(AUDIT_OUTCOMES))
    detail = ma.fields.String(required=True)
    job_id = ma.fields.String(required=True)
    before = ma.fields.Dict(allow_none=True)
    after = ma.fields.Dict(allow_none=True)
    request_id = ma.fields.String()
    prev_hash = ma.fields.String()
    hash = ma.fields.String()


class AuditPageSchema(ma.Schema):
    entries = ma.fields.List(ma.fields.Nested(AuditEntrySchema), required=True)
    cursor = ma.fields.String(allow_none=True, required=True, metadata={
        "description": "pass it back as cursor for the next page; null after the last one"})


# ---- restart and redeploy ------------------------------------------------------------
class ServiceActionRequestSchema(ma.Schema):
    """The body of POST .../restart and .../redeploy (optional: no body is a real request)."""

    class Meta:
        unknown = ma.RAISE  # an unexpected field is refused, never ignored

    reason = ma.fields.String(validate=validate.Length(max=500), metadata={
        "description": "why (shown to approvers and in the audit trail)"})
    dry_run = ma.fields.Boolean(load_default=False, metadata={
        "description": "true: answer 200 with the plan and do nothing (no job, no audit entry)"})


class PlanSchema(ma.Schema):
    mechanism = ma.fields.String(required=True, validate=validate.OneOf(["deployment", "batches"]), metadata={
        "description": "deployment: a new ECS deployment of the same image; batches: StopTask in batches"})
    steps = ma.fields.List(ma.fields.String(), required=True, metadata={"description": "what would happen, in words"})
    warnings = ma.fields.List(ma.fields.String(), required=True)
    blocked = ma.fields.String(allow_none=True, required=True, metadata={
        "description": "null, or why a real request would be refused (the same reason its job would give)"})


# ---- Redis flush and one-off tasks ------------------------------------------------
def reason_field() -> ma.fields.String:
    return ma.fields.String(load_default=None, allow_none=True, validate=validate.Length(max=500), metadata={
        "description": "why (at most 500 characters); required where the environment sets require_reason"})


class FlushRequestSchema(ma.Schema):
    class Meta:
        unknown = ma.RAISE  # an unexpected field is refused, never ignored

    pattern = ma.fields.String(required=True, validate=validate.Length(min=1, max=512), metadata={
        "description": "Redis glob with a literal prefix, e.g. session:* (bare wildcards are refused)"})
    dry_run = ma.fields.Boolean(load_default=True, metadata={
        "description": "count only (the default); false starts the flush job"})
    reason = reason_field()


class FlushPreviewSchema(ma.Schema):
    target = ma.fields.String(required=True)
    pattern = ma.fields.String(required=True)
    matched = ma.fields.Integer(required=True, metadata={
        "description": "keys matching; counting stops at max_keys + 1 (then capped is true)"})
    capped = ma.fields.Boolean(required=True, metadata={
        "description": "true when more than max_keys match: a flush would be refused"})
    max_keys = ma.fields.Integer(required=True)


class ReasonSchema(ma.Schema):
    """A body that only carries an optional reason (restart, redeploy, approve, reject)."""

    class Meta:
        unknown = ma.RAISE

    reason = reason_field()


class RunTaskRequestSchema(ma.Schema):
    class Meta:
        unknown = ma.RAISE  # no overrides of any kind: role, image, command, environment, count...

    task_definition = ma.fields.String(required=True, validate=validate.Regexp(
        r"^[A-Za-z0-9_-]{1,255}$", error="Give a task definition family name (no revision, no ARN)."),
        metadata={"description": "a family on the environment's run_tasks allowlist"})
    reason = reason_field()


# ---- access requests and the access review ----------------------------------------
class AccessRequestCreateSchema(ma.Schema):
    class Meta:
        unknown = ma.RAISE

    environment = ma.fields.String(required=True, validate=validate.Length(min=1, max=100))
    role = ma.fields.String(required=True, validate=validate.OneOf(["viewer", "developer", "operator"]))
    duration = ma.fields.String(required=True, metadata={
        "description": "how long the grant lasts once approved: a number with unit s, m, h or d (at most 7d)"})
    reason = ma.fields.String(required=True, validate=validate.Length(min=1, max=500))


class AccessRequestSchema(ma.Schema):
    id = ma.fields.Integer(required=True)
    requester = ma.fields.String(required=True)
    environment = ma.fields.String(required=True)
    role = ma.fields.String(required=True)
    duration = ma.fields.String(required=True)
    reason = ma.fields.String(required=True)
    status = ma.fields.String(required=True, validate=validate.OneOf(["pending", "approved", "rejected", "expired"]),
                              metadata={"description": "expired: nobody decided within 7 days; ask again"})
    created_at = ma.fields.String(required=True)
    decided_by = ma.fields.String(allow_none=True)
    decided_at = ma.fields.String(allow_none=True)
    decision_reason = ma.fields.String()
    grant_expires_at = ma.fields.String(allow_none=True)
    url = ma.fields.String(required=True)


class AccessRequestListSchema(ma.Schema):
    requests = ma.fields.List(ma.fields.Nested(AccessRequestSchema), required=True, metadata={
        "description": "your own requests, then the pending ones you may decide"})


class AccessReviewQuerySchema(QuerySchema):
    at = ma.fields.String(load_default=None, metadata={
        "description": "the instant (ISO 8601, or an age like 7d); default now"})


class ReviewGrantSchema(ma.Schema):
    subject = ma.fields.String(required=True)
    environment = ma.fields.String(required=True)
    role = ma.fields.String(required=True)
    granted_by = ma.fields.String(required=True)
    granted_at = ma.fields.String(allow_none=True)
    expires_at = ma.fields.String(allow_none=True)


class AccessReviewSchema(ma.Schema):
    at = ma.fields.String(required=True)
    grants = ma.fields.List(ma.fields.Nested(ReviewGrantSchema), required=True)
