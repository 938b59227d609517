"""The AWS call budget: Valet Key's share of each ECS/CloudWatch Logs throttling budget, shared by every process.

AWS throttles ECS per account and Region with token buckets per category of
API (ECS API Reference, "Request throttling"), and FilterLogEvents with a
per-Region TPS quota (CloudWatch Logs quotas). CI, the console and monitoring
draw from the same buckets, so Valet Key keeps itself to a configured
``share`` of each: one token bucket per (account, Region, category) in Redis,
refilled and taken atomically by one Lua script, so every web process, worker
and scheduler sees the same bucket.

A call that finds the bucket empty *reserves* the next token (the bucket goes
below zero) and sleeps until its turn: callers are served in arrival order and
never faster than the refill rate. When the turn is further away than
``max_wait`` the call is not made and ``BudgetExceeded`` is raised instead: a
ClientError with the code ``Throttling``, so every call site handles it as it
handles AWS' own throttling (cloud.errors classifies it as transient: a job is
retried later, a page answers 503 with Retry-After, never a failure).

The budget is applied per HTTP attempt (botocore's ``before-send`` event), so
botocore's own retries of an AWS ThrottlingException draw tokens too. The
same hooks count the calls and throttles per API in Redis hashes (HINCRBY),
which ``GET /metrics`` reads: counters kept in one process would show only the
web process's calls, never the workers'. A call that takes a token is counted
by the bucket's own script, in the same round trip. A call that needs no token
(share 0, or an API without a bucket) is counted in the process and the counts
are added to Redis in one round trip at most ``FLUSH_SECONDS`` later: a Redis
round trip per such call cost a job step about a tenth of its CPU. Counts Redis
does not take are kept and added later; a flush never fails a call.

If Redis does not answer, each process falls back to a bucket of its own (same
share) and says so in the log; the budget never fails a call because Redis is
down. Redis is tried again after ``REDIS_RETRY_SECONDS``.
"""
from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
import weakref
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import redis
from botocore.exceptions import ClientError

from cloud.errors import THROTTLING_CODES

log = logging.getLogger("valetkey.aws.budget")

# category -> (burst, refill per second), per account and Region (ECS API Reference, "Request throttling").
# ecssim keeps its own copy on purpose: the simulator models AWS independently of the product's beliefs.
ECS_BUCKETS: dict[str, tuple[float, float]] = {
    "ecs-service-read": (100, 20),
    "ecs-cluster-resource-read": (100, 20),
    "ecs-cluster-resource-modify": (100, 40),
    "ecs-service-modify": (50, 5),
    "ecs-task-definition-read": (50, 20),
    "ecs-service-deployment-read": (50, 20),
}
ECS_CATEGORY: dict[str, str] = {
    "DescribeServices": "ecs-service-read", "ListServices": "ecs-service-read",
    "DescribeTasks": "ecs-cluster-resource-read", "ListTasks": "ecs-cluster-resource-read",
    "RunTask": "ecs-cluster-resource-modify", "StopTask": "ecs-cluster-resource-modify",
    "UpdateService": "ecs-service-modify", "CreateService": "ecs-service-modify",
    "DeleteService": "ecs-service-modify",
    "DescribeTaskDefinition": "ecs-task-definition-read",
    "DescribeServiceDeployments": "ecs-service-deployment-read",
    "ListServiceDeployments": "ecs-service-deployment-read",
    "DescribeServiceRevisions": "ecs-service-deployment-read",
}
# FilterLogEvents transactions per second, per account and Region (CloudWatch Logs quotas; not adjustable).
FILTER_LOG_EVENTS_TPS: dict[str, float] = {
    "us-east-1": 25, "ap-northeast-3": 5, "ap-southeast-3": 5, "ca-west-1": 5, "eu-central-1": 5,
    "il-central-1": 5,
}
FILTER_LOG_EVENTS_DEFAULT_TPS = 10.0
LOGS_BUCKET = "logs-filter-log-events"

KEY_PREFIX = "valetkey:budget:"
BUCKETS_INDEX = "valetkey:budget:buckets"  # a set of the bucket keys, for /metrics
CALLS_KEY = "valetkey:metrics:aws_calls"  # hash "service:Api" -> HTTP attempts sent
THROTTLES_KEY = "valetkey:metrics:aws_throttles"  # hash "service:Api" -> ThrottlingException answers
REFUSALS_KEY = "valetkey:metrics:aws_budget_refusals"  # hash bucket -> calls not made (wait too long)
BUCKET_TTL_SECONDS = 3600  # an idle bucket is full again long before this; expiring it keeps Redis tidy
REDIS_RETRY_SECONDS = 10.0
# How long a count of a call that took no token may wait in the process before it is in Redis
# (what /metrics shows lags the calls by at most this, and by one more try while Redis is down).
FLUSH_SECONDS = 1.0

