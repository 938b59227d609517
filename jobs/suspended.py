"""Suspended jobs: a job waiting on ECS holds no thread, only a due time in Redis.

An operation runs as short steps over its checkpoint (the job row's params).
Between two steps the job stays ``running`` under its claim (``attempts``) and
its next step is due at a time kept in one sorted set, member
``<job id>:<attempt>``, score the due time (epoch seconds). Every worker
process runs a tick (``SuspendedJobs.tick``) that re-enqueues the steps that
are due, naming the claim they continue, so a worker restart, or a second
worker process, resumes every job from its checkpoint.

Nothing here can be lost for good: a due entry is never removed when it is
sent, only pushed ``visibility`` seconds into the future (a message lost with
a dying process is sent again then); a step about to run pushes it again,
ends by setting the next due time or removing it, and holds a per-job step
lock meanwhile, so two copies of a step message never run at once (the second
is dropped: the first sets the next due time). Behind all this, the job's
lease (jobs/service.py) still lets the sweeper take over a job whose
heartbeat went silent.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import Callable

import dramatiq
import redis

from jobs.broker import send_run_job

log = logging.getLogger("valetkey.worker")

DUE_KEY = "valetkey:jobs:due"
LOCK_PREFIX = "valetkey:jobs:step:"

# KEYS: due set. ARGV: now, visibility, limit. The due members, each pushed `visibility` ahead.
TAKE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local later = tonumber(ARGV[1]) + tonumber(ARGV[2])
for _, m in ipairs(due) do redis.call('ZADD', KEYS[1], later, m) end
return due
"""
# KEYS: due set, step lock. ARGV: member, score ("" = remove the member), lock token ("" = none held).
# The next due time (or none) and the lock's release in one step: no moment where neither exists.
END_STEP = """
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
if ARGV[2] == '' then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return redis.call('ZADD', KEYS[1], tonumber(ARGV[2]), ARGV[1])
"""

# KEYS: step lock, due set. ARGV: token, lock ms, force ("1" or ""), member, score. One round trip.
BEGIN = """
local ok
if ARGV[3] == '1' then ok = redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
else ok = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', tonumber(ARGV[2])) end
if not ok then return 0 end
redis.call('ZADD', KEYS[2], tonumber(ARGV[5]), ARGV[4])
return 1
"""
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2])) end
return 0
"""


def member(job_id: str, attempt: int) -> str:
    return f"{job_id}:{attempt}"


class SuspendedJobs:
    """The due set and the step locks; ``clock`` is wall time (the due times are shared by processes)."""

    def __init__(self, client: redis.Redis, *, lock_seconds: float = 60.0, visibility: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.redis, self.clock = client, clock
        self.lock_ms, self.visibility = max(1, int(lock_seconds * 1000)), visibility
        self._take = client.register_script(TAKE_DUE)
        self._end = client.register_script(END_STEP)
        self._renew = client.register_script(RENEW)
        self._begin = client.register_script(BEGIN)

    # ---- a step ---------------------------------------------------------------
    def begin(self, job_id: str, attempt: int, *, force: bool = False) -> str | None:
        """Start a step: take the job's step lock (None: another copy runs it now) and push its due
        entry ``visibility`` ahead (if this process dies mid-step, the step is sent again then).

        ``force``: a new claim of the job (it won the compare-and-set in the database) takes the
        lock even from a step of the claim it replaces, whose next ``renew`` then fails."""
        token = secrets.token_hex(8)
        got = self._begin(keys=[LOCK_PREFIX + job_id, DUE_KEY],
                          args=[token, self.lock_ms, "1" if force else "", member(job_id, attempt),
                                repr(self.clock() + self.visibility)])
        return token if got else None

    def renew(self, job_id: str, token: str) -> bool:
        """Before each checkpoint (and so before each mutation): is the step lock still ours? Extend it."""
        return bool(self._renew(keys=[LOCK_PREFIX + job_id], args=[token, self.lock_ms]))

    def suspend(self, job_id: str, attempt: int, seconds: float, token: str | None) -> None:
        """End the step with the next one due in ``seconds``."""
        self._end(keys=[DUE_KEY, LOCK_PREFIX + job_id],
                  args=[member(job_id, attempt), repr(self.clock() + max(0.0, seconds)), token or ""])

    def end(self, job_id: str, attempt: int, token: str | None) -> None:
        """End the step with no next one (the job finished, or this claim is no longer the job's)."""
        self._end(keys=[DUE_KEY, LOCK_PREFIX + job_id], args=[member(job_id, attempt), "", token or ""])

    # ---- the same, sent with other writes in one round trip ---------------------------------
    # EVAL with the script's text, not EVALSHA: a pipeline would first ask SCRIPT EXISTS (one more
    # round trip), and Redis keeps the compiled script by its hash either way.
    def queue_begin(self, pipe: redis.client.Pipeline, job_id: str, attempt: int) -> str:
        """``begin(force=True)`` (a new claim's step) in ``pipe``; returns its token. Its result in
        the pipeline is 1 once it is done."""
        token = secrets.token_hex(8)
        pipe.eval(BEGIN, 2, LOCK_PREFIX + job_id, DUE_KEY, token, self.lock_ms, "1", member(job_id, attempt),
                  repr(self.clock() + self.visibility))
        return token

    def queue_end(self, pipe: redis.client.Pipeline, job_id: str, attempt: int, token: str | None) -> None:
        """``end`` in ``pipe``; running it twice does no harm (a failed pipeline may be followed by ``end``)."""
        pipe.eval(END_STEP, 2, DUE_KEY, LOCK_PREFIX + job_id, member(job_id, attempt), "", token or "")

    # ---- the tick -------------------------------------------------------------------
    def take_due(self, limit: int = 1000) -> list[tuple[str, int]]:
        raw: list[bytes] = self._take(keys=[DUE_KEY], args=[repr(self.clock()), repr(self.visibility), limit])
        out = []
        for m in raw:
            job_id, _, attempt = (m.decode() if isinstance(m, bytes) else str(m)).rpartition(":")
            out.append((job_id, int(attempt)))
        return out

    def tick(self, broker: dramatiq.Broker, limit: int = 1000) -> int:
        """Send every step that is due; returns how many were sent."""
        due = self.take_due(limit)
        for job_id, attempt in due:
            send_run_job(broker, job_id, attempt)
        return len(due)

    def count(self) -> int:
        """Jobs waiting for their next step (for /metrics)."""
        return int(self.redis.zcard(DUE_KEY))

    def due_at(self, job_id: str, attempt: int) -> float | None:
        score = self.redis.zscore(DUE_KEY, member(job_id, attempt))
        return None if score is None else float(score)


TICK_SECONDS = 0.25  # how late a due step may be sent, at most (besides the queue ahead of it)


def run_ticker(suspended: SuspendedJobs, broker: dramatiq.Broker, stop: threading.Event,
               interval: float = TICK_SECONDS) -> threading.Thread:
    """A daemon thread of the worker process that sends due steps until ``stop`` is set."""
    def loop() -> None:
        while not stop.wait(interval):
            try:
                suspended.tick(broker)
            except Exception:  # noqa: BLE001 - Redis away for a moment: the next tick tries again
                log.warning("sending due job steps failed", exc_info=True)

    t = threading.Thread(target=loop, name="valetkey-due-steps", daemon=True)
    t.start()
    return t
