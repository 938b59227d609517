"""Roles and the permission matrix (Contract: roles).

Per environment: viewer < developer < operator. Global (environment ``*``):
auditor (all audit, read-only elsewhere) and admin (everything). The matrix is
data, not scattered ``if`` statements, so that the UI (which buttons to show)
and the server (what to refuse) ask the same question.
"""
from __future__ import annotations

import enum

GLOBAL = "*"


class Role(str, enum.Enum):
    VIEWER = "viewer"
    DEVELOPER = "developer"
    OPERATOR = "operator"
    AUDITOR = "auditor"
    ADMIN = "admin"

    @property
    def is_global(self) -> bool:
        return self in (Role.AUDITOR, Role.ADMIN)


class Permission(str, enum.Enum):
    VIEW = "view"  # environment status
    LOGS = "logs.view"
    RESTART = "service.restart"
    REDEPLOY = "service.redeploy"
    FLUSH = "redis.flush"
    RUN_TASK = "task.run"
    SCHEDULE = "schedule.pause"  # pause and resume
    AUDIT_ENV = "audit.read.environment"  # the audit entries of one environment
    AUDIT_ALL = "audit.read.all"
    GRANTS = "grants.manage"


_READ = {Permission.VIEW, Permission.LOGS, Permission.AUDIT_ENV}
_DEVELOP = _READ | {Permission.RESTART, Permission.REDEPLOY, Permission.FLUSH, Permission.RUN_TASK}

MATRIX: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset(_READ),
    Role.DEVELOPER: frozenset(_DEVELOP),
    Role.OPERATOR: frozenset(_DEVELOP | {Permission.SCHEDULE}),
    Role.AUDITOR: frozenset(_READ | {Permission.AUDIT_ALL}),
    Role.ADMIN: frozenset(Permission),
}

# Strength order, used to pick the effective role when a person holds several
# (directly and through groups).
RANK = {Role.VIEWER: 1, Role.AUDITOR: 2, Role.DEVELOPER: 3, Role.OPERATOR: 4, Role.ADMIN: 5}

# Permissions that change something.
MUTATING = frozenset({Permission.RESTART, Permission.REDEPLOY, Permission.FLUSH,
                      Permission.RUN_TASK, Permission.SCHEDULE})
# Operations refused in every disabled environment (prod unless enabled), admins and auditors included:
# the changes, and reading the service logs, which hold production data.
DISABLED_REFUSES = MUTATING | {Permission.LOGS}


def allows(role: Role | None, permission: Permission) -> bool:
    return role is not None and permission in MATRIX[role]


def strongest(roles: list[Role]) -> Role | None:
    return max(roles, key=RANK.__getitem__) if roles else None


def parse_role(value: str, environment: str) -> Role:
    """The role named ``value`` for a grant in ``environment``; ValueError says why not."""
    try:
        role = Role(value)
    except ValueError:
        raise ValueError(f"unknown role {value!r} (one of: {', '.join(r.value for r in Role)})") from None
    if role.is_global and environment != GLOBAL:
        raise ValueError(f"{role.value} is a global role: grant it on environment '*'")
    if not role.is_global and environment == GLOBAL:
        raise ValueError(f"{role.value} is a per-environment role: name an environment, not '*'")
    return role
