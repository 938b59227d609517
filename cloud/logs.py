"""Service logs from CloudWatch: where they are, history by time range and filter, and a live tail.

Where: the log group and stream prefix come from the service's current task
definition (the main container's ``awslogs`` options); users never type a
log group, so nobody can point Valet Key at a group that is not the service's.

History and tail are one operation, ``FilterLogEvents`` from a position. The
position (the opaque ``cursor``) is designed for the awslogs driver, which
sends each task's stream in batches every few seconds: an event of task A may
become visible *after* a newer event of task B was already shown. A single
"last timestamp" cursor (as ``aws logs tail`` keeps) would skip such events,
so every poll re-reads a short look-back window and skips what was already
returned *per stream*: within one stream events arrive in order, so
(last timestamp, how many at it) per stream identifies exactly what was seen.

CloudWatch allows only a few FilterLogEvents calls per second per account:
identical calls are shared through a short-lived Redis cache with a lock
(one caller fills, the others wait for its answer), so every web process and
thread share them; throttling is retried a bounded number of times and a
persisting throttle is a 503 with Retry-After, never a 500.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import random
import re
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping

import redis
from botocore.exceptions import ClientError
from itsdangerous import BadData, URLSafeSerializer

from cloud.ecs import EcsReader, active
from cloud.errors import AWS_ERRORS, AwsError, aws_error
from cloud.task_definitions import main_container_logs, short_td
from scope.errors import (
    NotFound,
    Unavailable,
    UpstreamError,
    ValetKeyError,
    ValidationFailed,
)
from scope.times import iso, parse_instant

if TYPE_CHECKING:
    from mypy_boto3_logs import CloudWatchLogsClient

log = logging.getLogger("valetkey.logs")

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_FILTER = 1024  # CloudWatch's own limit for a filter pattern
MAX_CURSOR = 4096
DEFAULT_SINCE = "15m"
# awslogs flushes every 5 s; CloudWatch makes events searchable within
# seconds. Events arriving later than this after their timestamp show up in
# history, not in a running tail.
LOOKBACK_MS = 15_000
# The tail's look-back start is rounded down to this, so that polls of many
# browsers within the same quantum make the identical AWS call (and share it).
QUANTUM_MS = 2_000
AWS_PAGE = 2_500  # events per FilterLogEvents call; fixed so identical calls stay identical
MAX_CALLS = 4  # FilterLogEvents calls per request; beyond, the cursor continues the scan
MAX_MARKS = 48  # streams remembered in a cursor (keeps it well under URL limits)
CACHE_PREFIX = "valetkey:logs:"


class LogsNotReadable(ValetKeyError):
    """The service's logs are not somewhere Valet Key can read (another log driver, no prefix...)."""

    status, title = 422, "Logs not readable"


class LogsThrottled(Unavailable):
    """CloudWatch Logs kept throttling after our retries: the caller should come back shortly."""

    title = "CloudWatch Logs is busy"

    def __init__(self, detail: str = "", retry_after: int = 5) -> None:
        super().__init__(detail or ("CloudWatch Logs is throttling log searches (too many at once); "
                                    f"try again in {retry_after} seconds."), retry_after=retry_after)
        self.retry_after = retry_after


# ---- where the logs are --------------------------------------------------------
@dataclass(frozen=True)
class LogSource:
    group: str
    stream_prefix: str  # "<awslogs-stream-prefix>/<container name>/", as the awslogs driver names streams
    container: str


