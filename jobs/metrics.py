"""Job figures for ``GET /metrics``, from the database: the job rows are the durable truth.

Two aggregate queries, whatever the number of jobs: counts by action and
status (one GROUP BY), and a duration histogram by action of the jobs that
ran and finished (bucket counts summed in SQL). Nothing about who asked or
which job: actions and statuses are small fixed sets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, case, extract, func, select
from sqlalchemy.sql.elements import ColumnElement

from jobs.kinds import public_status
from scope.models import Job

# Seconds. Restarts and redeploys take minutes; one-off tasks up to the task timeout (30 min by default).
DURATION_BUCKETS: tuple[float, ...] = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)


@dataclass(frozen=True)
class Durations:
    buckets: list[tuple[float, int]]  # (upper bound, cumulative count), ascending, without +Inf
    count: int
    total: float  # sum of durations, seconds


@dataclass(frozen=True)
class JobFigures:
    counts: dict[tuple[str, str], int]  # (action, status) -> jobs
    durations: dict[str, Durations]  # action -> histogram of finished jobs' run times


def _seconds(engine: Engine) -> ColumnElement[Any]:
    """finished_at - started_at in seconds, in the database's own dialect."""
    if engine.dialect.name == "sqlite":
        return (func.julianday(Job.finished_at) - func.julianday(Job.started_at)) * 86400.0
    return extract("epoch", Job.finished_at - Job.started_at)


def job_figures(engine: Engine) -> JobFigures:
    counts_q = select(Job.action, Job.status, func.count()).group_by(Job.action, Job.status)
    secs = _seconds(engine)
    ran = and_(Job.started_at.is_not(None), Job.finished_at.is_not(None))
    dur_q = (select(Job.action, func.count(), func.coalesce(func.sum(secs), 0.0),
                    *[func.sum(case((secs <= b, 1), else_=0)) for b in DURATION_BUCKETS])
             .where(ran).group_by(Job.action))
    with engine.connect() as c:
        counts: dict[tuple[str, str], int] = {}
        for a, s, n in c.execute(counts_q):  # the contract's statuses only (unconfirmed counts as queued)
            key = (str(a), public_status(str(s)))
            counts[key] = counts.get(key, 0) + int(n)
        durations = {}
        for row in c.execute(dur_q):
            action, n, total, *per_bucket = row
            durations[str(action)] = Durations([(b, int(k or 0)) for b, k in zip(DURATION_BUCKETS, per_bucket)],
                                               int(n), max(0.0, float(total or 0.0)))
    return JobFigures(counts, durations)
