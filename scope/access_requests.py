"""Access requests: a person asks for a time-boxed role in an environment; its approvers decide.

The store only keeps the rows and moves them with compare-and-set; who may
ask and who may decide is web/services/access.py's business, the grant and
its audit entry wiring/access_changes.py's.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Engine, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from scope.errors import Conflict, NotFound
from scope.models import AccessRequest, utcnow
from scope.times import iso, iso_or_none

PENDING, APPROVED, REJECTED, EXPIRED = "pending", "approved", "rejected", "expired"
MAX_DURATION = dt.timedelta(days=7)
# A request nobody decided within a week is stale: the need it stated has passed or found
# another way, and approving it now would grant access on an old reason. It reads
# "expired" and can no longer be decided; the person asks again if they still need it.
DECISION_WINDOW = dt.timedelta(days=7)


def status_of(r: AccessRequest, now: dt.datetime | None = None) -> str:
    if r.status == PENDING and r.created_at <= (now or utcnow()) - DECISION_WINDOW:
        return EXPIRED
    return r.status


def _duration_text(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def request_dict(r: AccessRequest) -> dict[str, Any]:
    return {"id": r.id, "requester": r.requester, "environment": r.environment, "role": r.role,
            "duration": _duration_text(r.duration_seconds), "reason": r.reason, "status": status_of(r),
            "created_at": iso(r.created_at), "decided_by": r.decided_by, "decided_at": iso_or_none(r.decided_at),
            "decision_reason": r.decision_reason, "grant_expires_at": iso_or_none(r.grant_expires_at),
            "url": f"/api/v1/access-requests/{r.id}"}

MAX_ID = 2**31 - 1  # the id column is INTEGER: 32 bits on PostgreSQL


class AccessRequestStore:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self.engine: Engine = sessions.kw["bind"]

    def create(self, requester: str, environment: str, role: str, duration: dt.timedelta, reason: str) -> AccessRequest:
        """A new pending request; Conflict while the same person has one pending for that environment
        (approvers would otherwise see the same ask twice and could grant it twice)."""
        open_one = self.pending_of(requester, environment)
        if open_one is not None:
            raise Conflict(f"You already asked for {open_one.role} in {environment} (access request "
                           f"{open_one.id}); it is waiting for a decision.",
                           request_url=f"/api/v1/access-requests/{open_one.id}")
        with self.sessions.begin() as s:
            r = AccessRequest(requester=requester, environment=environment, role=role,
                              duration_seconds=int(duration.total_seconds()), reason=reason, status=PENDING,
                              created_at=utcnow(), decision_reason="")
            s.add(r)
        return r

    def get(self, request_id: int) -> AccessRequest:
        if not 0 < request_id <= MAX_ID:  # beyond any row: never hand the database an out-of-range integer
            raise NotFound(f"No access request {request_id}.")
        with self.sessions() as s:
            r = s.get(AccessRequest, request_id)
        if r is None:
            raise NotFound(f"No access request {request_id}.")
        return r

    def pending_of(self, requester: str, environment: str) -> AccessRequest | None:
        """The requester's undecided, unexpired request for ``environment``, if any."""
        with self.sessions() as s:
            return s.scalars(select(AccessRequest).where(
                AccessRequest.requester == requester, AccessRequest.environment == environment,
                AccessRequest.status == PENDING, AccessRequest.created_at > utcnow() - DECISION_WINDOW)
                .limit(1)).first()

    def listed(self, requester: str, pending_in: list[str]) -> list[AccessRequest]:
        """The requester's own requests and the pending ones in ``pending_in`` (newest first)."""
        with self.sessions() as s:
            return list(s.scalars(select(AccessRequest).where(or_(
                AccessRequest.requester == requester,
                (AccessRequest.status == PENDING) & AccessRequest.environment.in_(pending_in)
                & (AccessRequest.created_at > utcnow() - DECISION_WINDOW)))
                .order_by(AccessRequest.created_at.desc(), AccessRequest.id.desc()).limit(500)))

    def decide(self, request_id: int, status: str, by: str, reason: str,
               grant_expires_at: dt.datetime | None = None) -> AccessRequest:
        """Move a pending request to ``status`` once (compare-and-set); Conflict if it was decided already."""
        self.get(request_id)  # NotFound first, for an unknown or out-of-range id
        with self.engine.begin() as c:
            n = c.execute(update(AccessRequest).where(AccessRequest.id == request_id,
                                                      AccessRequest.status == PENDING,
                                                      AccessRequest.created_at > utcnow() - DECISION_WINDOW)
                          .values(status=status, decided_by=by, decided_at=utcnow(), decision_reason=reason,
                                  grant_expires_at=grant_expires_at)).rowcount
        if n != 1:
            raise Conflict(f"Access request {request_id} is not pending (it is {status_of(self.get(request_id))}).")
        return self.get(request_id)

    def undo(self, request_id: int) -> None:
        """Back to pending (the grant that an approval promised could not be made)."""
        with self.sessions.begin() as s:
            s.execute(update(AccessRequest).where(AccessRequest.id == request_id)
                      .values(status=PENDING, decided_by=None, decided_at=None, decision_reason="",
                              grant_expires_at=None))
