"""Audit events on their way to durable rows: producers XADD to one Redis stream.

The exporter (``audit/``) is the single writer of audit rows; everyone else
only appends here. A failed append raises Unavailable so callers fail closed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

import redis
from redis.typing import EncodableT, FieldT

from scope.errors import Unavailable
from scope.text import as_text
from scope.times import iso, utcnow

STREAM = "valetkey:audit"
# Append an event only if its key was not taken yet (SET NX with an expiry, then XADD, atomically):
# every appender of a job's outcome goes through it, so racing appenders append it once.
_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return redis.call('XADD', KEYS[2], '*', 'event', ARGV[2])
end
return false
"""
GROUP = "exporters"  # the exporters' consumer group on STREAM


@dataclass
class AuditEvent:
    actor: str
    source: str
    action: str
    outcome: str
    environment: str = ""
    target: str = ""
    detail: str = ""
    job_id: str = ""
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    request_id: str = ""
    reason: str = ""  # the reason the person gave, if any (an older exporter ignores it)
    time: str = field(default_factory=lambda: iso(utcnow(), "microseconds"))

    def encode(self) -> dict[FieldT, EncodableT]:
        # A shallow dict: before/after are JSON already, so asdict()'s deep copy is pure cost.
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        return {"event": json.dumps(data, separators=(",", ":"), sort_keys=True)}

    @classmethod
    def decode(cls, fields: dict[Any, Any]) -> "AuditEvent":
        raw = fields.get(b"event") or fields.get("event")
        if raw is None:
            raise ValueError("not an audit event: no 'event' field")
        data = json.loads(raw)
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__ if k in data})


class AuditLog:
    """Appends audit events to the stream."""

    def __init__(self, client: redis.Redis, stream: str = STREAM) -> None:
        self.r, self.stream = client, stream

    def record(self, event: AuditEvent) -> str:
        try:
            eid = self.r.xadd(self.stream, event.encode())
        except redis.RedisError as e:
            raise Unavailable("The audit trail cannot be written right now; nothing was done.") from e
        return as_text(eid)

    def record_once(self, key: str, event: AuditEvent, ttl: int) -> bool:
        """Append ``event`` unless ``key`` was taken (by another appender of it) within ``ttl`` seconds.

        True if appended now; False if someone already did. Unavailable if Redis cannot be reached."""
        try:
            return bool(self.r.eval(_ONCE, 2, key, self.stream, ttl, event.encode()["event"]))
        except redis.RedisError as e:
            raise Unavailable("The audit trail cannot be written right now.") from e

    def queue_once(self, pipe: redis.client.Pipeline, key: str, event: AuditEvent, ttl: int) -> None:
        """``record_once`` in ``pipe`` (sent with other writes in one round trip)."""
        pipe.eval(_ONCE, 2, key, self.stream, ttl, event.encode()["event"])

    def queue(self, pipe: redis.client.Pipeline, event: AuditEvent) -> None:
        """Add the append to ``pipe``: the caller sends it with other writes in one round trip
        and must treat a failed ``pipe.execute()`` as a failed record (Unavailable)."""
        pipe.xadd(self.stream, event.encode())
