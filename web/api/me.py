"""GET /api/v1/me."""
from __future__ import annotations

from typing import Any

from scope.times import iso_or_none
from web.api.blueprint import Blueprint
from web.api.schemas import MeSchema
from web.context import principal, runtime

blp = Blueprint("me", __name__, url_prefix="/api/v1", description="The caller")


@blp.get("/me")
@blp.response(200, MeSchema)
def me() -> dict[str, Any]:
    """Who you are and which roles you hold, directly or through SSO groups."""
    p = principal()
    user = runtime().users.get(p.user_id) if p.user_id else None
    grants = runtime().users.grants_for(user.subjects) if user else []
    return {"email": p.actor, "name": p.name, "groups": list(user.groups or []) if user else [],
            "grants": [{"environment": g.environment, "role": g.role, "subject": g.subject,
                        "expires_at": iso_or_none(g.expires_at)} for g in grants]}
