"""Two-person approval of jobs, access requests, and the access review."""
from __future__ import annotations

from typing import Any

from flask import Response, stream_with_context

from audit.access_review import review_csv
from jobs.service import job_dict
from scope.times import iso
from web.api.blueprint import Blueprint
from web.api.schemas import (
    AccessRequestCreateSchema,
    AccessRequestListSchema,
    AccessRequestSchema,
    AccessReviewQuerySchema,
    AccessReviewSchema,
    JobSchema,
    ReasonSchema,
)
from web.services.access import decide_request, list_requests, request_access, review
from web.services.approvals import approve_job, reject_job

blp = Blueprint("access", __name__, url_prefix="/api/v1",
                description="Two-person approval, access requests and the access review")


@blp.post("/jobs/<job_id>/approve")
@blp.arguments(ReasonSchema, error_status_code=400)
@blp.response(200, JobSchema)
def approve(args: dict[str, Any], job_id: str) -> dict[str, Any]:
    """A second person (operator or admin there, not the requester) approves a job awaiting approval; it is queued."""
    return job_dict(approve_job(job_id, args.get("reason")))


@blp.post("/jobs/<job_id>/reject")
@blp.arguments(ReasonSchema, error_status_code=400)
@blp.response(200, JobSchema)
def reject(args: dict[str, Any], job_id: str) -> dict[str, Any]:
    """A second person rejects a job awaiting approval; it ends ``rejected`` and nothing is done."""
    return job_dict(reject_job(job_id, args.get("reason")))


@blp.post("/access-requests")
@blp.arguments(AccessRequestCreateSchema, error_status_code=400)
@blp.response(201, AccessRequestSchema)
def create_request(args: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Ask for a time-boxed role (at most 7d) in an environment; its approvers decide."""
    body = request_access(args["environment"], args["role"], args["duration"], args["reason"])
    return body, 201, {"Location": body["url"]}


@blp.get("/access-requests")
@blp.response(200, AccessRequestListSchema)
def get_requests() -> dict[str, Any]:
    """Your own access requests, and the pending ones you may decide."""
    return {"requests": list_requests()}


@blp.post("/access-requests/<int:request_no>/approve")
@blp.arguments(ReasonSchema, error_status_code=400)
@blp.response(200, AccessRequestSchema)
def approve_request(args: dict[str, Any], request_no: int) -> dict[str, Any]:
    """Approve: the requester gets the role until now + the requested duration (``grant.add`` by you)."""
    return decide_request(request_no, True, args.get("reason"))


@blp.post("/access-requests/<int:request_no>/reject")
@blp.arguments(ReasonSchema, error_status_code=400)
@blp.response(200, AccessRequestSchema)
def reject_request(args: dict[str, Any], request_no: int) -> dict[str, Any]:
    """Reject a pending access request."""
    return decide_request(request_no, False, args.get("reason"))


@blp.get("/access-review")
@blp.arguments(AccessReviewQuerySchema, location="query", error_status_code=400)
@blp.response(200, AccessReviewSchema)
def access_review(query: dict[str, Any]) -> dict[str, Any]:
    """Auditors and admins: every grant in force at ``at`` (default now), also for grants removed since."""
    when, grants = review(query.get("at"))
    return {"at": iso(when), "grants": [g.as_dict() for g in grants]}


@blp.get("/access-review.csv")
@blp.arguments(AccessReviewQuerySchema, location="query", error_status_code=400)
@blp.response(200, description="CSV: subject, environment, role, granted_by, granted_at, expires_at",
              content_type="text/csv")
def access_review_csv(query: dict[str, Any]) -> Response:
    """The access review as CSV (cells formula-safe)."""
    when, grants = review(query.get("at"))
    name = f"access-review-{iso(when).replace(':', '')}.csv"
    return Response(stream_with_context(review_csv(grants)), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
