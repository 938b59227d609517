"""Authorization: what a principal may see and do in each environment.

The rule of the contract: an environment a principal holds no role in does not
exist for them (NotFound, never Forbidden, so names do not leak); a visible
environment with a role too weak is Forbidden; a disabled environment (prod by
default) refuses every operation, reading its logs included, admins included.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from scope.catalog import Catalog, Environment
from scope.errors import Forbidden, NotFound
from scope.roles import DISABLED_REFUSES, GLOBAL, Permission, Role, allows, strongest


@dataclass(frozen=True)
class Principal:
    """Who is asking: a user (with grants resolved) or a machine caller (webhook)."""

    actor: str  # e-mail, or e.g. "webhook:staging" / "github:acme/app@refs/heads/main"
    name: str = ""
    user_id: int | None = None
    # environment name (or "*") -> roles held there, directly or through groups
    roles: dict[str, list[Role]] = field(default_factory=dict)

    def role_in(self, environment: str) -> Role | None:
        return strongest(self.roles.get(environment, []) + self.roles.get(GLOBAL, []))

    @property
    def global_role(self) -> Role | None:
        return strongest(self.roles.get(GLOBAL, []))

    def can_global(self, permission: Permission) -> bool:
        return allows(self.global_role, permission)


def principal_from_grants(actor: str, name: str, user_id: int | None,
                          grants: list[tuple[str, str]]) -> Principal:
    roles: dict[str, list[Role]] = {}
    for env, role in grants:
        try:
            roles.setdefault(env, []).append(Role(role))
        except ValueError:
            continue  # a role this version does not know grants nothing
    return Principal(actor=actor, name=name, user_id=user_id, roles=roles)



def visible_environments(principal: Principal, catalog: Catalog) -> list[tuple[Environment, Role]]:
    out = []
    for env in catalog:
        role = principal.role_in(env.name)
        if role is not None:
            out.append((env, role))
    return out


def environment_for(principal: Principal, catalog: Catalog, name: str) -> tuple[Environment, Role]:
    """The environment if the principal holds any role there; NotFound otherwise."""
    env = catalog.get(name)
    role = principal.role_in(name) if env else None
    if env is None or role is None:
        raise NotFound(f"No environment named {name!r}.")
    return env, role


def check(principal: Principal, env: Environment, permission: Permission) -> Role:
    """Raise Forbidden unless ``permission`` is allowed in the (already visible) environment."""
    role = principal.role_in(env.name)
    if role is None:
        raise NotFound(f"No environment named {env.name!r}.")
    if permission in DISABLED_REFUSES and not env.actions_allowed:
        what = "a production environment" if env.is_prod else "a disabled environment"
        raise Forbidden(f"{env.name} is {what}: Valet Key refuses every action there.")
    if not allows(role, permission):
        raise Forbidden(f"Your role in {env.name} ({role.value}) does not allow {permission.value}.")
    return role


# Who may approve a two-person job or an access request in an environment: operators and admins.
APPROVER_ROLES = frozenset({Role.OPERATOR, Role.ADMIN})


def check_approver(principal: Principal, catalog: Catalog, environment: str, requester: str) -> Environment:
    """The environment if ``principal`` may decide on ``requester``'s request there.

    NotFound when they hold no role there (names do not leak); Forbidden for the
    requester themself and for roles below operator.
    """
    env, role = environment_for(principal, catalog, environment)
    if principal.actor == requester:
        raise Forbidden("You made this request yourself: a second person must decide on it.")
    if role not in APPROVER_ROLES:
        raise Forbidden(f"Your role in {env.name} ({role.value}) cannot approve: operators and admins can.")
    return env


def authorize(principal: Principal, catalog: Catalog, name: str, permission: Permission) -> tuple[Environment, Role]:
    env, _ = environment_for(principal, catalog, name)
    return env, check(principal, env, permission)