# Atomic take-with-refill (reservation). KEYS: bucket, calls hash, refusals hash, bucket index.
# ARGV: burst, rate, max_wait, now ("" = the Redis server's clock), calls field, ttl, bucket name.
# Returns {granted (1/0), seconds to wait, tokens left} (floats as strings: Lua numbers
# would be truncated to integers on the way back).
TAKE_SCRIPT = """
local burst, rate, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = tonumber(ARGV[4])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(b[1]), tonumber(b[2])
if tokens == nil or ts == nil then tokens, ts = burst, now end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
  ts = now
end
local wait = 0
if tokens < 1 then wait = (1 - tokens) / rate end
if wait > max_wait + 1e-6 then
  redis.call('HINCRBY', KEYS[3], ARGV[7], 1)
  return {0, tostring(wait), tostring(tokens)}
end
tokens = tokens - 1
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts), 'burst', ARGV[1], 'rate', ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
redis.call('SADD', KEYS[4], KEYS[1])
redis.call('HINCRBY', KEYS[2], ARGV[5], 1)
return {1, tostring(wait), tostring(tokens)}
"""


@dataclass(frozen=True)
class Limit:
    bucket: str  # the category, e.g. "ecs-service-read"
    burst: float  # AWS' full numbers; the budget applies its share
    rate: float


def aws_limit(service: str, api: str, region: str) -> Limit | None:
    """AWS' throttling bucket for an API (``service`` as botocore's hyphenized service id), or None."""
    if service == "ecs":
        category = ECS_CATEGORY.get(api)
        if category is None:
            return None
        burst, rate = ECS_BUCKETS[category]
        return Limit(category, burst, rate)
    if service == "cloudwatch-logs" and api == "FilterLogEvents":
        tps = FILTER_LOG_EVENTS_TPS.get(region, FILTER_LOG_EVENTS_DEFAULT_TPS)
        return Limit(LOGS_BUCKET, tps, tps)  # a TPS quota: one second's worth of burst
    return None


class BudgetExceeded(ClientError):
    """Valet Key's share of an AWS throttling budget is spent for longer than a call may wait.

    A ClientError with code ``Throttling``: every call site already treats AWS'
    own throttling as transient (retry the job later; 503 with Retry-After on a page).
    """

    def __init__(self, service: str, api: str, bucket: str, region: str, wait: float) -> None:
        self.bucket, self.region, self.wait = bucket, region, wait
        super().__init__({"Error": {"Code": "Throttling",
                                    "Message": f"Valet Key's share of the {bucket} budget in {region} is spent; "
                                               f"next call possible in {wait:.1f}s"},
                          "ResponseMetadata": {"HTTPStatusCode": 429}}, api)


class _LocalBucket:
    """The per-process fallback: the same reservation arithmetic as TAKE_SCRIPT, under a lock."""

    def __init__(self, burst: float, rate: float, now: float) -> None:
        self.burst, self.rate, self.tokens, self.ts = burst, rate, burst, now
        self.lock = threading.Lock()

    def take(self, now: float, max_wait: float) -> tuple[bool, float, float]:
        with self.lock:
            if now > self.ts:
                self.tokens = min(self.burst, self.tokens + (now - self.ts) * self.rate)
                self.ts = now
            wait = (1 - self.tokens) / self.rate if self.tokens < 1 else 0.0
            if wait > max_wait + 1e-6:  # as TAKE_SCRIPT: float dust is not a wait
                return False, wait, self.tokens
            self.tokens -= 1
            return True, wait, self.tokens


