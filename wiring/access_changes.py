"""Changes of who may do what, with their audit entries, shared by the CLI and the admin page.

Fail closed: a change whose audit entry cannot be written is taken back and
the error raised, so no access change exists without its trace (the person
retries once the audit trail is writable again).
"""
from __future__ import annotations

import datetime as dt
from typing import Callable

from jobs.audit_stream import AuditEvent
from scope.errors import ValetKeyError
from scope.models import ApiToken, Grant, User
from scope.times import iso
from wiring.runtime import Runtime


def _record_or_undo(rt: Runtime, event: AuditEvent, undo: Callable[[], object]) -> None:
    try:
        rt.audit.record(event)
    except ValetKeyError:
        undo()
        raise


def add_grant(rt: Runtime, subject: str, environment: str, role: str, *, actor: str,
              source: str) -> tuple[Grant, bool]:
    grant, created = rt.users.grant(subject, environment, role, rt.catalog, by=actor)
    if created:
        _record_or_undo(rt, AuditEvent(actor=actor, source=source, action="grant.add", outcome="succeeded",
                                       environment=grant.environment, target=grant.subject,
                                       detail=f"role {grant.role}"),
                        lambda: rt.users.revoke(grant.subject, grant.environment, grant.role))
    return grant, created


def remove_grant(rt: Runtime, subject: str, environment: str, role: str | None, *, actor: str,
                 source: str) -> list[Grant]:
    gone = rt.users.revoke(subject, environment, role)
    for g in gone:
        rt.audit.record(AuditEvent(actor=actor, source=source, action="grant.remove", outcome="succeeded",
                                   environment=g.environment, target=g.subject, detail=f"role {g.role}"))
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
