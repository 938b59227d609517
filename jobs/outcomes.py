"""Outcome audit entries lost between a job's final commit and its audit append, found and appended again.

``JobService.finish`` commits the terminal row first (the durable truth), then
appends the outcome to the audit stream; when Redis cannot take it, the
process's outbox appends it once Redis is back (jobs/outcome_outbox.py). A
process killed before either would leave a finished job with no outcome in the
trail. The sweeper closes that gap, within a minute of Redis answering again:

- only when the exporters have read and acknowledged everything on the stream
  (their group was handed the stream's last entry and has nothing pending),
  so an entry still on its way to the table is never taken for a lost one;
- only for jobs finished more than GRACE ago (their own append has normally
  landed by then) and less than HORIZON ago (older trails are not re-examined
  every sweep);
- once per job across every appender (finish, outboxes, sweepers): each
  appends through ``AuditLog.record_once`` with the job's key, which takes the
  key and appends in one atomic step, so a slow append still on its way and a
  sweeper's can never both land.

A job refused at the enqueue (row failed, 503 to the caller) gets its
``failed`` outcome the same way, so every job row has an outcome entry.
"""
from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import redis
from sqlalchemy import Engine, exists, select

from jobs.audit_stream import GROUP, STREAM, AuditLog
from jobs.outcome_outbox import OUTCOME_KEY_TTL, outcome_key
from jobs.kinds import FAILED, SUCCEEDED
from jobs.service import outcome_event
from scope.errors import Unavailable
from scope.models import AuditEntry, Job, utcnow
from scope.text import as_text

log = logging.getLogger("valetkey.worker")

# Only to leave a job's own append its moment: correctness comes from the once-key, not from time.
GRACE = dt.timedelta(seconds=15)
HORIZON = dt.timedelta(days=1)
BATCH = 100


def _id(value: Any) -> tuple[int, int]:
    ms, _, seq = as_text(value).partition("-")
    return int(ms), int(seq or 0)


def exporters_caught_up(r: redis.Redis, stream: str = STREAM) -> bool:
    """True when the exporters' group has been handed the stream's last entry and acknowledged all.

    Judged from the group's last-delivered id and its pending count, not from
    XINFO's ``lag``: Redis stops computing lag after an entry is deleted
    (XDEL) and reports it as unknown, and before Redis 7 there is none.
    """
    try:
        groups: list[dict[Any, Any]] = r.xinfo_groups(stream)
        last = r.xinfo_stream(stream)["last-generated-id"]
    except redis.ResponseError:  # no stream yet: nothing was ever exported, nothing can be judged
        return False
    for g in groups:
        if as_text(g.get("name")) == GROUP:
            return g.get("pending") == 0 and _id(g["last-delivered-id"]) >= _id(last)
    return False


def lost_outcomes(engine: Engine, now: dt.datetime, limit: int = BATCH) -> list[Any]:
    """Finished jobs (GRACE..HORIZON ago) with no outcome row in the audit table."""
    j, a = Job.__table__.c, AuditEntry.__table__.c
    query = (select(Job.__table__)
             .where(j.status.in_([SUCCEEDED, FAILED]), j.finished_at < now - GRACE, j.finished_at > now - HORIZON,
                    ~exists().where(a.job_id == j.id, a.outcome.in_([SUCCEEDED, FAILED])))
             .order_by(j.finished_at).limit(limit))
    with engine.connect() as c:
        return list(c.execute(query).all())


def recover_outcomes(engine: Engine, r: redis.Redis, audit: AuditLog, now: dt.datetime | None = None) -> int:
    """Append the outcome of every finished job whose entry was lost; returns how many."""
    if not exporters_caught_up(r, audit.stream):
        return 0
    recovered = 0
    for job in lost_outcomes(engine, now or utcnow()):
        try:
            if not audit.record_once(outcome_key(job.id), outcome_event(job), OUTCOME_KEY_TTL):
                continue  # someone appended it meanwhile (its entry is on the way to the table)
        except Unavailable:
            log.error("job %s: could not append its missing %s outcome; will retry", job.id, job.status)
            return recovered  # Redis is in trouble: the rest waits for a later sweep too
        log.warning("job %s: its %s outcome was missing from the audit trail; appended it again",
                    job.id, job.status)
        recovered += 1
    return recovered
