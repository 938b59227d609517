"""Progress events of a job on a Redis stream per job, read by long-polling clients.

Stream ids are the cursor: a client passes the last id it saw as ``after`` and
receives strictly newer events, so across polls none repeats and none is skipped.
"""
from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import redis
from redis.typing import EncodableT, FieldT

from scope.errors import ValidationFailed
from scope.text import as_text
from scope.times import iso, utcnow

log = logging.getLogger(__name__)

PREFIX = "valetkey:job:"
KEEP_SECONDS = 14 * 24 * 3600
MAX_WAIT = 25.0
# ASCII digits only (\d also matches e.g. Arabic-Indic digits) and nothing after
# them ($ would allow a trailing newline); each part is an unsigned 64-bit integer.
_STREAM_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_U64 = 2**64 - 1
LAST_ID = f"{_U64}-{_U64}"


def event_id_problem(value: str) -> str | None:
    """Why ``value`` is not a stream id Redis accepts as a cursor, or None."""
    m = _STREAM_ID.fullmatch(value)
    if not m or int(m[1]) > _U64 or int(m[2]) > _U64:
        return "expected an event id like 1700000000000-0 (two numbers below 2**64)"
    return None


def stream_key(job_id: str) -> str:
    return f"{PREFIX}{job_id}:events"


@dataclass(frozen=True)
class JobEvent:
    id: str
    time: str
    type: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "time": self.time, "type": self.type, "message": self.message}


class JobEvents:
    def __init__(self, client: redis.Redis, outage_patience: float = 0.0) -> None:
        self.r = client
        # Workers set this: a progress event waits out a Redis outage this long (then is dropped,
        # logged) instead of failing the job; the job row, not its events, holds its state.
        self.outage_patience = outage_patience

    def append(self, job_id: str, type_: str, message: str, *, keep: bool = True) -> str:
        """Append one event. ``keep`` (re)starts the stream's expiry; progress events in the
        middle of a job pass False: the first and the last event of a job set it, and a job
        never lives anywhere near KEEP_SECONDS, so one EXPIRE each is enough.

        With ``outage_patience``, an unreachable Redis is retried every half second for that
        long; then the event is dropped ("" returned). Without, the error is raised."""
        deadline = time.monotonic() + self.outage_patience
        while True:
            try:
                return self._append(job_id, type_, message, keep)
            except (redis.ConnectionError, redis.TimeoutError):
                if self.outage_patience <= 0:
                    raise
                if time.monotonic() >= deadline:
                    log.warning("job %s: Redis unreachable for %.0fs; dropped its %r event", job_id,
                                self.outage_patience, type_)
                    return ""
                time.sleep(0.5)

    def _append(self, job_id: str, type_: str, message: str, keep: bool) -> str:
        if keep:
            pipe = self.r.pipeline(transaction=False)
            self.queue(pipe, job_id, type_, message)
            eid = pipe.execute()[0]
        else:
            eid = self.r.xadd(stream_key(job_id), self._fields(type_, message), maxlen=2000, approximate=True)
        return as_text(eid)

    def queue(self, pipe: redis.client.Pipeline, job_id: str, type_: str, message: str, *, keep: bool = True) -> None:
        """Add the append (and, with ``keep``, the stream's expiry) to ``pipe``, to be sent with other writes."""
        key = stream_key(job_id)
        pipe.xadd(key, self._fields(type_, message), maxlen=2000, approximate=True)
        if keep:
            pipe.expire(key, KEEP_SECONDS)

    @staticmethod
    def _fields(type_: str, message: str) -> dict[FieldT, EncodableT]:
        return {"time": iso(utcnow(), "milliseconds"), "type": type_, "message": message}

    def read(self, job_id: str, after: str | None, wait: float = 0.0) -> list[JobEvent]:
        after = after or "0-0"
        problem = event_id_problem(after)
        if problem:
            raise ValidationFailed({"after": [problem]})
        if after == LAST_ID:  # nothing can follow it (and Redis refuses an exclusive range starting there)
            return []
        wait = max(0.0, min(float(wait), MAX_WAIT))
        # Rounded up: BLOCK 0 would mean "forever", so 0.0001 s must become 1 ms, not 0.
        block_ms = math.ceil(wait * 1000)
        key = stream_key(job_id)
        rows: Any = self.r.xrange(key, min=f"({after}", max="+", count=500)
        if not rows and block_ms > 0:
            got: Any = self.r.xread({key: after}, count=500, block=block_ms)
            rows = got[0][1] if got else []
        return [self._event(eid, fields) for eid, fields in rows]

    @staticmethod
    def _event(eid: Any, fields: dict[Any, Any]) -> JobEvent:
        f = {as_text(k): as_text(v) for k, v in fields.items()}
        return JobEvent(id=as_text(eid),
                        time=f.get("time", ""), type=f.get("type", ""), message=f.get("message", ""))


def event_from_entry(eid: Any, fields: dict[Any, Any]) -> JobEvent:
    """One raw stream entry as a JobEvent, for readers of the stream other than ``JobEvents.read``
    (the web tier's shared async reader, web/watch.py)."""
    return JobEvents._event(eid, fields)
