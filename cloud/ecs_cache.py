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
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
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
