"""Grant and token changes with their audit entries, shared by the CLI and the admin page.

Fail closed: a grant whose audit entry cannot be written is taken back, so
no access change exists without its trace.
"""
from __future__ import annotations

import datetime as dt
import logging

from jobs.audit_stream import AuditEvent
from scope.errors import ValetKeyError
from scope.models import ApiToken, Grant, utcnow
from scope.times import iso, iso_or_none
from wiring.runtime import Runtime

log = logging.getLogger("valetkey.access")
# A grant.expire claimed this long ago whose grant is still there lost its recorder: record again.
STALE_EXPIRY_MARK = dt.timedelta(minutes=5)


def grant_state(grant: Grant) -> dict[str, str | None]:
    """The grant as its audit entries carry it (``after`` of grant.add): what the access review replays."""
    return {"role": grant.role, "expires_at": iso_or_none(grant.expires_at)}


def add_grant(rt: Runtime, subject: str, environment: str, role: str, *, actor: str,
              source: str, expires_at: dt.datetime | None = None, reason: str = "") -> tuple[Grant, bool]:
    grant, created = rt.users.grant(subject, environment, role, rt.catalog, by=actor, expires_at=expires_at,
                                    reason=reason)
    if created:
        until = f" until {iso(grant.expires_at)}" if grant.expires_at else ""
        try:
            rt.audit.record(AuditEvent(actor=actor, source=source, action="grant.add", outcome="succeeded",
                                       environment=grant.environment, target=grant.subject,
                                       detail=f"role {grant.role}{until}", after=grant_state(grant),
                                       reason=reason))
        except ValetKeyError:
            rt.users.revoke(grant.subject, grant.environment, grant.role)
            raise
    return grant, created


def record_grant_expiries(rt: Runtime, now: dt.datetime | None = None) -> int:
    """Record ``grant.expire`` once per lapsed grant, then drop the grant; returns how many.

    The scheduler calls this every tick. Expiry itself needs no step: a grant
    stops counting at its ``expires_at`` wherever grants are read. The mark
    (compare-and-set) makes one scheduler instance record each lapse.
    """
    now = now or utcnow()
    n = 0
    for g in rt.users.lapsed_grants(now, STALE_EXPIRY_MARK):
        if not rt.users.mark_expiry(g, now):
            continue  # another scheduler took it
        try:
            rt.audit.record(AuditEvent(actor="scheduler", source="scheduler", action="grant.expire",
                                       outcome="succeeded", environment=g.environment, target=g.subject,
                                       detail=f"role {g.role} expired at {iso_or_none(g.expires_at)}",
                                       before=grant_state(g)))
        except ValetKeyError:
            rt.users.unmark_expiry(g.id)
            log.error("grant.expire of %s in %s could not be audited; will retry", g.subject, g.environment)
            continue
        rt.users.drop_expired(g.id, now)
        n += 1
    return n


def remove_grant(rt: Runtime, subject: str, environment: str, role: str | None, *, actor: str,
                 source: str) -> list[Grant]:
    gone = rt.users.revoke(subject, environment, role)
    for g in gone:
        rt.audit.record(AuditEvent(actor=actor, source=source, action="grant.remove", outcome="succeeded",
                                   environment=g.environment, target=g.subject, detail=f"role {g.role}",
                                   before=grant_state(g)))
    return gone


def create_token(rt: Runtime, email: str, name: str, *, actor: str, source: str) -> tuple[ApiToken, str]:
    tok, clear = rt.users.create_token(email, name)
    try:
        rt.audit.record(AuditEvent(actor=actor, source=source, action="token.create", outcome="succeeded",
                                   target=email.strip().lower(),
                                   detail=f"token {tok.prefix}… ({tok.name or 'unnamed'})"))
    except ValetKeyError:
        rt.users.revoke_token(tok.id)
        raise
    return tok, clear
