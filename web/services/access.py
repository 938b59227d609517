"""Access requests (ask for a time-boxed role; the environment's approvers decide) and the access review."""
from __future__ import annotations

import datetime as dt
from typing import Any

from audit.access_review import ReviewGrant, grants_at
from jobs.audit_stream import AuditEvent
from scope.access import APPROVER_ROLES, check_approver
from scope.access_requests import APPROVED, MAX_DURATION, REJECTED, AccessRequestStore, request_dict
from scope.errors import Conflict, Forbidden, NotFound, Unavailable, ValetKeyError, ValidationFailed
from scope.models import AccessRequest, utcnow
from scope.roles import RANK, Permission, parse_role
from scope.times import parse_duration, parse_instant
from web.context import principal, request_id, runtime, source
from web.guard import audit_denied
from web.services.approvals import clean_reason, require_recent_sign_in
from wiring.access_changes import add_grant

REQUEST = "access.request"


def store() -> AccessRequestStore:
    return AccessRequestStore(runtime().sessions)


def _duration(value: str) -> dt.timedelta:
    try:
        d = parse_duration(value or "")
    except ValueError as e:
        raise ValidationFailed({"duration": [str(e)]}) from None
    if d <= dt.timedelta(0) or d > MAX_DURATION:
        raise ValidationFailed({"duration": ["Between 1s and 7d."]})
    return d


def request_access(environment: str, role: str, duration: str, reason: str) -> dict[str, Any]:
    """File a request for ``role`` in ``environment`` for ``duration``; audited ``access.request``."""
    p, rt = principal(), runtime()
    d = _duration(duration)
    why = clean_reason(reason, required=True)
    env = rt.catalog.get(environment)
    # An unknown environment and one that takes no requests (disabled) answer alike: names do not leak.
    if env is None or not env.enabled:
        detail = f"No environment named {environment[:100]!r} takes access requests."
        audit_denied(REQUEST, environment[:100], p.actor, detail)
        raise NotFound(detail)
    try:
        wanted = parse_role(role, env.name)
    except ValueError as e:
        raise ValidationFailed({"role": [str(e)]}) from None
    held = p.role_in(env.name)
    if held is not None and RANK[held] >= RANK[wanted]:
        raise Conflict(f"You already hold {held.value} in {env.name}.")
    r = store().create(p.actor, env.name, wanted.value, d, why)
    try:
        rt.audit.record(AuditEvent(actor=p.actor, source=source(), action=REQUEST, outcome="requested",
                                   environment=env.name, target=p.actor, request_id=request_id(), reason=why,
                                   detail=f"Access request {r.id}: {wanted.value} for {duration.strip()}"))
    except ValetKeyError:
        store().decide(r.id, REJECTED, "valetkey", "not recorded: the audit trail was unavailable")
        raise
    return request_dict(r)


def _approver_environments() -> list[str]:
    p = principal()
    return [e.name for e in runtime().catalog if p.role_in(e.name) in APPROVER_ROLES]


def list_requests() -> list[dict[str, Any]]:
    """The caller's own requests and the pending ones they may decide."""
    p = principal()
    return [request_dict(r) for r in store().listed(p.actor, _approver_environments())]


def pending_for_me() -> list[dict[str, Any]]:
    me = principal().actor
    return [r for r in list_requests() if r["status"] == "pending" and r["requester"] != me]


def _decidable(request_no: int, action: str) -> AccessRequest:
    rt, p = runtime(), principal()
    try:
        r = store().get(request_no)
        if r.requester == p.actor:  # their own request is theirs to see, whether or not they see the environment
            raise Forbidden("You made this request yourself: a second person must decide on it.")
        check_approver(p, rt.catalog, r.environment, r.requester)
    except NotFound:
        raise NotFound(f"No access request {request_no}.") from None
    except Forbidden as e:
        audit_denied(action, r.environment, r.requester, e.detail)
        raise
    require_recent_sign_in()
    return r


def decide_request(request_no: int, approve: bool, reason: str | None = None) -> dict[str, Any]:
    """Approve (a time-boxed grant is made, ``grant.add`` by the approver) or reject a pending request."""
    rt, p = runtime(), principal()
    action = "approval.approve" if approve else "approval.reject"
    r = _decidable(request_no, action)
    why = clean_reason(reason)
    if not approve:
        done = store().decide(r.id, REJECTED, p.actor, why)
    else:
        expires = utcnow() + dt.timedelta(seconds=r.duration_seconds)
        done = store().decide(r.id, APPROVED, p.actor, why, grant_expires_at=expires)
        try:
            add_grant(rt, r.requester, r.environment, r.role, actor=p.actor, source=source(), expires_at=expires,
                      reason=f"access request {r.id}: {r.reason}")
        except ValetKeyError:
            store().undo(r.id)
            raise
    verb = "Approved" if approve else "Rejected"
    try:
        rt.audit.record(AuditEvent(actor=p.actor, source=source(), action=action, outcome="succeeded",
                                   environment=r.environment, target=r.requester, request_id=request_id(),
                                   reason=why, detail=f"{verb} access request {r.id}: {r.role} for "
                                                      f"{request_dict(r)['duration']}"))
    except Unavailable:
        if not approve:
            raise
        # The grant stands: its grant.add entry (actor: the approver) already records the decision.
    return request_dict(done)


# ---- the access review ---------------------------------------------------------------
def review(at: str | None) -> tuple[dt.datetime, list[ReviewGrant]]:
    """Auditors and admins: the grants in force at ``at`` (default now)."""
    p = principal()
    if not p.can_global(Permission.AUDIT_ALL):
        raise Forbidden("The access review is for auditors and admins.")
    now = utcnow()
    try:
        when = parse_instant(at, now) if at else now
    except ValueError as e:
        raise ValidationFailed({"at": [str(e)]}) from None
    return when, grants_at(runtime().sessions, when)
