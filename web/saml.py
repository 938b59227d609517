"""SAML single sign-on (python3-saml service provider).

Whatever the files in VALETKEY_SAML_PATH say, this module enforces: strict
mode, signed assertions, rejection of deprecated algorithms (SHA-1),
SP-initiated logins only (the AuthnRequest id lives in the session and must
come back as InResponseTo), a replay cache of assertion ids in Redis, and
URLs derived from VALETKEY_BASE_URL — never from Host or X-Forwarded-*.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
from typing import Any, NoReturn
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, current_app, redirect, request, session
from itsdangerous import BadSignature, URLSafeTimedSerializer
from onelogin.saml2.auth import OneLogin_Saml2_Auth
from onelogin.saml2.settings import OneLogin_Saml2_Settings
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Response as WResponse  # what redirect() returns; flask's Response is one

from jobs.audit_stream import AuditEvent
from scope.errors import BadRequest, ConfigError, Forbidden, NotFound, PayloadTooLarge, Unauthorized, ValetKeyError
from web.auth import end_session, safe_next, start_session
from web.context import runtime
from web.saml_guard import MAX_RESPONSE_BYTES, SamlRejected, SamlTooLarge, decode_response, inspect

log = logging.getLogger("valetkey.saml")
bp = Blueprint("saml", __name__, url_prefix="/saml")
REPLAY_KEY = "valetkey:saml:assertion:"
PENDING_COOKIE = "vk_saml_pending"
PENDING_MAX_AGE = 600  # seconds a user may spend at the IdP


def _pending_serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key or "", salt="valetkey-saml-pending")


def load_settings(path: str, base_url: str) -> dict[str, Any]:
    """settings.json + advanced_settings.json from ``path``, with our non-negotiables applied."""
    merged: dict[str, Any] = {}
    for name in ("settings.json", "advanced_settings.json"):
        f = os.path.join(path, name)
        if not os.path.exists(f):
            if name == "settings.json":
                raise ConfigError(f, "-", "file not found (VALETKEY_SAML_PATH must hold python3-saml settings)")
            continue
        try:
            with open(f, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError) as e:
            raise ConfigError(f, "-", f"unreadable JSON: {e}") from None
        merged.update(data)
    sp = merged.setdefault("sp", {})
    sp["entityId"] = f"{base_url}/saml/metadata"
    sp.setdefault("assertionConsumerService", {})["url"] = f"{base_url}/saml/acs"
    sp["assertionConsumerService"]["binding"] = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
    sp.setdefault("singleLogoutService", {})["url"] = f"{base_url}/saml/sls"
    merged["strict"] = True
    merged["debug"] = False
    sec = merged.setdefault("security", {})
    sec["wantAssertionsSigned"] = True
    sec["rejectDeprecatedAlgorithm"] = True
    sec.setdefault("wantNameId", True)
    sec.setdefault("signatureAlgorithm", "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256")
    sec.setdefault("digestAlgorithm", "http://www.w3.org/2001/04/xmlenc#sha256")
    return merged


def _settings() -> OneLogin_Saml2_Settings:
    rt = runtime()
    cached = rt.extras.get("saml_settings")
    if cached is None:
        path = rt.settings.saml_path
        if not path:
            raise NotFound("Single sign-on is not configured.")
        try:
            cached = OneLogin_Saml2_Settings(load_settings(path, rt.settings.base_url), custom_base_path=path)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - the library raises plain errors for bad settings
            raise ConfigError(path, "settings.json", f"invalid python3-saml settings: {e}") from None
        rt.extras["saml_settings"] = cached
    return cached


def _request_data() -> dict[str, Any]:
    """What python3-saml needs to know about the request — built from BASE_URL, not from headers."""
    base = urlsplit(runtime().settings.base_url)
    https = base.scheme == "https"
    return {"https": "on" if https else "off", "http_host": base.netloc or "localhost",
            "script_name": request.path,
            "get_data": request.args.to_dict(), "post_data": request.form.to_dict()}


def _auth() -> OneLogin_Saml2_Auth:
    return OneLogin_Saml2_Auth(_request_data(), old_settings=_settings())


@bp.get("/metadata")
def metadata() -> WResponse:
    """The service provider's metadata for the IdP administrator."""
    settings = _settings()
    xml = settings.get_sp_metadata()
    errors = settings.validate_metadata(xml)
    if errors:
        raise BadRequest("The service provider metadata is invalid: " + ", ".join(errors))
    return Response(xml, mimetype="application/samlmetadata+xml")


