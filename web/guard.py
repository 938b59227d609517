"""Authorization for views, with every refusal written to the audit trail as ``denied``."""
from __future__ import annotations

from jobs.audit_stream import AuditEvent
from scope.access import authorize
from scope.catalog import Environment
from scope.errors import Forbidden, NotFound
from scope.roles import Permission, Role
from web.context import principal, request_id, runtime, source


def audit_denied(action: str, environment: str, target: str, detail: str) -> None:
    runtime().audit.record(AuditEvent(actor=principal().actor, source=source(), action=action,
                                      outcome="denied", environment=environment, target=target,
                                      detail=detail, request_id=request_id()))


def allow(env_name: str, permission: Permission, *, action: str | None = None,
          target: str = "") -> tuple[Environment, Role]:
    """Authorize the current principal; refusals of an ``action`` are audited before raising."""
    p = principal()
    try:
        return authorize(p, runtime().catalog, env_name, permission)
    except (NotFound, Forbidden) as e:
        if action is not None:
            audit_denied(action, env_name, target, e.detail)
        raise
