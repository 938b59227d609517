"""Authentication: Flask-Login sessions for the browser, bearer tokens for scripts, local login."""
from __future__ import annotations

import json
import logging
import secrets
import time
from typing import Mapping
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, redirect, render_template, request, session, url_for
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from werkzeug.wrappers import Response as WResponse  # what redirect() returns; flask's Response is one

from jobs.audit_stream import AuditEvent
from scope.errors import NotFound, Unauthorized, ValetKeyError
from scope.models import User
from scope.text import as_text
from web.context import request_id, runtime
from web.errors import wants_html
from web.login_throttle import LoginThrottle

bp = Blueprint("auth", __name__)
log = logging.getLogger(__name__)
SESSION_KEY = "valetkey:session:"
SESSION_LIFETIME = 12 * 3600  # absolute lifetime of a browser session, seconds
SESSION_IDLE = 60 * 60  # a session unused this long ends
login_manager = LoginManager()


class SessionUser(UserMixin):
    """What Flask-Login keeps: the user row and how they signed in."""

    def __init__(self, user: User, via: str) -> None:
        self.user, self.via = user, via

    def get_id(self) -> str:
        # The session stores the id together with a per-login nonce so that a
        # logged-out session cookie cannot be replayed (see load_user).
        return f"{self.user.id}:{session.get('login_nonce', '')}"


@login_manager.user_loader
def load_user(ident: str) -> SessionUser | None:
    if request.headers.get("Authorization", "").startswith("Bearer "):
        return None  # an explicit token speaks for the request, not an ambient cookie
    uid, _, nonce = ident.partition(":")
    if not uid.isdigit() or not nonce or nonce != session.get("login_nonce"):
        return None
    # Sessions live server-side too: logout (or expiry) deletes the key, so a
    # copied cookie stops working at once. The key's TTL is the idle timeout,
    # renewed on use but never past the absolute lifetime stored in its value.
    r = runtime().redis
    value = r.get(SESSION_KEY + nonce)
    if value is None:
        return None
    owner, _, deadline = as_text(value).partition("|")
    now = int(time.time())
    if owner != uid or not deadline.isdigit() or int(deadline) <= now:
        return None
    r.expire(SESSION_KEY + nonce, min(SESSION_IDLE, int(deadline) - now))
    user = runtime().users.get(int(uid))
    if user is None or user.disabled:
        return None
    return SessionUser(user, "session")


@login_manager.request_loader
def load_from_token(req) -> SessionUser | None:  # type: ignore[no-untyped-def]
    header = req.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return None
    user = runtime().users.user_for_token(header[len("Bearer "):].strip())
    if user is None:
        # A token that was sent but is wrong is an error, not an anonymous request.
        raise Unauthorized("The API token is invalid or revoked.")
    return SessionUser(user, "token")


@login_manager.unauthorized_handler
def unauthorized() -> WResponse:
    if wants_html():
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    raise Unauthorized("Sign in, or send an API token as 'Authorization: Bearer <token>'.")


def safe_next(target: str | None) -> str:
    """Only same-origin paths: no scheme, no host, no '//' or backslash tricks."""
    if not target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith(("//", "/\\")) \
            or "\\" in target or any(ord(c) < 32 for c in target):
        return "/"
    return target


def start_session(user: User, via: str = "password") -> None:
    """Rotate the session at login: drop everything, new nonce, then log in."""
    end_session()
    nonce = secrets.token_urlsafe(24)
    deadline = int(time.time()) + SESSION_LIFETIME
    runtime().redis.set(SESSION_KEY + nonce, f"{user.id}|{deadline}", ex=SESSION_IDLE)
    session["login_nonce"] = nonce
    session["login_via"] = via
    session["auth_at"] = int(time.time())  # approvals with SSO on need a recent sign-in (web/services/approvals.py)
    session.permanent = True
    login_user(SessionUser(user, "session"))


def end_session() -> None:
    """Forget the session server-side and in the cookie."""
    nonce = session.get("login_nonce")
    if nonce:
        runtime().redis.delete(SESSION_KEY + nonce)
    logout_user()
    session.clear()


