"""The admin page: environments, users and groups, grants and API tokens."""
from __future__ import annotations

from typing import Any, Callable

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
from werkzeug.wrappers import Response as WResponse  # what redirect() returns; flask's Response is one

from scope.errors import BadRequest, Forbidden, ValetKeyError
from scope.models import utcnow
from scope.roles import GLOBAL, Permission, Role
from scope.times import iso, parse_duration
from web.context import principal, runtime
from web.guard import audit_denied
from web.pages import page
from wiring.access_changes import add_grant, create_token, disable_user, remove_grant, revoke_token

bp = Blueprint("admin", __name__, url_prefix="/admin")


def require_admin(action: str | None = None, target: str = "") -> str:
    """The admin's actor name; anyone else gets 403, audited ``denied`` when trying an ``action``."""
    p = principal()
    if not p.can_global(Permission.GRANTS):
        detail = "Only admins can manage access."
        if action is not None:
            audit_denied(action, "", target, detail)
        raise Forbidden(detail)
    return p.actor


def _overview() -> dict[str, Any]:
    rt = runtime()
    users = rt.users.list_users()
    grants = rt.users.all_grants()
    groups = sorted({g for u in users for g in (u.groups or [])} |
                    {gr.subject[len("group:"):] for gr in grants if gr.subject.startswith("group:")})
    return {"environments": list(rt.catalog), "users": users, "groups": groups, "grants": grants,
            "tokens": rt.users.list_tokens(), "now": utcnow(), "token_ttl_days": rt.settings.token_ttl_days,
            "roles": [r.value for r in Role], "global_env": GLOBAL}


@bp.get("/")
@page
def index() -> str:
    """Who holds which role where; tokens."""
    require_admin()
    return render_template("admin.html", **_overview(), new_token=None,
                           messages=get_flashed_messages(with_categories=True))


def _change(do: Callable[[], tuple[str, str]]) -> WResponse:
    """Run an access change, flash its (message, category) or its refusal, back to the page."""
    try:
        flash(*do())
    except ValetKeyError as e:
        flash(e.detail, "error")
    return redirect(url_for("admin.index"))


@bp.post("/grants")
@page
def grant() -> WResponse:
    """Grant a role (audited as grant.add)."""
    f = request.form
    actor = require_admin("grant.add", f.get("subject", ""))

    def do() -> tuple[str, str]:
        expires_at = None
        if f.get("duration"):
            try:
                expires_at = utcnow() + parse_duration(f["duration"])
            except ValueError as e:
                raise BadRequest(f"For: {e}") from None
        g, created = add_grant(runtime(), f.get("subject", ""), f.get("environment", ""), f.get("role", ""),
                               actor=actor, source="web", expires_at=expires_at, reason=f.get("reason", "")[:500])
        until = f" until {iso(g.expires_at)}" if g.expires_at else ""
        return (f"Granted {g.role} in {g.environment} to {g.subject}{until}." if created
                else f"{g.subject} already holds {g.role} in {g.environment}.", "ok")
    return _change(do)


@bp.post("/grants/revoke")
@page
def revoke() -> WResponse:
    """Revoke a role (audited as grant.remove)."""
    f = request.form
    actor = require_admin("grant.remove", f.get("subject", ""))

    def do() -> tuple[str, str]:
        gone = remove_grant(runtime(), f.get("subject", ""), f.get("environment", ""), f.get("role") or None,
                            actor=actor, source="web")
        return (f"Revoked {len(gone)} grant(s)." if gone else "No such grant.", "ok" if gone else "error")
    return _change(do)


@bp.post("/tokens")
@page
def token() -> str | WResponse:
    """Create an API token for a user; its value is shown once, on this response only."""
    f = request.form
    actor = require_admin("token.create", f.get("email", ""))
    try:
        try:
            ttl = parse_duration(f["expires_in"]) if f.get("expires_in", "").strip() else None
        except ValueError as e:
            raise BadRequest(f"Expires in: {e}") from None
        tok, clear = create_token(runtime(), f.get("email", ""), f.get("name", ""), actor=actor, source="web",
                                  expires_in=ttl)
    except ValetKeyError as e:
        flash(e.detail, "error")
        return redirect(url_for("admin.index"))
    resp = render_template("admin.html", **_overview(), new_token=clear, messages=[])
    return Response(resp, headers={"Cache-Control": "no-store"})


@bp.post("/tokens/<int:token_id>/revoke", endpoint="revoke_token")
@page
def revoke_token_view(token_id: int) -> WResponse:
    """Revoke an API token at once (audited as token.revoke)."""
    actor = require_admin("token.revoke", f"token {token_id}")

    def do() -> tuple[str, str]:
        _, email, changed = revoke_token(runtime(), token_id, actor=actor, source="web")
        return (f"Token {token_id} of {email} revoked." if changed
                else f"Token {token_id} was already revoked.", "ok")
    return _change(do)


@bp.post("/users/disable")
@page
def disable_user_view() -> WResponse:
    """Disable an account: its sessions and tokens stop at once (audited as user.disable)."""
    email = request.form.get("email", "")
    actor = require_admin("user.disable", email)

    def do() -> tuple[str, str]:
        user, changed = disable_user(runtime(), email, actor=actor, source="web")
        return (f"{user.email} disabled: their sessions and API tokens no longer work." if changed
                else f"{user.email} was already disabled.", "ok")
    return _change(do)


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