@bp.get("/login")
def login() -> WResponse:
    """Start an SP-initiated login; the request id is remembered for the response."""
    nxt = safe_next(request.args.get("next"))
    auth = _auth()
    # force=1: the IdP must authenticate the person again (ForceAuthn), e.g. before an approval.
    url = auth.login(return_to=nxt, force_authn=request.args.get("force") == "1")
    rid = auth.get_last_request_id()
    session["saml_request_id"] = rid
    session["saml_next"] = nxt
    resp = redirect(url)
    # The IdP posts back cross-site, where browsers do not send the SameSite=Lax
    # session cookie; this signed, short-lived cookie carries the same binding
    # (SameSite=None needs Secure, so it is only cross-site capable behind HTTPS).
    secure = runtime().settings.base_url.startswith("https://")
    resp.set_cookie(PENDING_COOKIE, _pending_serializer().dumps({"rid": rid, "next": nxt}),
                    max_age=PENDING_MAX_AGE, httponly=True, secure=secure,
                    samesite="None" if secure else "Lax", path="/saml/")
    return resp


def _pending_login() -> tuple[str | None, str | None]:
    """The AuthnRequest this browser started: from the session, or the pending-login cookie."""
    rid, nxt = session.pop("saml_request_id", None), session.pop("saml_next", None)
    if rid:
        return rid, nxt
    raw = request.cookies.get(PENDING_COOKIE)
    if not raw:
        return None, None
    try:
        data = _pending_serializer().loads(raw, max_age=PENDING_MAX_AGE)
    except BadSignature:
        return None, None
    return data.get("rid"), data.get("next")


def _deny(reason: str, actor: str = "(unknown)", error: ValetKeyError | None = None) -> NoReturn:
    log.warning("SAML login refused: %s", reason)
    runtime().audit.record(AuditEvent(actor=actor, source="web", action="login", outcome="denied",
                                      detail=f"SSO: {reason}"))
    raise error or Unauthorized("Single sign-on failed; please try again from the sign-in page.")


def _too_large(reason: str) -> NoReturn:
    _deny(reason, error=PayloadTooLarge(f"A SAML response may be at most {MAX_RESPONSE_BYTES // 1024} KiB."))


