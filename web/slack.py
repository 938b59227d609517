"""The Slack app: ``POST /slack/commands`` (the ``/valet`` slash command) and ``POST /slack/interactions``
(Approve / Reject buttons). docs/slack.md.

Order, for both: Slack's v0 signature over the raw body with a timestamp within
5 minutes (slack-sdk's SignatureVerifier) before anything is parsed — else 401,
audited ``denied``; then the Slack user is mapped to a Valet Key user by the
e-mail Slack reports (users.info, cached briefly) — unknown or disabled people
are refused; then the request runs as that person with source ``slack``
through the API's own services. A verified request that is refused is answered
200 with an ephemeral message (Slack shows nothing else) and audited ``denied``.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Any
from urllib.parse import parse_qs

from flask import Blueprint, Flask, abort, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue
from slack_sdk.signature import Clock, SignatureVerifier
from werkzeug.exceptions import RequestEntityTooLarge

from cloud.slack import SlackApi
from jobs.audit_stream import AuditEvent
from jobs.slack_messages import APPROVE, REJECT
from jobs.slack_state import remember_message
from scope.access import principal_from_grants
from scope.errors import NotFound, PayloadTooLarge, Unauthorized, Unavailable, ValetKeyError, ValidationFailed
from web.context import request_id, runtime
from web.services.slack import Command, decide, parse, run

log = logging.getLogger(__name__)
bp = Blueprint("slack", __name__, url_prefix="/slack")
EXTENSION = "valetkey_slack"
MAX_BODY = 16 * 1024  # Slack's command and block_actions payloads are a few KiB
SOURCE = "slack"
JOB_ID = re.compile(r"[0-9a-f]{32}")


class SlackGate:
    """The app's Slack parts: the signature verifier (its clock replaceable) and the Web API client."""

    def __init__(self, secret: str, api: SlackApi, clock: Clock | None = None) -> None:
        self.verifier = SignatureVerifier(secret, clock or Clock())
        self.api = api

    def verified(self, raw: bytes, headers: Any) -> bool:
        try:
            return self.verifier.is_valid_request(raw, dict(headers))
        except ValueError:  # a timestamp that is not a number
            return False


def gate() -> SlackGate:
    g_ = current_app.extensions.get(EXTENSION)
    if g_ is None:  # VALETKEY_SLACK_SIGNING_SECRET unset: Slack is off and its URLs do not exist
        abort(404)
    return g_


def _audit_denied(actor: str, action: str, detail: str, environment: str = "", target: str = "") -> None:
    runtime().audit.record(AuditEvent(actor=actor, source=SOURCE, action=action, outcome="denied",
                                      environment=environment, target=target, detail=detail,
                                      request_id=request_id()))


def _verified_form() -> dict[str, str]:
    """The form fields of a request Slack signed; 401 (audited) before anything is parsed otherwise."""
    slack = gate()
    request.max_content_length = MAX_BODY
    try:
        raw = request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise PayloadTooLarge(f"The body is larger than {MAX_BODY} bytes.") from None
    if not slack.verified(raw, request.headers):
        detail = "Slack request refused: missing or bad X-Slack-Signature, or a timestamp older than 5 minutes."
        _audit_denied("slack", "login", detail)
        raise Unauthorized(detail)
    form = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in form.items()}


def _sign_in(team_id: str, user_id: str, action: str) -> str:
    """Make the Slack user the request's principal (source ``slack``); the refusal text if they cannot be."""
    rt = runtime()
    who = f"slack:{team_id}/{user_id}"
    email = gate().api.email_of(team_id, user_id) if user_id else None
    user = rt.users.standing(email) if email else None
    if user is None or user.disabled:
        why = "no Valet Key user has the e-mail Slack reports for them" if user is None else f"{email} is disabled"
        _audit_denied(email or who, action, f"Slack user refused: {why}.")
        return ("Valet Key does not know you: your Slack e-mail must be that of an active Valet Key user. "
                "Ask a platform engineer.")
    g.principal = principal_from_grants(user.email, user.name, user.id, user.grants)
    g.source = SOURCE
    return ""


def ephemeral(text: str) -> ResponseReturnValue:
    return jsonify({"response_type": "ephemeral", "text": text})


def _refusal(e: ValetKeyError) -> str:
    if isinstance(e, ValidationFailed):
        return " ".join(m for msgs in e.fields.values() for m in msgs) or e.detail
    if isinstance(e, Unavailable):
        return f"{e.detail} Nothing was done; try again in a moment."
    return e.detail