class CallBudget:
    """Token buckets per (account, Region, category) in Redis, holding ``share`` of AWS' limits.

    ``share`` 0 turns the budget off; calls are still counted.
    ``clock`` is None in production: Redis' own clock then times the buckets,
    so hosts with skewed clocks still agree. Tests pass a fake clock and sleep.
    """

    def __init__(self, client: redis.Redis | None, *, share: float = 0.5, max_wait: float = 3.0,
                 clock: Callable[[], float] | None = None, sleep: Callable[[float], None] = time.sleep,
                 flush_seconds: float = FLUSH_SECONDS) -> None:
        if not 0 <= share <= 1:
            raise ValueError("share must be in [0, 1]")
        self.redis, self.share, self.max_wait = client, share, max_wait
        self._clock, self._sleep = clock, sleep
        self._script = client.register_script(TAKE_SCRIPT) if client is not None else None
        self._local: dict[str, _LocalBucket] = {}
        self._local_lock = threading.Lock()
        self._redis_down_until = 0.0
        # Counts not yet in Redis: (hash key, field) -> calls. A timer (at most one pending) flushes them.
        self.flush_seconds = flush_seconds
        self._pending: dict[tuple[str, str], int] = {}
        self._pending_lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._flush_lock = threading.Lock()  # one flush at a time: a batch is either in Redis or back in _pending
        if client is not None:
            # A process that exits between two flushes still hands its last counts to Redis.
            atexit.register(_flush_at_exit, weakref.ref(self))
            # A forked child (gunicorn workers) starts with no timer thread: it counts its own calls.
            os.register_at_fork(after_in_child=partial(_forget_in_child, weakref.ref(self)))

    # ---- the bucket ----------------------------------------------------------------
    def shares(self, limit: Limit) -> tuple[float, float]:
        """Burst and refill rate of Valet Key's share (a burst of at least one call)."""
        return max(1.0, limit.burst * self.share), limit.rate * self.share

    def acquire(self, account: str, region: str, service: str, api: str) -> float:
        """Wait for a token for one call; returns the seconds waited. Raises BudgetExceeded."""
        limit = aws_limit(service, api, region) if self.share > 0 else None
        if limit is None:  # no token to take: counted in the process, flushed later
            self.count(CALLS_KEY, f"{service}:{api}")
            return 0.0
        burst, rate = self.shares(limit)
        key = f"{KEY_PREFIX}{account}:{region}:{limit.bucket}"
        granted, wait = self._take(key, burst, rate, f"{service}:{api}", limit.bucket)
        if not granted:
            raise BudgetExceeded(service, api, limit.bucket, region, wait)
        if wait > 0:
            self._sleep(wait)
        return wait

    def _take(self, key: str, burst: float, rate: float, field: str, bucket: str) -> tuple[bool, float]:
        if self._script is not None and self._redis_usable():
            now = "" if self._clock is None else repr(self._clock())
            try:
                reply: Any = self._script(keys=[key, CALLS_KEY, REFUSALS_KEY, BUCKETS_INDEX],
                                          args=[repr(burst), repr(rate), repr(self.max_wait), now, field,
                                                BUCKET_TTL_SECONDS, bucket])
                return bool(int(reply[0])), float(reply[1])
            except (redis.RedisError, OSError) as e:
                self._redis_failed(e)
        now_f = self._clock() if self._clock is not None else time.monotonic()
        with self._local_lock:
            b = self._local.get(key)
            if b is None:
                b = self._local[key] = _LocalBucket(burst, rate, now_f)
        granted, wait, _ = b.take(now_f, self.max_wait)
        # What the script would have counted, kept in the process until Redis takes it.
        if granted:
            self.count(CALLS_KEY, field)
        else:
            self.count(REFUSALS_KEY, bucket)
        return granted, wait

    def _redis_usable(self) -> bool:
        return time.monotonic() >= self._redis_down_until

    def _redis_failed(self, e: BaseException) -> None:
        first = self._redis_down_until == 0.0 or time.monotonic() >= self._redis_down_until + REDIS_RETRY_SECONDS
        self._redis_down_until = time.monotonic() + REDIS_RETRY_SECONDS
        if first:
            log.warning("AWS call budget: Redis unavailable (%s); using a per-process budget, retrying Redis "
                        "in %.0fs", type(e).__name__, REDIS_RETRY_SECONDS)

    # ---- counters --------------------------------------------------------------------
    def count(self, key: str, field: str, n: int = 1) -> None:
        """Add ``n`` to a metrics counter (a Redis hash field): kept in the process, in Redis within
        ``flush_seconds`` (later while Redis is down; never an error)."""
        if self.redis is None:
            return
        k = (key, field)
        with self._pending_lock:
            self._pending[k] = self._pending.get(k, 0) + n
            if self._timer is None:
                self._schedule(self.flush_seconds)

    def _schedule(self, seconds: float) -> None:
        # Under _pending_lock. A daemon thread: an exiting process is not held up (atexit flushes).
        t = self._timer = threading.Timer(seconds, self._on_timer)
        t.daemon = True
        t.start()

    def _on_timer(self) -> None:
        with self._pending_lock:
            self._timer = None
        self.flush()

    def flush(self) -> bool:
        """Add the counts kept in the process to Redis in one round trip (MULTI/EXEC: all or none).

        True when nothing is left pending. While Redis is down (or fails now) the counts stay
        pending, to be added at a later flush; no count is dropped and nothing is raised."""
        if self.redis is None:
            return True
        with self._flush_lock:
            with self._pending_lock:
                batch, self._pending = self._pending, {}
            if not batch:
                return True
            if self._redis_usable():
                try:
                    pipe = self.redis.pipeline(transaction=True)
                    for (key, field), n in batch.items():
                        pipe.hincrby(key, field, n)
                    pipe.execute()
                    return True
                except (redis.RedisError, OSError) as e:
                    self._redis_failed(e)
            with self._pending_lock:  # not in Redis: back with the counts taken meanwhile
                for k, n in batch.items():
                    self._pending[k] = self._pending.get(k, 0) + n
                if self._timer is None:
                    self._schedule(max(self.flush_seconds, self._redis_down_until - time.monotonic()))
            return False

    def close(self) -> None:
        """Flush the pending counts and close the Redis connection (a process shutting down)."""
        with self._pending_lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self.flush()
        if self.redis is not None:
            self.redis.close()

    # ---- botocore hooks -------------------------------------------------------------
    def instrument(self, client: Any, account: Callable[[], str]) -> None:
        """Budget and count every HTTP attempt of ``client`` (a boto3 client), without touching call sites."""
        service = client.meta.service_model.service_id.hyphenize()
        region = client.meta.region_name or "us-east-1"

        def before_send(event_name: str, **_: Any) -> None:
            self.acquire(account(), region, service, event_name.rsplit(".", 1)[-1])

        def response_received(event_name: str, parsed_response: Any = None, exception: Any = None,
                              **_: Any) -> None:
            if exception is not None or not isinstance(parsed_response, dict):
                return  # not sent (our own refusal) or no answer: nothing AWS throttled
            code = parsed_response.get("Error", {}).get("Code")
            if code in THROTTLING_CODES:
                self.count(THROTTLES_KEY, f"{service}:{event_name.rsplit('.', 1)[-1]}")

        client.meta.events.register(f"before-send.{service}", before_send)
        client.meta.events.register(f"response-received.{service}", response_received)


