"""Flushable Redis targets: the pattern rules and a safe client, shared by the web dry run and the worker.

Two promises live here:
- a pattern can only ever reach keys under a literal prefix, and never Valet
  Key's own namespaces (the catalog already refuses a target that *is* our own
  Redis database; this is the second lock on the same door);
- the target's URL (it may hold a password) never leaves this module: every
  redis-py error is replaced by a generic message naming only the target.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping

import redis
from redis.cluster import RedisCluster
from redis.exceptions import ResponseError

from cloud.errors import REDIS_ERRORS, RedisTargetError
from scope.catalog import RedisTarget
from scope.errors import ValidationFailed

__all__ = ["RedisTargetError", "TargetClient", "dry_run", "literal_prefix", "pattern_problem", "validate_pattern"]

GLOB_CHARS = "*?["
# Key namespaces Valet Key itself writes (job events, audit stream, locks; the
# Dramatiq broker's queues). A pattern that could match any of them is refused.
OWN_NAMESPACES = ("valetkey:", "dramatiq:")
MAX_PATTERN_LENGTH = 512
SCAN_COUNT = 1000  # keys per SCAN call and per UNLINK batch
_TIMEOUTS: dict[str, Any] = {"socket_connect_timeout": 5, "socket_timeout": 30}


def literal_prefix(pattern: str) -> str:
    """The characters every matching key starts with: up to the first unescaped ``* ? [``.

    A backslash makes the next character literal (``user\\*:*`` -> ``user*:``);
    a trailing backslash matches itself, as in Redis' own matcher.
    """
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 < len(pattern):
                out.append(pattern[i + 1])
                i += 2
                continue
            out.append(c)
            break
        if c in GLOB_CHARS:
            break
        out.append(c)
        i += 1
    return "".join(out)


def pattern_problem(pattern: Any) -> str | None:
    """Why ``pattern`` may not be flushed, or None when it may."""
    if not isinstance(pattern, str) or not pattern.strip():
        return "A pattern is required, e.g. session:*"
    if len(pattern) > MAX_PATTERN_LENGTH:
        return f"A pattern may be at most {MAX_PATTERN_LENGTH} characters long."
    if any(ord(c) < 32 or ord(c) == 127 for c in pattern):
        return "A pattern may not contain control characters."
    try:
        pattern.encode("utf-8")  # what redis-py sends; a lone surrogate (JSON "\ud800") cannot be
    except UnicodeEncodeError:
        return "A pattern must be valid Unicode text (no lone surrogates such as \\ud800)."
    prefix = literal_prefix(pattern)
    if not prefix.strip():
        return ("A pattern must start with a literal prefix (at least one character before the first "
                "unescaped *, ? or [), e.g. session:* — bare wildcards are refused.")
    for ns in OWN_NAMESPACES:
        # Either the pattern lives inside our namespace, or its prefix is short
        # enough that its wildcard could reach into it (e.g. "val*").
        if prefix.startswith(ns) or ns.startswith(prefix):
            return f"The pattern could match Valet Key's own keys ({ns}*); choose a longer prefix."
    return None


def validate_pattern(pattern: Any) -> str:
    """The pattern if it may be flushed; ValidationFailed naming ``pattern`` otherwise."""
    problem = pattern_problem(pattern)
    if problem:
        raise ValidationFailed({"pattern": [problem]}, detail=f"pattern: {problem}")
    return str(pattern)


class TargetClient:
    """A connection to one flushable target; cluster mode is detected on connect."""

    def __init__(self, target: RedisTarget, client: Any, cluster: bool) -> None:
        self.target, self.client, self.cluster = target, client, cluster

    @classmethod
    def connect(cls, target: RedisTarget, environ: Mapping[str, str]) -> "TargetClient":
        with cls._safe(target.name, "connecting"):
            url = environ.get(target.url_env)
            if not url:  # the catalog checked it at start; a changed process environment is not transient
                raise ValueError("URL variable unset")
            plain = redis.Redis.from_url(url, **_TIMEOUTS)
            try:
                try:
                    info = plain.info("cluster")
                except ResponseError:  # INFO disabled or renamed: a managed standalone server
                    info = {}
                if str(info.get("cluster_enabled", "0")) != "1":
                    return cls(target, plain, cluster=False)
            except BaseException:
                plain.close()
                raise
            plain.close()
            # A cluster node only SCANs its own slots: RedisCluster scans every
            # primary and splits UNLINK per slot.
            return cls(target, RedisCluster.from_url(url, **_TIMEOUTS), cluster=True)
        raise AssertionError("unreachable")  # pragma: no cover - _safe re-raises

    @staticmethod
    @contextlib.contextmanager
    def _safe(name: str, doing: str) -> Iterator[None]:
        try:
            yield
        except REDIS_ERRORS as e:
            # ``from None``: redis-py messages carry host, port or URL parts;
            # no traceback of this error may end up in a log or a response.
            raise RedisTargetError(name, doing, e) from None

    def count(self, pattern: str, limit: int) -> tuple[int, bool]:
        """Distinct keys matching ``pattern``, counting at most ``limit`` (then ``capped`` is True)."""
        seen: set[bytes] = set()
        with self._safe(self.target.name, "counting keys"):
            for key in self.client.scan_iter(match=pattern, count=SCAN_COUNT):
                seen.add(key)  # SCAN may return a key twice; count it once
                if len(seen) >= limit:
                    return len(seen), True
        return len(seen), False

    def batches(self, pattern: str, size: int = SCAN_COUNT) -> Iterator[list[bytes]]:
        """Matching keys in batches of at most ``size`` (SCAN, never KEYS)."""
        batch: list[bytes] = []
        with self._safe(self.target.name, "scanning keys"):
            for key in self.client.scan_iter(match=pattern, count=SCAN_COUNT):
                batch.append(key)
                if len(batch) >= size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def unlink(self, keys: list[bytes]) -> int:
        if not keys:
            return 0
        with self._safe(self.target.name, "deleting keys"):
            return int(self.client.unlink(*keys))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()

    def __enter__(self) -> "TargetClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def dry_run(target: RedisTarget, environ: Mapping[str, str], pattern: str) -> dict[str, Any]:
    """Count what a flush of ``pattern`` would delete, stopping just past the target's cap."""
    pattern = validate_pattern(pattern)
    with TargetClient.connect(target, environ) as c:
        matched, capped = c.count(pattern, target.max_keys + 1)
    return {"target": target.name, "pattern": pattern, "matched": matched, "capped": capped,
            "max_keys": target.max_keys}
