"""Grant and token changes with their audit entries, shared by the CLI and the admin page.

Fail closed: a grant whose audit entry cannot be written is taken back, so
no access change exists without its trace.
"""
from __future__ import annotations

from jobs.audit_stream import AuditEvent
from scope.errors import ValetKeyError
from scope.models import ApiToken, Grant
from wiring.runtime import Runtime


def add_grant(rt: Runtime, subject: str, environment: str, role: str, *, actor: str,
              source: str) -> tuple[Grant, bool]:
    grant, created = rt.users.grant(subject, environment, role, rt.catalog, by=actor)
    if created:
        try:
            rt.audit.record(AuditEvent(actor=actor, source=source, action="grant.add", outcome="succeeded",
                                       environment=grant.environment, target=grant.subject,
                                       detail=f"role {grant.role}"))
        except ValetKeyError:
            rt.users.revoke(grant.subject, grant.environment, grant.role)
            raise
    return grant, created


def remove_grant(rt: Runtime, subject: str, environment: str, role: str | None, *, actor: str,
                 source: str) -> list[Grant]:
    gone = rt.users.revoke(subject, environment, role)
    for g in gone:
        rt.audit.record(AuditEvent(actor=actor, source=source, action="grant.remove", outcome="succeeded",
                                   environment=g.environment, target=g.subject, detail=f"role {g.role}"))
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