@bp.post("/acs")
def acs() -> WResponse:
    """Assertion consumer: validate the IdP's response, then start a fresh session."""
    # Base64 and form encoding make the body up to about twice the XML's size.
    request.max_content_length = MAX_RESPONSE_BYTES * 2
    if (request.content_length or 0) > MAX_RESPONSE_BYTES * 2:
        _too_large("request body too large")
    try:
        raw = request.form.get("SAMLResponse", "")
    except RequestEntityTooLarge:  # a chunked body with no Content-Length, over the limit
        _too_large("request body too large")
    request_id, nxt = _pending_login()
    if not raw:
        _deny("no SAMLResponse")
    try:
        inspect(decode_response(raw))
    except SamlTooLarge as e:
        _too_large(str(e))
    except SamlRejected as e:
        _deny(str(e))
    if not request_id:
        _deny("unsolicited response (no login was started in this browser session)")
    auth = _auth()
    try:
        auth.process_response(request_id=request_id)
    except Exception as e:  # noqa: BLE001 - malformed input makes the library raise
        _deny(f"invalid response ({type(e).__name__})")
    if auth.get_errors() or not auth.is_authenticated():
        _deny(f"invalid response: {auth.get_last_error_reason() or ', '.join(auth.get_errors())}")
    if auth.get_last_response_in_response_to() != request_id:
        _deny("response does not answer this browser's login request")
    aid = auth.get_last_assertion_id()
    expires = auth.get_last_assertion_not_on_or_after() or 0
    ttl = max(60, int(expires - dt.datetime.now(dt.timezone.utc).timestamp()) + 60)
    if not aid or not runtime().redis.set(REPLAY_KEY + aid, "1", nx=True, ex=ttl):
        _deny("assertion replayed")
    attrs = auth.get_attributes()
    email = login_email(auth.get_nameid() or "", attrs.get("email") or [])
    if email is None:
        _deny("no e-mail address in the assertion")
    groups = [g for g in attrs.get(runtime().settings.saml_groups_attribute, []) if g]
    user = runtime().users.upsert_sso_user(email, (attrs.get("name") or [""])[0], groups)
    if user.disabled:  # disabled in Valet Key: the IdP's word does not re-enable the account
        _deny("account disabled", actor=user.email,
              error=Forbidden("This account is disabled in Valet Key; ask a platform engineer."))
    start_session(user, via="saml")
    runtime().audit.record(AuditEvent(actor=user.email, source="web", action="login", outcome="succeeded",
                                      detail=f"SSO; groups: {', '.join(sorted(set(groups))) or 'none'}"))
    resp = redirect(safe_next(nxt or request.form.get("RelayState")))
    resp.delete_cookie(PENDING_COOKIE, path="/saml/")
    return resp


def looks_like_email(value: str) -> bool:
    local, at, domain = value.partition("@")
    return bool(at and local and "." in domain and not any(c.isspace() for c in value))


def login_email(name_id: str, email_attribute: list[str]) -> str | None:
    """Who signs in: the NameID when it is an e-mail address (the emailAddress format we ask for).

    The ``email`` attribute counts only when the NameID is not an e-mail address
    (a persistent or transient id): at many IdPs users can edit their profile's
    e-mail attribute, and letting it override the NameID would let anyone sign
    in as anyone, a local break-glass admin included.
    """
    if looks_like_email(name_id.strip()):
        return name_id.strip()
    attr = (email_attribute[0] if email_attribute else "") or ""
    return attr.strip() if looks_like_email(attr.strip()) else None


LOGOUT_MESSAGES = ("SAMLRequest", "SAMLResponse")


@bp.get("/sls")
def sls() -> WResponse:
    """Single logout from the IdP: only a signed, valid LogoutRequest/LogoutResponse ends the session.

    A bare GET must not: any page on the internet could embed it (logout CSRF).
    People signing out themselves use POST /logout (or POST here), with the CSRF token.
    """
    args = request.args
    if not any(m in args for m in LOGOUT_MESSAGES) or "Signature" not in args or "SigAlg" not in args:
        raise BadRequest("Expected a signed SAML LogoutRequest or LogoutResponse from the identity provider; "
                         "to sign out, use the Sign out button.")
    ended: list[bool] = []

    def end() -> None:  # python3-saml calls it only once the message's signature and fields check out
        end_session()
        ended.append(True)

    url = None
    try:
        url = _auth().process_slo(delete_session_cb=end)
    except Exception:  # noqa: BLE001 - malformed input, or no IdP logout URL to answer to
        log.info("SAML logout message could not be processed")
    if not ended:
        raise BadRequest("The SAML logout message is not valid (signature, issuer or destination); "
                         "the session was not ended.")
    return redirect(url or "/login")


@bp.post("/sls")
def sls_post() -> WResponse:
    """Sign out here (a form post carrying the CSRF token, checked before every session-authenticated POST)."""
    end_session()
    return redirect("/login")


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    exempt = set(app.config.get("CSRF_EXEMPT_ENDPOINTS", ()))
    exempt.add("saml.acs")  # the IdP posts here cross-site; the response itself is signed
    app.config["CSRF_EXEMPT_ENDPOINTS"] = tuple(exempt)
