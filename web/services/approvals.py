"""Two-person approval from the web side: the job policy of an environment, and approve/reject.

Rules (docs/approvals.md): in an environment with ``approval = "two-person"``
every mutating job waits in ``awaiting_approval``; a second person — not the
requester — holding operator or higher there, or admin, approves or rejects
it within 30 minutes. With SSO on, a browser approval needs a sign-in within
the last 5 minutes; an API-token approval is the token holder's own act and
is allowed.
"""
from __future__ import annotations

import time

from flask import session
from flask_login import current_user

from jobs.kinds import AWAITING_APPROVAL
from jobs.service import APPROVAL_WINDOW
from scope.access import check_approver
from scope.catalog import Environment
from scope.errors import Forbidden, NotFound, Unauthorized, ValidationFailed
from scope.models import Job
from web.context import principal, request_id, runtime, source
from web.guard import audit_denied

MAX_REASON = 500
RECENT_SIGN_IN = 300  # seconds: how fresh a browser sign-in must be to approve with SSO on
AUTH_AT = "auth_at"  # session key: when this session's person last proved who they are


class SignInAgain(Unauthorized):
    """A browser approval with SSO on needs a sign-in within the last 5 minutes."""

    title = "Sign in again"


def clean_reason(reason: str | None, *, required: bool = False) -> str:
    """The reason as stored; ValidationFailed naming ``reason`` if too long or required and missing."""
    text = (reason or "").strip()
    if len(text) > MAX_REASON:
        raise ValidationFailed({"reason": [f"At most {MAX_REASON} characters."]})
    if required and not text:
        raise ValidationFailed({"reason": ["A reason is required in this environment."]})
    return text


def job_policy(env: Environment, action: str, target: str, reason: str | None) -> tuple[str, bool]:
    """(reason, needs approval) for a mutating job in ``env``; a missing required reason is refused and audited."""
    try:
        text = clean_reason(reason, required=env.require_reason)
    except ValidationFailed as e:
        audit_denied(action, env.name, target, f"Refused: {e.fields['reason'][0]}")
        raise
    return text, env.two_person


def require_recent_sign_in() -> None:
    """With SSO on, a browser session must have signed in within RECENT_SIGN_IN seconds."""
    if not runtime().settings.saml_path or getattr(current_user, "via", "") != "session":
        return
    if time.time() - float(session.get(AUTH_AT, 0)) > RECENT_SIGN_IN:
        raise SignInAgain("Approving needs a sign-in within the last 5 minutes: sign in again, then approve.",
                          reauth="/saml/login?force=1")


def _decidable(job_id: str, action: str) -> Job:
    """The job if the caller may decide on it: 404 unseen, 403 self or role, 409 not awaiting."""
    rt = runtime()
    job = rt.jobs.get(job_id)
    p = principal()
    try:
        env = check_approver(p, rt.catalog, job.environment, job.actor)
    except NotFound:
        raise NotFound(f"No job {job_id!r}.") from None
    except Forbidden as e:
        audit_denied(action, job.environment, job.target, e.detail)
        raise
    if not env.actions_allowed:
        detail = f"{env.name} is disabled: Valet Key refuses every action there, approved or not."
        audit_denied(action, job.environment, job.target, detail)
        raise Forbidden(detail)
    return job


def approve_job(job_id: str, reason: str | None = None) -> Job:
    """Approve a job awaiting approval (then it is queued)."""
    job = _decidable(job_id, "approval.approve")
    require_recent_sign_in()
    return runtime().jobs.approve(job.id, approver=principal().actor, source=source(), request_id=request_id(),
                                  reason=clean_reason(reason))


def reject_job(job_id: str, reason: str | None = None) -> Job:
    """Reject a job awaiting approval (it ends ``rejected``)."""
    job = _decidable(job_id, "approval.reject")
    require_recent_sign_in()
    return runtime().jobs.reject(job.id, approver=principal().actor, source=source(), request_id=request_id(),
                                 reason=clean_reason(reason))


def fresh(job: Job) -> Job:
    """The job, with a lapsed approval window turned into ``rejected`` first (lazy expiry on read)."""
    rt = runtime()
    if job.status == AWAITING_APPROVAL and job.created_at <= rt.jobs.clock() - APPROVAL_WINDOW:
        rt.jobs.expire_approvals(only=job.id)
        return rt.jobs.get(job.id)
    return job


def may_decide(job: Job) -> bool:
    """Whether the caller may approve or reject ``job`` now (the page shows the buttons)."""
    if job.status != AWAITING_APPROVAL:
        return False
    try:
        check_approver(principal(), runtime().catalog, job.environment, job.actor)
    except (NotFound, Forbidden):
        return False
    return True


def awaiting_my_decision() -> list[Job]:
    """Jobs awaiting approval that the caller may decide on (not their own)."""
    return [job for job in runtime().jobs.awaiting() if may_decide(job)]
