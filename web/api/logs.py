"""Service logs from CloudWatch (history and live tail)."""
from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate

from cloud.logs import (
    MAX_CURSOR,
    MAX_FILTER,
    MAX_LIMIT,
    LogQuery,
    ViewSessions,
)
from jobs.audit_stream import AuditEvent
from scope.errors import NotFound
from scope.roles import Permission
from web.api.blueprint import Blueprint
from web.api.schemas import ProblemSchema, QuerySchema
from web.context import principal, request_id, runtime, source
from web.errors import PROBLEM
from web.guard import allow, audit_denied
from web.services.logs import ACTION, service_logs

blp = Blueprint("logs", __name__, url_prefix="/api/v1", description="Service logs from CloudWatch (history and live tail)")


class LogsQuerySchema(QuerySchema):
    since = ma.fields.String(metadata={"description": "ISO 8601 or relative (30s, 15m, 2h, 1d, 1w); default 15m"})
    until = ma.fields.String(metadata={"description": "ISO 8601, relative, or now; default open (a tail)"})
    filter = ma.fields.String(validate=validate.Length(max=MAX_FILTER),
                              metadata={"description": "a CloudWatch Logs filter pattern"})
    limit = ma.fields.Integer(validate=validate.Range(min=1, max=MAX_LIMIT),
                              metadata={"description": f"events per page, 1..{MAX_LIMIT} (default 100)"})
    cursor = ma.fields.String(validate=validate.Length(max=MAX_CURSOR),
                              metadata={"description": "the previous page's cursor: continue (or tail) from there"})


class LogEventSchema(ma.Schema):
    timestamp = ma.fields.String(required=True, metadata={"description": "ISO 8601 UTC, milliseconds"})
    message = ma.fields.String(required=True)
    stream = ma.fields.String(required=True)


class LogPageSchema(ma.Schema):
    events = ma.fields.List(ma.fields.Nested(LogEventSchema), required=True,
                            metadata={"description": "oldest first; never an event of an earlier page again"})
    cursor = ma.fields.String(required=True, allow_none=True, metadata={
        "description": "pass it back to continue; null when a closed time range was read to its end"})
    more = ma.fields.Boolean(metadata={"description": "more events are available right now"})
    log_group = ma.fields.String()
    stream_prefix = ma.fields.String()
    notice = ma.fields.String()


@blp.get("/environments/<env>/services/<svc>/logs")
@blp.arguments(LogsQuerySchema, location="query", as_kwargs=False, error_status_code=400)
@blp.response(200, LogPageSchema)
@blp.doc(responses={"422": {"description": "the service's logs are not readable by Valet Key "
                                           "(no awslogs driver or stream prefix)",
                             "content": {PROBLEM: {"schema": ProblemSchema}}}})
def get_logs(args: dict[str, Any], env: str, svc: str) -> dict[str, Any]:
    """A page of the service's CloudWatch logs; poll with the returned cursor to tail."""
    environment, _ = allow(env, Permission.LOGS, action=ACTION, target=svc)
    query = LogQuery.parse(args)
    try:
        body = service_logs(environment).page(svc, query)
    except NotFound as e:
        audit_denied(ACTION, env, svc, e.detail)
        raise
    # Audited once per viewing session, not once per poll, after the read
    # succeeded; if the audit cannot be written nothing is shown (fail closed).
    rt, who = runtime(), principal().actor
    sessions = ViewSessions(rt.redis)
    if sessions.begin(who, env, svc):
        try:
            rt.audit.record(AuditEvent(actor=who, source=source(), action=ACTION, outcome="succeeded",
                                       environment=env, target=svc, detail=f"log group {body['log_group']}",
                                       request_id=request_id()))
        except Exception:
            sessions.forget(who, env, svc)
            raise
    return body
