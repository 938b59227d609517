"""A short-lived read cache shared by every web process, for the ECS reads that pages repeat.

Ten people looking at the same environment page make the same ListServices
and DescribeServices calls; within a couple of seconds the answers are the
same (ECS itself is eventually consistent by more than that). The cache sits
in botocore's events like the budget (``before-call`` answers from Redis,
``after-call`` stores a successful answer), keyed by account, Region and the
serialized request, so call sites stay plain boto3 and a cached answer costs
no AWS call and no budget token.

Only clients asked for with ``shared_reads=True`` (pages) get it: a worker
verifying a restart must see ECS now, not two seconds ago. Answers are stored
as JSON with tagged timestamps, never pickled (Redis content is not trusted
to run code). A Redis failure means no cache, never a failed call.

``ServiceAnswers`` (below) is the webhook existence check's own sharing: per
service name rather than per request, for its 10 s, so that one web process's
answer spares the others a DescribeServices whatever names it was asked with.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from botocore.awsrequest import AWSResponse

log = logging.getLogger("valetkey.aws.cache")

CACHED_READS = ("ListServices", "DescribeServices")
KEY_PREFIX = "valetkey:ecs-read:"
_DT = "__dt__"


def _encode(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        return {_DT: v.isoformat()}
    raise TypeError(f"not JSON: {type(v).__name__}")


def _decode(d: dict[str, Any]) -> Any:
    if len(d) == 1 and _DT in d:
        return dt.datetime.fromisoformat(d[_DT])
    return d


def dumps(v: Any) -> str:
    """JSON of an AWS answer, its timestamps tagged (never pickle: Redis content must not run code)."""
    return json.dumps(v, default=_encode, separators=(",", ":"))


def loads(raw: str | bytes) -> Any:
    return json.loads(raw, object_hook=_decode)


class SharedReadCache:
    def __init__(self, client: redis.Redis, ttl_seconds: float = 2.0) -> None:
        self.redis, self.ttl_ms = client, max(1, int(ttl_seconds * 1000))

    def instrument(self, ecs: Any, account: Callable[[], str]) -> None:
        """Answer ``CACHED_READS`` of this ECS client from the shared cache when fresh."""
        region = ecs.meta.region_name or "us-east-1"

        def before_call(model: Any, params: dict[str, Any], context: dict[str, Any], **_: Any) -> Any:
            body = params.get("body", b"")
            raw = body if isinstance(body, bytes) else str(body).encode()
            key = f"{KEY_PREFIX}{account()}:{region}:{model.name}:{hashlib.sha256(raw).hexdigest()}"
            context["valetkey_read_cache_key"] = key
            try:
                hit = self.redis.get(key)
            except (redis.RedisError, OSError) as e:
                log.debug("ECS read cache unavailable: %s", type(e).__name__)
                return None
            if hit is None:
                return None
            parsed = loads(hit)
            context["valetkey_read_cache_hit"] = True
            # botocore takes (http_response, parsed) from a before-call handler, as Stubber answers.
            return AWSResponse(None, 200, {}, None), parsed

        def after_call(http_response: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
            key = context.get("valetkey_read_cache_key")
            if key is None or context.get("valetkey_read_cache_hit") or int(http_response.status_code) >= 300:
                return
            try:
                self.redis.set(key, dumps(parsed), px=self.ttl_ms)
            except (redis.RedisError, OSError, TypeError, ValueError) as e:
                log.debug("ECS read cache not stored: %s", type(e).__name__)

        for op in CACHED_READS:
            ecs.meta.events.register(f"before-call.ecs.{op}", before_call)
            ecs.meta.events.register(f"after-call.ecs.{op}", after_call)


# ---- per-service answers of the webhook's existence check -----------------------------
SERVICE_KEY_PREFIX = "valetkey:ecs-service:"
# After a Redis failure the shared answers are skipped this long: redis-py retries a refused
# connection with backoff (seconds), which every lookup would otherwise pay while Redis is down.
SHARED_RETRY_AFTER = 5.0


class ServiceAnswers:
    """Found services of one cluster, per name, shared by every web process (Redis, JSON).

    The webhook's existence check (web/webhook_service.py ServiceCache) keeps
    an answer ``ttl`` seconds in its process; without this, each web process
    asks ECS again for every service the others have just read, and those
    first misses wait for budget tokens. Only a found ACTIVE service is
    stored, as the process cache does: a NotFound is asked again at once (a
    service created a moment ago must not be refused for the TTL), and an AWS
    error is never an answer. An entry holds the task definition and when it
    was read from ECS (``at``, wall clock, as processes' monotonic clocks do
    not compare); it is fresh while ``now - at < ttl`` and Redis drops it by
    then (PX). A Redis failure is a miss and a lost write, never an error,
    and Redis is left alone for a few seconds after one.
    """

    def __init__(self, client: redis.Redis, account: Callable[[], str], region: str, cluster: str,
                 role: str | None = None, ttl: float = 10.0, clock: Callable[[], float] = time.time) -> None:
        self.redis, self.account, self.ttl, self.clock = client, account, ttl, clock
        # The role is part of the key: another role in the same account may see (or be allowed) less.
        self._where = f"{region}:{cluster}:{role or '-'}"
        self._skip_until = 0.0  # time.monotonic() before which Redis is not tried (it just failed)

    def _failed(self, e: Exception, what: str) -> None:
        log.debug("shared service answers %s: %s", what, type(e).__name__)
        self._skip_until = time.monotonic() + SHARED_RETRY_AFTER

    def _key(self, name: str) -> str:
        return f"{SERVICE_KEY_PREFIX}{self.account()}:{self._where}:{name}"

    def get_many(self, names: list[str]) -> dict[str, tuple[str, float]]:
        """Fresh answers of ``names`` in one round trip: name -> (task definition ARN, age in seconds)."""
        if not names or time.monotonic() < self._skip_until:
            return {}
        try:
            raw = self.redis.mget([self._key(n) for n in names])
        except (redis.RedisError, OSError) as e:
            self._failed(e, "unavailable")
            return {}
        now, out = self.clock(), {}
        for name, value in zip(names, raw):
            if value is None:
                continue
            try:
                entry = loads(value)
                td, at = entry["td"], float(entry["at"])
            except (ValueError, TypeError, KeyError) as e:  # not ours, or an older shape: a miss
                log.debug("shared service answer unreadable: %s", type(e).__name__)
                continue
            age = max(0.0, now - at)  # another host's clock may run a little ahead
            if isinstance(td, str) and age < self.ttl:
                out[name] = (td, age)
        return out

    def put_many(self, found: dict[str, str], at: float) -> None:
        """Store name -> task definition ARN, read from ECS at ``at`` (this clock), for what is left of the TTL."""
        left_ms = int((self.ttl - max(0.0, self.clock() - at)) * 1000)
        if not found or left_ms <= 0 or time.monotonic() < self._skip_until:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for name, td in found.items():
                pipe.set(self._key(name), dumps({"td": td, "at": at}), px=left_ms)
            pipe.execute()
        except (redis.RedisError, OSError) as e:
            self._failed(e, "not stored")