def log_source(service: str, task_definition: Mapping[str, Any], region: str) -> LogSource:
    """The awslogs location of the service's main container (the one whose image the UI shows)."""
    main = main_container_logs(task_definition)
    td = short_td(str(task_definition.get("taskDefinitionArn", ""))) or "its task definition"
    if main is None:
        raise LogsNotReadable(f"{service}: {td} has no containers, so it has no logs.")
    if not main.driver:
        raise LogsNotReadable(f"{service} has no log configuration in {td}; Valet Key can only read awslogs.")
    if not main.awslogs:
        raise LogsNotReadable(f"{service} logs with the {main.driver!r} driver; Valet Key can only read awslogs.")
    if not main.group:
        raise LogsNotReadable(f"{service}: {td} sets no awslogs-group.")
    if not main.prefix:
        # Without a prefix, streams are named by container id and cannot be told
        # apart from other services' streams in a shared group: refuse rather than
        # risk showing someone else's logs.
        raise LogsNotReadable(f"{service}: {td} sets no awslogs-stream-prefix, so its streams cannot be told "
                              "apart from other services'; add one to read its logs here.")
    log_region = main.region or region
    if log_region != region:
        raise LogsNotReadable(f"{service} logs to region {log_region}, this environment is in {region}; "
                              "Valet Key reads logs in the environment's region only.")
    return LogSource(group=main.group, stream_prefix=main.stream_prefix, container=main.container)


# ---- query parameters -----------------------------------------------------------
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def parse_time(value: str, now: dt.datetime) -> int:
    """ISO 8601 (naive means UTC), ``now``, or an age before now (scope/times.py's grammar); ms."""
    ms = int(parse_instant(value, now).timestamp() * 1000)
    if ms < 0:
        raise ValueError("before 1970")
    return ms


@dataclass(frozen=True)
class LogQuery:
    since: int  # ms, inclusive
    until: int | None  # ms, inclusive; None: open (a tail)
    pattern: str
    limit: int
    cursor: str | None

    @classmethod
    def parse(cls, args: Mapping[str, Any], now: dt.datetime | None = None) -> "LogQuery":
        """Validate the query; every bad field is named in one ValidationFailed (400)."""
        # Relative times resolve against whole seconds so that requests within the
        # same second ask AWS the same question (and share the answer).
        now = (now or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0)
        errors: dict[str, list[str]] = {}
        times: dict[str, int | None] = {"since": None, "until": None}
        for name in times:
            raw = args.get(name)
            raw = (DEFAULT_SINCE if name == "since" else None) if raw in (None, "") else str(raw)
            if raw is None:
                continue
            try:
                times[name] = parse_time(raw, now)
            except ValueError as e:
                errors[name] = [str(e)]
        since, until = times["since"], times["until"]
        if since is not None and until is not None and until <= since:
            errors["until"] = ["must be later than since"]
        pattern = str(args.get("filter") or "")
        if len(pattern) > MAX_FILTER:
            errors["filter"] = [f"at most {MAX_FILTER} characters"]
        elif _CONTROL.search(pattern):
            errors["filter"] = ["must be a single line without control characters"]
        raw_limit = args.get("limit")
        limit = DEFAULT_LIMIT
        if raw_limit not in (None, ""):
            try:
                limit = int(raw_limit)
                if not 1 <= limit <= MAX_LIMIT:
                    raise ValueError
            except (TypeError, ValueError):
                errors["limit"] = [f"must be an integer from 1 to {MAX_LIMIT}"]
        cursor = args.get("cursor") or None
        if cursor is not None and (not isinstance(cursor, str) or len(cursor) > MAX_CURSOR):
            errors["cursor"] = ["not a cursor returned by this API"]
        if errors:
            raise ValidationFailed(errors)
        assert since is not None
        return cls(since=since, until=until, pattern=pattern.strip(), limit=limit, cursor=cursor)


# ---- the position (cursor) --------------------------------------------------------
def stream_key(stream: str) -> str:
    """A short, stable name of a log stream for the cursor (stream names are long)."""
    return base64.urlsafe_b64encode(hashlib.blake2b(stream.encode(), digest_size=6).digest()).decode()


@dataclass(frozen=True)
class Position:
    """Where a reader continues. See the module docstring for why marks are per stream."""

    floor: int  # never read before this (the ``since`` of the first request)
    scanned: int  # every event visible with a timestamp below this was returned
    marks: dict[str, tuple[int, int]] = field(default_factory=dict)  # stream -> (last ts returned, how many at it)
    token: str | None = None  # AWS nextToken of an interrupted scan (everything before it was returned)
    token_start: int | None = None  # the startTime that token belongs to