def demo_logins(environ: Mapping[str, str]) -> list[dict[str, str]]:
    """The one-click sign-in buttons of ``valetkey demo`` (which alone sets VALETKEY_DEMO_LOGINS); else none.

    Each button POSTs the account's e-mail and password to the ordinary login
    form, CSRF token included: the same check, audit entry and throttling.
    """
    try:
        rows = json.loads(environ.get("VALETKEY_DEMO_LOGINS") or "[]")
    except ValueError:
        return []
    keys = ("email", "password", "name", "roles")
    if not isinstance(rows, list):
        return []
    return [{k: str(r.get(k, "")) for k in keys} for r in rows
            if isinstance(r, dict) and r.get("email") and r.get("password")]


@bp.get("/login")
def login() -> str | WResponse:
    """The sign-in page (SSO button and/or the local form)."""
    if current_user.is_authenticated:
        return redirect(safe_next(request.args.get("next")))
    rt = runtime()
    return render_template("login.html", next=safe_next(request.args.get("next")),
                           local_login=rt.settings.local_login, sso=bool(rt.settings.saml_path), error=None,
                           demo_logins=demo_logins(rt.settings.environ) if rt.settings.local_login else [])


def _login_page(status: int, error: str, nxt: str, headers: dict[str, str] | None = None) -> Response:
    page = render_template("login.html", next=nxt, local_login=True, sso=bool(runtime().settings.saml_path),
                           error=error, demo_logins=demo_logins(runtime().settings.environ))
    return Response(page, status=status, headers=headers)


def _minutes(seconds: int) -> str:
    m = max(1, -(-seconds // 60))
    return "1 minute" if m == 1 else f"{m} minutes"


@bp.post("/login")
def login_post() -> Response | WResponse:
    """Local password login (break-glass admins, the demo), throttled against guessing."""
    rt = runtime()
    if not rt.settings.local_login:
        raise NotFound("Local login is switched off; use single sign-on.")
    email = (request.form.get("email") or "").strip().lower()
    password = request.form.get("password") or ""
    nxt = safe_next(request.form.get("next"))
    throttle = LoginThrottle(rt.redis)
    attempt = throttle.begin(email, request.remote_addr or "unknown")
    if attempt.retry_after:
        # Refused before the password is looked at: a right guess must not be confirmable either.
        rt.audit.record(AuditEvent(actor=email or "(blank)", source="web", action="login", outcome="denied",
                                   detail="local password: too many failed sign-ins, "
                                          f"locked for {attempt.retry_after}s",
                                   request_id=request_id()))
        return _login_page(429, "Too many failed sign-in attempts for this account or from this network. "
                                f"Try again in {_minutes(attempt.retry_after)}.", nxt,
                           {"Retry-After": str(attempt.retry_after)})
    user = rt.users.authenticate(email, password) if email and password else None
    rt.audit.record(AuditEvent(actor=email or "(blank)", source="web", action="login",
                               outcome="succeeded" if user else "denied",
                               detail="local password" if user else "local password: wrong e-mail or password",
                               request_id=request_id()))
    if user is None:
        return _login_page(401, "Wrong e-mail or password.", nxt)
    throttle.succeeded(attempt, email)
    start_session(user)
    return redirect(nxt)


@bp.post("/logout")
def logout() -> WResponse:
    """End the session server-side (the nonce is gone, so the old cookie is worthless); audited."""
    who = current_user.user.email if current_user.is_authenticated else None
    # Ending access first, whatever happens to the audit entry: refusing a logout
    # because the trail is down would keep a session alive, the opposite of failing closed.
    end_session()
    if who is not None:
        try:
            runtime().audit.record(AuditEvent(actor=who, source="web", action="logout", outcome="succeeded",
                                              detail="session ended", request_id=request_id()))
        except ValetKeyError:
            log.error("logout of %s could not be audited: the audit trail is unavailable", who)
    return redirect(url_for("auth.login"))


def init_app(app: Flask) -> None:
    login_manager.init_app(app)
    app.register_blueprint(bp)
