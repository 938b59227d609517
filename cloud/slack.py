"""The Slack Web API (slack-sdk's WebClient) as Valet Key uses it: who a Slack user is, and posting messages.

``VALETKEY_SLACK_API_URL`` is the client's base URL (tests point it at a local
stand-in). The bot token and a command's ``response_url`` are secrets: they are
never logged (slack-sdk logs requests at DEBUG only; its logger is ours and
kept at WARNING) and never put into errors, pages or audit entries.
"""
from __future__ import annotations

import logging
from typing import Any

import redis
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web import WebClient
from slack_sdk.webhook import WebhookClient

from scope.errors import Unavailable
from scope.settings import Settings

log = logging.getLogger(__name__)
_QUIET = logging.getLogger("valetkey.slack_sdk")
_QUIET.setLevel(logging.WARNING)
EMAIL_TTL = 300  # seconds: who a Slack user is, cached briefly (a changed e-mail counts within minutes)
TIMEOUT = 5
_NO_EMAIL = "-"  # cached answer "Slack knows no (active) person with an e-mail under this id"


class SlackUnavailable(Unavailable):
    title = "Slack unavailable"


def _failed(doing: str, e: Exception) -> SlackUnavailable:
    # The Slack error code ("channel_not_found", "ratelimited") says what went wrong and holds no secret.
    code = e.response.get("error", "") if isinstance(e, SlackApiError) else type(e).__name__
    return SlackUnavailable(f"Slack could not {doing} right now ({code}).")


class SlackApi:
    """Slack Web API calls with the bot token; ``cache`` is Valet Key's Redis (e-mail look-ups)."""

    def __init__(self, client: WebClient, cache: redis.Redis, email_ttl: int = EMAIL_TTL) -> None:
        self.client, self.cache, self.email_ttl = client, cache, email_ttl

    @classmethod
    def from_settings(cls, settings: Settings, cache: redis.Redis) -> "SlackApi":
        client = WebClient(token=settings.slack_bot_token, base_url=settings.slack_api_url, timeout=TIMEOUT,
                           logger=_QUIET)
        return cls(client, cache)

    def email_of(self, team_id: str, user_id: str) -> str | None:
        """The e-mail Slack reports for an active (not deleted, not a bot) user; None if none (cached)."""
        key = f"valetkey:slack:email:{team_id}:{user_id}"
        try:
            cached = self.cache.get(key)
        except redis.RedisError:
            cached = None
        if cached is not None:
            value = cached.decode() if isinstance(cached, bytes) else str(cached)
            return None if value == _NO_EMAIL else value
        try:
            user = self.client.users_info(user=user_id)["user"]
        except SlackApiError as e:
            if e.response.get("error") in ("user_not_found", "user_not_visible"):
                user = {}
            else:
                raise _failed("say who you are", e) from e
        except (SlackClientError, OSError) as e:
            raise _failed("say who you are", e) from e
        email = (user.get("profile") or {}).get("email") or ""
        if user.get("deleted") or user.get("is_bot") or "@" not in email:
            email = ""
        try:
            self.cache.set(key, email.lower() or _NO_EMAIL, ex=self.email_ttl)
        except redis.RedisError:
            log.warning("the Slack e-mail cache is unavailable; asking Slack each time")
        return email.lower() or None

    def post(self, channel: str, text: str, blocks: list[dict[str, Any]] | None = None,
             thread_ts: str | None = None) -> tuple[str, str]:
        """Post a message; returns (channel id, message ts) for later updates or replies."""
        try:
            r = self.client.chat_postMessage(channel=channel, text=text, blocks=blocks, thread_ts=thread_ts)
        except (SlackClientError, OSError) as e:
            raise _failed("post a message", e) from e
        return str(r["channel"]), str(r["ts"])

    def update(self, channel: str, ts: str, text: str, blocks: list[dict[str, Any]] | None = None) -> None:
        try:
            self.client.chat_update(channel=channel, ts=ts, text=text, blocks=blocks or [])
        except (SlackClientError, OSError) as e:
            raise _failed("update a message", e) from e

    def respond(self, response_url: str, body: dict[str, Any]) -> None:
        """Answer through a command's or a button's ``response_url`` (valid 30 minutes, 5 times)."""
        try:
            r = WebhookClient(response_url, timeout=TIMEOUT, logger=_QUIET).send_dict(body)
        except (SlackClientError, OSError) as e:
            raise _failed("answer you", e) from e
        if r.status_code >= 400:
            raise SlackUnavailable(f"Slack refused the answer ({r.status_code}).")