class CursorCodec:
    """Cursors are signed JSON (itsdangerous), versioned and bound to one service and filter pattern."""

    VERSION = 1

    def __init__(self, secret: str) -> None:
        self._s = URLSafeSerializer(secret, salt="valetkey.logs.cursor")

    @staticmethod
    def binding(environment: str, service: str, pattern: str) -> str:
        raw = json.dumps([environment, service, pattern]).encode()
        return base64.urlsafe_b64encode(hashlib.blake2b(raw, digest_size=9).digest()).decode()

    def encode(self, pos: Position, binding: str) -> str:
        body: dict[str, Any] = {"v": self.VERSION, "q": binding, "f": pos.floor, "t": pos.scanned,
                                # timestamps relative to ``scanned`` keep the cursor short
                                "m": {k: [pos.scanned - ts, n] for k, (ts, n) in sorted(pos.marks.items())}}
        if pos.token:
            body["k"], body["s"] = pos.token, pos.token_start
        return str(self._s.dumps(body))

    def decode(self, cursor: str, binding: str) -> Position:
        bad = ValidationFailed({"cursor": ["not a cursor returned by this API; start again without it"]})
        try:
            body = self._s.loads(cursor)
        except (BadData, ValueError, UnicodeDecodeError):
            raise bad from None
        try:
            if not isinstance(body, dict) or body.get("v") != self.VERSION:
                raise bad
            if body.get("q") != binding:
                raise ValidationFailed({"cursor": ["belongs to another service or filter pattern; "
                                                   "start again without it"]})
            scanned = int(body["t"])
            marks = {str(k): (scanned - int(d), int(n)) for k, (d, n) in dict(body.get("m", {})).items()}
            token = body.get("k")
            return Position(floor=int(body["f"]), scanned=scanned, marks=marks,
                            token=str(token) if token else None,
                            token_start=int(body["s"]) if token else None)
        except ValidationFailed:
            raise
        except (KeyError, TypeError, ValueError):
            raise bad from None


