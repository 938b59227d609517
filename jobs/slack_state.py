"""Where a job's Slack conversation lives, kept in Redis: the ``response_url`` of the command that
started it (a secret; it expires with Slack's own 30 minutes) and the channel message of its approval
request (updated once it is decided, and the thread its outcome is posted in)."""
from __future__ import annotations

import json
import logging

import redis

log = logging.getLogger(__name__)
REPLY_TTL = 30 * 60  # Slack accepts a response_url for 30 minutes
MESSAGE_TTL = 24 * 3600


def _reply_key(job_id: str) -> str:
    return f"valetkey:slack:reply:{job_id}"


def _message_key(job_id: str) -> str:
    return f"valetkey:slack:message:{job_id}"


def remember_reply(r: redis.Redis, job_id: str, response_url: str) -> None:
    try:
        r.set(_reply_key(job_id), response_url, ex=REPLY_TTL)
    except redis.RedisError:  # the acknowledgement still tells them where to watch the job
        log.warning("job %s: its Slack reply address could not be kept", job_id)


def reply_url(r: redis.Redis, job_id: str) -> str | None:
    v = r.get(_reply_key(job_id))
    if not v:
        return None
    return v.decode() if isinstance(v, bytes) else str(v)


def remember_message(r: redis.Redis, job_id: str, channel: str, ts: str) -> None:
    r.set(_message_key(job_id), json.dumps({"channel": channel, "ts": ts}), ex=MESSAGE_TTL)


def message_of(r: redis.Redis, job_id: str) -> tuple[str, str] | None:
    v = r.get(_message_key(job_id))
    if not v:
        return None
    d = json.loads(v)
    return str(d["channel"]), str(d["ts"])