def _forget_in_child(ref: "weakref.ref[CallBudget]") -> None:
    budget = ref()
    if budget is not None:  # the parent adds its own pending counts; the timer thread was not forked
        budget._pending, budget._timer = {}, None  # noqa: SLF001 - its own state, reset after fork
        budget._pending_lock, budget._flush_lock = threading.Lock(), threading.Lock()  # noqa: SLF001


def _flush_at_exit(ref: "weakref.ref[CallBudget]") -> None:
    budget = ref()
    if budget is not None:
        try:
            budget.flush()
        except Exception:  # noqa: BLE001 - at exit: a count is not worth a traceback
            pass


# ---- reading, for /metrics ------------------------------------------------------------------
@dataclass(frozen=True)
class BucketLevel:
    account: str
    region: str
    bucket: str
    tokens: float  # now, after refill; below zero while callers wait for reserved turns
    burst: float


def _hash_ints(client: redis.Redis, key: str) -> dict[str, int]:
    raw: Any = client.hgetall(key)
    return {(k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in raw.items()}


def call_counters(client: redis.Redis) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """(calls, throttles) by "service:Api", and refusals by bucket, as counted by every process."""
    return _hash_ints(client, CALLS_KEY), _hash_ints(client, THROTTLES_KEY), _hash_ints(client, REFUSALS_KEY)


def bucket_levels(client: redis.Redis, now: float | None = None) -> list[BucketLevel]:
    """Tokens left in every shared bucket, refilled to ``now`` (default: the Redis server's clock)."""
    keys: Any = client.smembers(BUCKETS_INDEX)
    names = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in keys)
    if not names:
        return []
    pipe = client.pipeline(transaction=False)
    pipe.time()
    for k in names:
        pipe.hmget(k, "tokens", "ts", "burst", "rate")
    replies: list[Any] = pipe.execute()
    if now is None:
        secs, micros = replies[0]
        now = float(secs) + float(micros) / 1e6
    out, gone = [], []
    for k, (tokens, ts, burst, rate) in zip(names, replies[1:]):
        if tokens is None or ts is None or burst is None or rate is None:
            gone.append(k)  # expired while idle: the index forgets it
            continue
        t, b = float(tokens), float(burst)
        level = min(b, t + max(0.0, now - float(ts)) * float(rate))
        account, region, bucket = k[len(KEY_PREFIX):].split(":", 2)
        out.append(BucketLevel(account, region, bucket, level if math.isfinite(level) else 0.0, b))
    if gone:
        client.srem(BUCKETS_INDEX, *gone)
    return out