@bp.post("/commands")
def commands() -> ResponseReturnValue:
    """The /valet slash command: answered within Slack's 3 seconds with an ephemeral message."""
    form = _verified_form()
    if form.get("ssl_check"):  # Slack checking the certificate: nothing to run, nobody to map
        return "", 200
    try:
        error = None
        try:
            command = parse(form.get("text", ""))
        except ValidationFailed as e:
            command, error = Command("help"), e
        refused = _sign_in(form.get("team_id", ""), form.get("user_id", ""), command.audit_action)
        if refused:
            return ephemeral(refused)
        if error is not None:
            return ephemeral(_refusal(error))
        return ephemeral(run(command, form.get("response_url", "")))
    except ValetKeyError as e:  # refusals were audited by the services that refused
        return ephemeral(_refusal(e))


@bp.post("/interactions")
def interactions() -> ResponseReturnValue:
    """Approve / Reject buttons on an approval request: decided as the person who pressed."""
    form = _verified_form()
    try:
        payload = json.loads(form.get("payload", ""))
        if not isinstance(payload, dict) or payload.get("type") != "block_actions":
            return "", 200  # shortcuts, modals: not used by this app
        action = payload["actions"][0]
        action_id, job_id = action["action_id"], str(action["value"])
        team_id, user_id = payload["team"]["id"], payload["user"]["id"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise ValidationFailed({"payload": ["not a block_actions payload with an Approve or Reject action"]}) \
            from None
    if action_id not in (APPROVE, REJECT):
        return "", 200
    verb = "approve" if action_id == APPROVE else "reject"
    answer = payload.get("response_url", "")
    try:
        refused = _sign_in(team_id, user_id, f"approval.{verb}")
        if not refused and not JOB_ID.fullmatch(job_id):
            raise NotFound(job_id)
        if not refused:
            container = payload.get("container") or {}
            if container.get("channel_id") and container.get("message_ts"):
                # The message pressed is the one to update, whoever posted it.
                _remember(job_id, container["channel_id"], container["message_ts"])
            decide(verb, job_id)
            return "", 200  # the worker updates the message with who decided (workers/notify.py)
    except NotFound:
        refused = f"No job {job_id[:32]!r}."
    except ValetKeyError as e:
        refused = _refusal(e)
    _tell(answer, refused)
    return "", 200


def _remember(job_id: str, channel: str, ts: str) -> None:
    try:
        remember_message(runtime().redis, job_id, channel, ts)
    except Exception:  # noqa: BLE001 - the decision matters; where its message is only helps
        log.warning("job %s: the pressed message could not be remembered", job_id[:32])


def _tell(response_url: str, text: str) -> None:
    """An ephemeral answer to the person who pressed (the request itself can carry none)."""
    if not response_url:
        return
    try:
        gate().api.respond(response_url, {"response_type": "ephemeral", "replace_original": False, "text": text})
    except Unavailable:
        log.warning("a refusal could not be shown in Slack")


def _document(app: Flask) -> None:
    """The two URLs in the OpenAPI document, as Slack calls them (form bodies, Slack's signature headers)."""
    api = app.extensions.get("valetkey_api")
    if api is None:
        return
    headers = [{"in": "header", "name": name, "required": True, "schema": {"type": "string"}, "description": d}
               for name, d in (("X-Slack-Signature", "v0=<hex HMAC-SHA256 of 'v0:<timestamp>:<raw body>'>"),
                               ("X-Slack-Request-Timestamp", "Unix seconds; at most 5 minutes from now"))]
    answer = {"200": {"description": "an ephemeral message for Slack", "content": {"application/json": {"schema": {
        "type": "object", "properties": {"response_type": {"type": "string"}, "text": {"type": "string"}}}}}}}
    form = {"type": "object", "properties": {k: {"type": "string"} for k in (
        "team_id", "user_id", "command", "text", "response_url", "channel_id")}}
    rules = {r.endpoint: r for r in app.url_map.iter_rules() if r.endpoint.startswith("slack.")}
    api.spec.path(rule=rules["slack.commands"], operations={"post": {
        "summary": "The /valet slash command (Slack app; 404 while VALETKEY_SLACK_SIGNING_SECRET is unset)",
        "tags": ["Slack"], "security": [], "parameters": headers,
        "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": form}}},
        "responses": answer}})
    api.spec.path(rule=rules["slack.interactions"], operations={"post": {
        "summary": "Approve / Reject buttons of an approval request (Slack app)",
        "tags": ["Slack"], "security": [], "parameters": headers,
        "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": {
            "type": "object", "properties": {"payload": {"type": "string"}}}}}},
        "responses": {"200": {"description": "received; the decision shows in Slack"}}}})


def init_app(app: Flask) -> None:
    rt = app.extensions["valetkey"]
    if rt.settings.slack_signing_secret:
        app.extensions[EXTENSION] = SlackGate(rt.settings.slack_signing_secret, SlackApi.from_settings(rt.settings,
                                                                                                        rt.redis))
    app.register_blueprint(bp)
    _document(app)
