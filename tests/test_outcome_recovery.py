"""A finished job whose outcome never reached the audit trail gets it appended by the sweeper, once."""
from __future__ import annotations

import datetime as dt

import redis as redis_lib
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import select, update

from jobs.audit_stream import STREAM, AuditEvent, AuditLog
from jobs.kinds import FAILED, RESTART, SUCCEEDED
from jobs.outcome_outbox import outcome_key
from jobs.outcomes import GRACE, exporters_caught_up, recover_outcomes
from scope.models import AuditEntry, Job
from tests.test_audit_exporter import export_all
from wiring.runtime import Runtime


def crashed_after_commit(rt: Runtime, target: str, minutes_ago: float, status: str = SUCCEEDED) -> str:
    """A job whose terminal row was committed, and then the process died before the audit append."""
    job = rt.jobs.create(action=RESTART, environment="staging", target=target, actor="dev@acme.test",
                         source="api", request_id="req-1")
    finished = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=minutes_ago)
    with rt.engine.begin() as c:
        c.execute(update(Job).where(Job.id == job.id).values(
            status=status, detail="HEALTHY after 38s", finished_at=finished, active_key=None,
            after={"running": 2}))
    return job.id


def outcomes(rt: Runtime, job_id: str) -> list[AuditEntry]:
    with rt.sessions() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.job_id == job_id,
                                                       AuditEntry.outcome.in_([SUCCEEDED, FAILED]))))


def test_a_lost_outcome_is_appended_once_with_the_jobs_record(rt):
    job_id = crashed_after_commit(rt, "orders-api", minutes_ago=15)
    export_all(rt)  # the "requested" entry reaches the table; the exporter is caught up
    assert exporters_caught_up(rt.redis)
    assert recover_outcomes(rt.engine, rt.redis, rt.audit) == 1
    assert recover_outcomes(rt.engine, rt.redis, rt.audit) == 0  # not caught up: the new entry is unread
    export_all(rt)
    [row] = outcomes(rt, job_id)
    assert (row.actor, row.source, row.action, row.outcome, row.target, row.detail, row.request_id) == (
        "dev@acme.test", "api", RESTART, SUCCEEDED, "orders-api", "HEALTHY after 38s", "req-1")
    assert row.after == {"running": 2}
    assert recover_outcomes(rt.engine, rt.redis, rt.audit) == 0  # stored now: nothing is appended twice
    assert len(outcomes(rt, job_id)) == 1


def test_nothing_is_judged_while_the_exporter_has_unread_or_unacknowledged_entries(rt):
    crashed_after_commit(rt, "orders-api", minutes_ago=15)
    assert not exporters_caught_up(rt.redis)  # no consumer group yet
    assert recover_outcomes(rt.engine, rt.redis, rt.audit) == 0
    export_all(rt)
    rt.audit.record(AuditEvent(actor="x", source="api", action="login", outcome="succeeded"))
    assert not exporters_caught_up(rt.redis)  # one entry not read yet
    assert recover_outcomes(rt.engine, rt.redis, rt.audit) == 0
    rt.redis.xreadgroup("exporters", "stuck", {STREAM: ">"}, count=1)
    assert not exporters_caught_up(rt.redis)  # read but not acknowledged
    assert recover_outcomes(rt.engine, rt.redis, rt.audit) == 0


def test_recent_jobs_and_jobs_with_their_outcome_are_left_alone(rt):
    recent = crashed_after_commit(rt, "orders-api", minutes_ago=GRACE.total_seconds() / 120)  # its append's moment
    done = rt.jobs.create(action=RESTART, environment="staging", target="payments-api", actor="dev@acme.test",
                          source="api")
    assert rt.jobs.claim(done.id) is not None
    assert rt.jobs.finish(done.id, FAILED, "Rollout FAILED: circuit breaker")
    with rt.engine.begin() as c:
        c.execute(update(Job).where(Job.id == done.id).values(
            finished_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=20)))
    export_all(rt)
    assert recover_outcomes(rt.engine, rt.redis, rt.audit) == 0
    assert outcomes(rt, recent) == [] and len(outcomes(rt, done.id)) == 1


def test_a_job_another_sweeper_already_took_is_skipped(rt):
    """Two appenders at once (sweepers, an outbox, a slow finish): the once-key lets one of them append."""
    job_id = crashed_after_commit(rt, "orders-api", minutes_ago=15, status=FAILED)
    export_all(rt)
    assert rt.redis.set(outcome_key(job_id), "1", nx=True, ex=60)  # the other appender got there first
    before = rt.redis.xlen(STREAM)
    assert recover_outcomes(rt.engine, rt.redis, rt.audit) == 0
    assert rt.redis.xlen(STREAM) == before


def test_a_failed_append_is_tried_again_at_the_next_sweep(rt):
    job_id = crashed_after_commit(rt, "orders-api", minutes_ago=15)
    export_all(rt)
    # Nothing listens on port 1; no retries, so the failure is immediate.
    unreachable = AuditLog(redis_lib.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)))
    assert recover_outcomes(rt.engine, rt.redis, unreachable) == 0
    assert rt.redis.exists(outcome_key(job_id)) == 0  # a failed append takes no key: the next sweep tries
    assert recover_outcomes(rt.engine, rt.redis, rt.audit) == 1


def test_caught_up_survives_a_deleted_entry(rt):
    """XDEL of an entry the group had not read yet makes Redis report lag as unknown for good."""
    rt.audit.record(AuditEvent(actor="x", source="api", action="login", outcome="succeeded"))
    export_all(rt)
    gone = rt.audit.record(AuditEvent(actor="y", source="api", action="login", outcome="succeeded"))
    rt.audit.record(AuditEvent(actor="z", source="api", action="login", outcome="succeeded"))
    rt.redis.xdel(STREAM, gone)
    assert not exporters_caught_up(rt.redis)
    export_all(rt)
    assert exporters_caught_up(rt.redis)
