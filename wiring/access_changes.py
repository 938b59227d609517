"""Changes of who may do what, with their audit entries, shared by the CLI and the admin page.

Fail closed: a change whose audit entry cannot be written is taken back and
the error raised, so no access change exists without its trace (the person
retries once the audit trail is writable again).
"""
from __future__ import annotations

import datetime as dt
import logging
from typing import Callable

from jobs.audit_stream import AuditEvent
from scope.errors import ValetKeyError
from scope.models import ApiToken, Grant, User, utcnow
from scope.times import iso, iso_or_none
from wiring.runtime import Runtime

log = logging.getLogger("valetkey.access")
# A grant.expire claimed this long ago whose grant is still there lost its recorder: record again.
STALE_EXPIRY_MARK = dt.timedelta(minutes=5)


def grant_state(grant: Grant) -> dict[str, str | None]:
    """The grant as its audit entries carry it (``after`` of grant.add): what the access review replays."""
    return {"role": grant.role, "expires_at": iso_or_none(grant.expires_at)}


def _record_or_undo(rt: Runtime, event: AuditEvent, undo: Callable[[], object]) -> None:
    try:
        rt.audit.record(event)
    except ValetKeyError:
        undo()
        raise


def add_grant(rt: Runtime, subject: str, environment: str, role: str, *, actor: str,
              source: str, expires_at: dt.datetime | None = None, reason: str = "") -> tuple[Grant, bool]:
    grant, created = rt.users.grant(subject, environment, role, rt.catalog, by=actor, expires_at=expires_at,
                                    reason=reason)
    if created:
        until = f" until {iso(grant.expires_at)}" if grant.expires_at else ""
        _record_or_undo(rt, AuditEvent(actor=actor, source=source, action="grant.add", outcome="succeeded",
                                       environment=grant.environment, target=grant.subject,
                                       detail=f"role {grant.role}{until}", after=grant_state(grant),
                                       reason=reason),
                        lambda: rt.users.revoke(grant.subject, grant.environment, grant.role))
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


def token_label(tok: ApiToken) -> str:
    return f"token {tok.id} {tok.prefix}… ({tok.name or 'unnamed'})"


def create_token(rt: Runtime, email: str, name: str, *, actor: str, source: str,
                 expires_in: dt.timedelta | None = None) -> tuple[ApiToken, str]:
    """A new token; ``expires_in`` defaults to VALETKEY_TOKEN_TTL_DAYS."""
    ttl = expires_in if expires_in is not None else dt.timedelta(days=rt.settings.token_ttl_days)
    tok, clear = rt.users.create_token(email, name, ttl)
    _record_or_undo(rt, AuditEvent(actor=actor, source=source, action="token.create", outcome="succeeded",
                                   target=email.strip().lower(),
                                   detail=f"{token_label(tok)}, expires {iso(tok.expires_at, 'seconds')}"),
                    lambda: rt.users.revoke_token(tok.id))
    return tok, clear


def revoke_token(rt: Runtime, token_id: int, *, actor: str, source: str) -> tuple[ApiToken, str, bool]:
    """Revoke at once; returns (token, owner's e-mail, changed). An already revoked token is no change."""
    tok, changed = rt.users.revoke_token(token_id)
    owner = rt.users.get(tok.user_id)
    email = owner.email if owner else "?"
    if changed:
        _record_or_undo(rt, AuditEvent(actor=actor, source=source, action="token.revoke", outcome="succeeded",
                                       target=email, detail=token_label(tok)),
                        lambda: rt.users.unrevoke_token(tok.id))
    return tok, email, changed


def add_user(rt: Runtime, email: str, name: str, password: str | None, *, actor: str, source: str) -> User:
    user = rt.users.add_user(email, name, password)
    _record_or_undo(rt, AuditEvent(actor=actor, source=source, action="user.add", outcome="succeeded",
                                   target=user.email,
                                   detail="local account with password" if password else "account without password"),
                    lambda: rt.users.delete_user(user.id))
    return user


def disable_user(rt: Runtime, email: str, *, actor: str, source: str) -> tuple[User, bool]:
    """Disable an account: its sessions and tokens stop at once. Returns (user, changed)."""
    user, changed = rt.users.set_disabled(email, True)
    if changed:
        _record_or_undo(rt, AuditEvent(actor=actor, source=source, action="user.disable", outcome="succeeded",
                                       target=user.email, detail="sessions and API tokens stop working"),
                        lambda: rt.users.set_disabled(user.email, False))
    return user, changed
