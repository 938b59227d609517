"""The admin page: environments, users and groups, grants and API tokens."""
from __future__ import annotations

from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    flash,
    get_flashed_messages,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy import select
from werkzeug.wrappers import Response as WResponse  # what redirect() returns; flask's Response is one

from scope.errors import BadRequest, Forbidden, ValetKeyError
from scope.models import ApiToken, User, utcnow
from scope.roles import GLOBAL, Permission, Role
from scope.times import iso, parse_duration
from web.context import principal, runtime
from web.pages import page
from wiring.access_changes import add_grant, create_token, remove_grant

bp = Blueprint("admin", __name__, url_prefix="/admin")


def require_admin() -> str:
    p = principal()
    if not p.can_global(Permission.GRANTS):
        raise Forbidden("Only admins can manage access.")
    return p.actor


def _overview() -> dict[str, Any]:
    rt = runtime()
    with rt.sessions() as s:
        users = list(s.scalars(select(User).order_by(User.email)))
        tokens = list(s.scalars(select(ApiToken).order_by(ApiToken.created_at.desc())))
        emails = {u.id: u.email for u in users}
    grants = rt.users.all_grants()
    groups = sorted({g for u in users for g in (u.groups or [])} |
                    {gr.subject[len("group:"):] for gr in grants if gr.subject.startswith("group:")})
    return {"environments": list(rt.catalog), "users": users, "groups": groups, "grants": grants,
            "tokens": [(t, emails.get(t.user_id, "?")) for t in tokens],
            "roles": [r.value for r in Role], "global_env": GLOBAL}


@bp.get("/")
@page
def index() -> str:
    """Who holds which role where; tokens."""
    require_admin()
    return render_template("admin.html", **_overview(), new_token=None,
                           messages=get_flashed_messages(with_categories=True))


@bp.post("/grants")
@page
def grant() -> WResponse:
    """Grant a role (audited as grant.add)."""
    actor = require_admin()
    f = request.form
    try:
        expires_at = None
        if f.get("duration"):
            try:
                expires_at = utcnow() + parse_duration(f["duration"])
            except ValueError as e:
                raise BadRequest(f"For: {e}") from None
        g, created = add_grant(runtime(), f.get("subject", ""), f.get("environment", ""), f.get("role", ""),
                               actor=actor, source="web", expires_at=expires_at, reason=f.get("reason", "")[:500])
        until = f" until {iso(g.expires_at)}" if g.expires_at else ""
        flash(f"Granted {g.role} in {g.environment} to {g.subject}{until}." if created
              else f"{g.subject} already holds {g.role} in {g.environment}.", "ok")
    except ValetKeyError as e:
        flash(e.detail, "error")
    return redirect(url_for("admin.index"))


@bp.post("/grants/revoke")
@page
def revoke() -> WResponse:
    """Revoke a role (audited as grant.remove)."""
    actor = require_admin()
    f = request.form
    try:
        gone = remove_grant(runtime(), f.get("subject", ""), f.get("environment", ""), f.get("role") or None,
                            actor=actor, source="web")
        flash(f"Revoked {len(gone)} grant(s)." if gone else "No such grant.", "ok" if gone else "error")
    except ValetKeyError as e:
        flash(e.detail, "error")
    return redirect(url_for("admin.index"))


@bp.post("/tokens")
@page
def token() -> str | WResponse:
    """Create an API token for a user; its value is shown once, on this response only."""
    actor = require_admin()
    try:
        tok, clear = create_token(runtime(), request.form.get("email", ""), request.form.get("name", ""),
                                  actor=actor, source="web")
    except ValetKeyError as e:
        flash(e.detail, "error")
        return redirect(url_for("admin.index"))
    resp = render_template("admin.html", **_overview(), new_token=clear, messages=[])
    return Response(resp, headers={"Cache-Control": "no-store"})


@bp.post("/tokens/<int:token_id>/revoke")
@page
def revoke_token(token_id: int) -> WResponse:
    """Revoke an API token at once."""
    require_admin()
    try:
        runtime().users.revoke_token(token_id)
        flash("Token revoked.", "ok")
    except ValetKeyError as e:
        flash(e.detail, "error")
    return redirect(url_for("admin.index"))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

    @app.context_processor
    def _is_admin() -> dict[str, Any]:
        from flask_login import current_user

        if not current_user.is_authenticated:
            return {"is_admin": False}
        try:
            return {"is_admin": principal().can_global(Permission.GRANTS)}
        except ValetKeyError:
            return {"is_admin": False}