# ---- sharing identical AWS answers -------------------------------------------------
class SharedCache:
    """A Redis cache with a fill lock: one caller computes, identical callers wait for its answer.

    Redis rather than a per-process single-flight because gunicorn runs several
    processes and a tail is polled by many browsers: only a shared cache keeps
    the account-wide FilterLogEvents rate down. A Redis failure degrades to
    computing directly (the cache is an optimisation, not a guarantee).
    """

    def __init__(self, client: redis.Redis, prefix: str = CACHE_PREFIX, wait: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.r, self.prefix, self.wait, self.sleep = client, prefix, wait, sleep

    def _key(self, key: str) -> str:
        return self.prefix + hashlib.sha256(key.encode()).hexdigest()

    def _get(self, k: str) -> dict[str, Any] | None:
        raw = self.r.get(k)
        return json.loads(raw) if raw else None

    def get_or_compute(self, key: str, ttl_ms: int, compute: Callable[[], dict[str, Any]],
                       usable: Callable[[dict[str, Any]], bool] = lambda _: True) -> dict[str, Any]:
        """The cached value of ``key`` if ``usable``, else one computed once for all identical callers."""
        k = self._key(key)
        try:
            hit = self._get(k)
            if hit is not None and usable(hit):
                return hit
            lock = self.r.lock(k + ":fill", timeout=60, blocking=False)
            if not lock.acquire(blocking=False):
                deadline = time.monotonic() + self.wait
                while time.monotonic() < deadline:
                    self.sleep(0.05)
                    hit = self._get(k)
                    if hit is not None and usable(hit):
                        return hit
                return compute()  # the filler is slow or gone: answer rather than wait forever
        except redis.RedisError as e:
            log.warning("log cache unavailable, reading directly: %s", type(e).__name__)
            return compute()
        try:
            value = compute()
            try:
                self.r.set(k, json.dumps(value, separators=(",", ":")), px=ttl_ms)
            except redis.RedisError:
                pass
            return value
        finally:
            try:
                lock.release()
            except (redis.RedisError, redis.exceptions.LockError):
                pass


# ---- reading ----------------------------------------------------------------------
@dataclass
class LogPage:
    events: list[dict[str, Any]]  # FilterLogEvents events, oldest first
    position: Position | None  # None: the window is closed and fully read
    more: bool  # more events are available right now (a cut by limit or by MAX_CALLS)
    missing_group: bool = False


def _now_ms() -> int:
    return int(time.time() * 1000)


class LogReader:
    """FilterLogEvents through a given CloudWatch Logs client, from a Position, without duplicates."""

    def __init__(self, client: CloudWatchLogsClient, cache: SharedCache | None = None, *, attempts: int = 3,
                 base_delay: float = 0.25, budget: float = 8.0, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], int] = _now_ms, cache_ttl_ms: int = QUANTUM_MS) -> None:
        self.client, self.cache = client, cache
        self.attempts, self.base_delay, self.budget = attempts, base_delay, budget
        self.sleep, self.clock, self.cache_ttl_ms = sleep, clock, cache_ttl_ms

    # One AWS call, with bounded retries of throttling and 5xx. botocore retries
    # inside each call too; the budget keeps the whole request short.
    def _call_aws(self, params: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        delay = self.base_delay
        for attempt in range(1, self.attempts + 1):
            try:
                resp = self.client.filter_log_events(**params)
            except ClientError as e:
                err = aws_error(e, "reading the service's logs")
                if not err.transient:
                    if err.code == "ResourceNotFoundException":
                        return {"events": [], "missing": True, "at": self.clock()}
                    if err.code == "InvalidParameterException":
                        return {"invalid": True}
                    raise err from e
                if attempt == self.attempts or time.monotonic() - started + delay > self.budget:
                    if err.throttled:
                        return {"throttled": True}
                    raise AwsError("CloudWatch Logs did not answer; try again shortly.", err.code,
                                   transient=True) from e
                self.sleep(random.uniform(delay / 2, delay))  # jitter: many callers must not retry in step
                delay *= 2
            except AWS_ERRORS as e:
                raise aws_error(e, "reading the service's logs") from e
            else:
                return {"events": [{"timestamp": ev["timestamp"], "message": ev.get("message", ""),
                                    "logStreamName": ev.get("logStreamName", "")}
                                   for ev in resp.get("events", [])],
                        "nextToken": resp.get("nextToken"), "at": self.clock()}
        raise AssertionError("unreachable")

    def _call(self, params: dict[str, Any], seen_until: int) -> dict[str, Any]:
        if self.cache is None:
            resp = self._call_aws(params)
        else:
            # A shared answer is good only if fetched after what this caller has seen:
            # otherwise a quick second poll would be served its own last answer again.
            key = json.dumps(params, sort_keys=True, separators=(",", ":"))
            resp = self.cache.get_or_compute("call:" + key, self.cache_ttl_ms, lambda: self._call_aws(params),
                                             usable=lambda v: int(v.get("at", seen_until + 1)) > seen_until)
        if resp.get("throttled"):
            raise LogsThrottled()
        return resp

    def read(self, source: LogSource, *, since: int, until: int | None, pattern: str, limit: int,
             position: Position | None = None) -> LogPage:
        now = self.clock()
        pos = position or Position(floor=since, scanned=since)
        lookback = (now - LOOKBACK_MS) // QUANTUM_MS * QUANTUM_MS
        resuming = pos.token is not None
        if resuming:
            start = pos.token_start if pos.token_start is not None else pos.scanned
        else:
            start = max(pos.floor, min(pos.scanned, lookback))
        params: dict[str, Any] = {"logGroupName": source.group, "logStreamNamePrefix": source.stream_prefix,
                                  "startTime": start, "limit": AWS_PAGE,
                                  # AWS has always interleaved since 2019 and ignores this; saying so keeps
                                  # other implementations of the API (local stand-ins) in timestamp order.
                                  "interleaved": True}
        if until is not None:
            if start > until:  # the window was read to its end already
                return LogPage(events=[], more=False, position=self._finish(
                    pos, [], until, since, now, lookback, complete_at=now, token=None, start=start))
            params["endTime"] = until
        if pattern:
            params["filterPattern"] = pattern

        out: list[dict[str, Any]] = []
        marks = dict(pos.marks)
        skipped: dict[str, int] = {}
        token = pos.token
        fetched_at: list[int] = []
        calls, cut = 0, False
        while True:
            call = dict(params, nextToken=token) if token else params
            resp = self._call(call, pos.scanned)
            calls += 1
            if resp.get("invalid"):
                if token and resuming and not out:
                    # An expired or foreign nextToken: scan again from the position instead.
                    return self.read(source, since=since, until=until, pattern=pattern, limit=limit,
                                     position=replace(pos, token=None, token_start=None))
                if pattern:
                    raise ValidationFailed({"filter": ["CloudWatch Logs rejected this filter pattern"]})
                raise UpstreamError("CloudWatch Logs rejected the log query.")
            if resp.get("missing"):
                return LogPage(events=[], position=self._finish(pos, [], until, since, now, lookback,
                                                                complete_at=resp["at"], token=None, start=start),
                               more=False, missing_group=True)
            fetched_at.append(int(resp["at"]))
            consumed = True
            for ev in sorted(resp["events"], key=lambda e: e["timestamp"]):  # stable: stream order kept
                key, ts = stream_key(ev["logStreamName"]), int(ev["timestamp"])
                if not resuming and self._seen(pos, skipped, key, ts, start):
                    continue
                if len(out) >= limit:
                    consumed = False
                    break
                out.append(ev)
                last = marks.get(key)
                marks[key] = (ts, last[1] + 1) if last and last[0] == ts else (ts, 1)
            token = resp.get("nextToken") if consumed else None
            if not consumed or (token and len(out) >= limit):
                cut = True
                break
            if not token:
                break
            if calls >= MAX_CALLS:
                cut = True
                break
        new = replace(pos, marks=marks)
        if cut:
            scanned = out[-1]["timestamp"] if out else pos.scanned
            nxt = self._finish(new, out, until, since, now, lookback, complete_at=None, token=token,
                               start=start, scanned=scanned)
        else:
            nxt = self._finish(new, out, until, since, now, lookback, complete_at=min(fetched_at), token=None,
                               start=start)
        return LogPage(events=out, position=nxt, more=cut)

    @staticmethod
    def _seen(pos: Position, skipped: dict[str, int], key: str, ts: int, start: int) -> bool:
        """Whether the event was returned before: per stream, by (timestamp, count at it)."""
        if ts < start:
            return True
        mark = pos.marks.get(key)
        if mark is None or ts > mark[0]:
            return False
        if ts < mark[0]:
            return True
        n = skipped.get(key, 0)
        if n < mark[1]:
            skipped[key] = n + 1
            return True
        return False

    @staticmethod
    def _finish(pos: Position, out: list[dict[str, Any]], until: int | None, since: int, now: int,
                lookback: int, *, complete_at: int | None, token: str | None, start: int,
                scanned: int | None = None) -> Position | None:
        if complete_at is not None:  # the scan reached the end of the window
            end = complete_at if until is None else min(until + 1, complete_at)
            scanned = max(pos.scanned, end)
            if until is not None and until < lookback:
                return None  # a closed window in the past, fully read: nothing more will come
        assert scanned is not None
        floor = pos.floor
        # The lowest start any later request can use; marks below it are never consulted.
        lower = max(floor, min(scanned, lookback))
        if floor < lower:
            floor = 0  # irrelevant from now on; dropping it lets equal tails have equal cursors
        marks = {k: m for k, m in pos.marks.items() if m[0] >= lower}
        if len(marks) > MAX_MARKS:
            keep = sorted(marks.items(), key=lambda kv: kv[1][0], reverse=True)
            dropped = keep[MAX_MARKS:]
            marks = dict(keep[:MAX_MARKS])
            # Forgotten streams are safe only above their last mark: raise the floor past it.
            floor = max(floor, min(max(m[0] for _, m in dropped) + 1, scanned))
        return Position(floor=floor, scanned=scanned, marks=marks, token=token,
                        token_start=start if token else None)


# ---- the service the web calls ----------------------------------------------------
def event_dict(ev: Mapping[str, Any]) -> dict[str, Any]:
    ts = dt.datetime.fromtimestamp(int(ev["timestamp"]) / 1000, dt.timezone.utc)
    return {"timestamp": iso(ts, "milliseconds"),
            "message": ev.get("message", ""), "stream": ev.get("logStreamName", "")}


_SOURCE_ERRORS: dict[str, type[ValetKeyError]] = {"NotFound": NotFound, "LogsNotReadable": LogsNotReadable}
SOURCE_TTL_MS = 30_000  # task definitions change on deploys; half a minute of staleness is harmless


class ServiceLogs:
    """Logs of the services of one environment: finds the source, reads a page, encodes the cursor."""

    def __init__(self, environment: str, region: str, ecs: EcsReader, reader: LogReader,
                 codec: CursorCodec, cache: SharedCache | None = None) -> None:
        self.environment, self.region = environment, region
        self.ecs, self.reader, self.codec, self.cache = ecs, reader, codec, cache

    def _source_record(self, service: str) -> dict[str, Any]:
        try:
            found = active(self.ecs.describe([service]))
            if not found:
                raise NotFound(f"No service named {service!r} in this environment.")
            td = self.ecs.task_definition(found[0]["taskDefinition"])
            src = log_source(service, td, self.region)
        except (NotFound, LogsNotReadable) as e:
            return {"error": type(e).__name__, "detail": e.detail}
        return {"group": src.group, "stream_prefix": src.stream_prefix, "container": src.container}

    def source(self, service: str) -> LogSource:
        """The awslogs location of a service; NotFound if no such service, LogsNotReadable if not awslogs."""
        if self.cache is None:
            rec = self._source_record(service)
        else:
            rec = self.cache.get_or_compute(f"source:{self.environment}:{service}", SOURCE_TTL_MS,
                                            lambda: self._source_record(service))
        if "error" in rec:
            raise _SOURCE_ERRORS[rec["error"]](rec["detail"])
        return LogSource(group=rec["group"], stream_prefix=rec["stream_prefix"], container=rec["container"])

    def page(self, service: str, query: LogQuery) -> dict[str, Any]:
        """``{events, cursor, more, log_group}``; the cursor is None once a closed window is fully read."""
        binding = CursorCodec.binding(self.environment, service, query.pattern)
        position = self.codec.decode(query.cursor, binding) if query.cursor else None  # 400 before any AWS call
        src = self.source(service)
        result = self.reader.read(src, since=query.since, until=query.until, pattern=query.pattern,
                                  limit=query.limit, position=position)
        body: dict[str, Any] = {
            "events": [event_dict(e) for e in result.events],
            "cursor": self.codec.encode(result.position, binding) if result.position else None,
            "more": result.more, "log_group": src.group, "stream_prefix": src.stream_prefix}
        if result.missing_group:
            body["notice"] = f"The log group {src.group} does not exist yet: the service has not logged anything."
        return body


class ViewSessions:
    """Logs viewing is audited once per session: the first poll of (actor, env, service) in ``ttl`` seconds."""

    PREFIX = CACHE_PREFIX + "viewed:"

    def __init__(self, client: redis.Redis, ttl: int = 1800) -> None:
        self.r, self.ttl = client, ttl

    def _key(self, actor: str, environment: str, service: str) -> str:
        return self.PREFIX + hashlib.sha256("\0".join((actor, environment, service)).encode()).hexdigest()[:32]

    def begin(self, actor: str, environment: str, service: str) -> bool:
        """True if this starts a new viewing session (so the caller records the audit event)."""
        try:
            return bool(self.r.set(self._key(actor, environment, service), uuid.uuid4().hex, nx=True, ex=self.ttl))
        except redis.RedisError as e:
            raise Unavailable("The audit trail cannot be written right now; logs are not shown.") from e

    def forget(self, actor: str, environment: str, service: str) -> None:
        """Undo ``begin`` when its audit event could not be written, so the next poll tries again."""
        try:
            self.r.delete(self._key(actor, environment, service))
        except redis.RedisError:
            pass
