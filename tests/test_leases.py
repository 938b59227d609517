"""Leases renewed per process, hand-back on SIGTERM, and a job's Redis writes through an outage
(issues 18 and 21), on SQLite and PostgreSQL, against real Redis servers stopped and started."""
from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Iterator

import pytest
import redis as redis_lib
from sqlalchemy import select, update

from jobs.audit_stream import STREAM, AuditEvent
from jobs.kinds import FAILED, QUEUED, RESTART, RUNNING, SUCCEEDED
from jobs.outcome_outbox import outcome_key
from scope.models import Job
from scope.settings import Settings
from tests.outage import RedisServer
from wiring.runtime import Runtime


def new_job(rt: Runtime, target: str = "orders-api") -> str:
    return rt.jobs.create(action=RESTART, environment="staging", target=target, actor="dev@acme.test",
                          source="api").id


def heartbeat_at(rt: Runtime, job_id: str) -> dt.datetime | None:
    with rt.sessions() as s:
        return s.scalar(select(Job.heartbeat_at).where(Job.id == job_id))


def age(rt: Runtime, job_id: str, seconds: float) -> None:
    with rt.engine.begin() as c:
        c.execute(update(Job).where(Job.id == job_id).values(
            heartbeat_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)))


def test_a_process_renews_all_its_jobs_in_one_statement_and_not_a_silent_ones(rt):
    a, b, c = new_job(rt, "orders-api"), new_job(rt, "payments-api"), new_job(rt, "search-api")
    ja, jb = rt.jobs.claim(a), rt.jobs.claim(b)
    assert ja is not None and jb is not None and sorted(rt.jobs.held()) == sorted([a, b])
    for j in (a, b):
        age(rt, j, 60)
    assert rt.jobs.renew_held() == 2
    assert all(dt.datetime.now(dt.timezone.utc) - heartbeat_at(rt, j) < dt.timedelta(seconds=5) for j in (a, b))
    assert heartbeat_at(rt, c) is None  # queued, not ours

    # A thread silent longer than MAX_SILENCE (stalled) no longer has its job renewed.
    age(rt, b, 60)
    time.sleep(0.2)
    assert rt.jobs.heartbeat(a, attempt=ja.attempts)  # a's thread is alive
    assert rt.jobs.renew_held(max_silence=0.1) == 1
    assert dt.datetime.now(dt.timezone.utc) - heartbeat_at(rt, b) > dt.timedelta(seconds=50)

    # Taken over by another worker (attempt 2 elsewhere): this process's renewal no longer matches it.
    age(rt, a, rt.jobs.lease.total_seconds() + 1)
    with rt.engine.begin() as conn:
        conn.execute(update(Job).where(Job.id == a).values(attempts=Job.attempts + 1))
    assert rt.jobs.renew_held() == 1  # b only
    # Finished: forgotten.
    assert rt.jobs.finish(b, SUCCEEDED, "HEALTHY after 1s", attempt=jb.attempts)
    assert b not in rt.jobs.held()


def test_on_sigterm_a_job_is_handed_back_at_its_next_heartbeat(rt):
    job_id = new_job(rt)
    job = rt.jobs.claim(job_id)
    assert job is not None
    queued = rt.redis.llen("dramatiq:valetkey")
    # A checkpoint (before a mutation) is never where a job is handed back.
    assert rt.jobs.heartbeat(job_id, params={"step": 1}, attempt=job.attempts)
    rt.jobs.handing_back.set()
    assert rt.jobs.heartbeat(job_id, params={"step": 2}, attempt=job.attempts)
    assert not rt.jobs.heartbeat(job_id, attempt=job.attempts)  # between polls: handed back
    with rt.sessions() as s:
        row = s.get(Job, job_id)
        assert row is not None and (row.status, row.heartbeat_at, row.params) == (QUEUED, None, {"step": 2})
    assert rt.redis.llen("dramatiq:valetkey") == queued + 1  # its message, sent again at once
    assert [e.type for e in rt.events.read(job_id, None)][-1] == "handed back"
    assert job_id not in rt.jobs.held()
    rt.jobs.handing_back.clear()
    again = rt.jobs.claim(job_id)  # another worker takes it at once, no lease to wait out
    assert again is not None and again.attempts == job.attempts + 1 and again.status == RUNNING


@pytest.fixture
def own_redis(tmp_path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, persistent=True).start()
    yield server
    server.stop()


@pytest.fixture
def rt_own_redis(environ, own_redis) -> Iterator[Runtime]:
    runtime = Runtime.from_settings(Settings.from_env({**environ, "VALETKEY_REDIS_URL": own_redis.url}))
    yield runtime
    runtime.close()


def test_an_outcome_redis_did_not_take_is_appended_within_seconds_of_its_return(rt_own_redis, own_redis):
    rt = rt_own_redis
    job_id = new_job(rt)
    job = rt.jobs.claim(job_id)
    assert job is not None
    own_redis.stop()
    assert rt.jobs.finish(job_id, FAILED, "Rollout FAILED", attempt=job.attempts)  # the job is done, no error
    assert rt.jobs.get(job_id).status == FAILED and rt.jobs.outbox.pending() == [job_id]
    time.sleep(2)  # an outage of a few seconds; the outbox keeps trying
    own_redis.start()
    returned = time.monotonic()
    while rt.jobs.outbox.pending() and time.monotonic() - returned < 10:
        time.sleep(0.1)
    assert rt.jobs.outbox.pending() == []
    outcomes = [AuditEvent.decode(f) for _, f in rt.redis.xrange(STREAM)]
    assert [(e.job_id, e.outcome) for e in outcomes if e.outcome != "requested"] == [(job_id, FAILED)]
    assert rt.redis.exists(outcome_key(job_id)) == 1  # a sweeper after it appends nothing again
    assert not rt.audit.record_once(outcome_key(job_id), outcomes[-1], 60)


def test_a_progress_event_waits_out_a_short_redis_outage(rt_own_redis, own_redis):
    rt = rt_own_redis
    job_id = new_job(rt)
    own_redis.stop()
    with pytest.raises(redis_lib.ConnectionError):  # web processes: no patience, the caller answers 503
        rt.events.append(job_id, "progress", "Stopped 1 of 2", keep=False)
    rt.events.outage_patience = 30  # as in a worker
    threading.Timer(2.0, own_redis.start).start()
    t0 = time.monotonic()
    eid = rt.events.append(job_id, "progress", "Stopped 1 of 2", keep=False)
    assert eid and 1.5 < time.monotonic() - t0 < 15
    assert [e.message for e in rt.events.read(job_id, None)][-1] == "Stopped 1 of 2"
    # An outage longer than the patience drops the event (logged) instead of failing the job.
    rt.events.outage_patience = 1
    own_redis.stop()
    assert rt.events.append(job_id, "progress", "Stopped 2 of 2", keep=False) == ""


def test_just_after_a_database_outage_running_jobs_are_not_judged(rt):
    """Every lease looks expired when the database returns; live workers get a lease to renew theirs."""
    from workers.process import DatabaseWatch, sweep

    job_id = new_job(rt)
    assert rt.jobs.claim(job_id) is not None
    age(rt, job_id, rt.jobs.lease.total_seconds() + 5)
    queued = rt.redis.llen("dramatiq:valetkey")
    db = DatabaseWatch(lease=0.5)
    assert db.leases_trustworthy()
    db.down()
    assert not db.leases_trustworthy()
    sweep(rt, take_over=db.leases_trustworthy())
    assert rt.redis.llen("dramatiq:valetkey") == queued  # left alone
    time.sleep(0.6)
    assert db.leases_trustworthy()
    sweep(rt, take_over=db.leases_trustworthy())
    assert rt.redis.llen("dramatiq:valetkey") == queued + 1  # now handed to another worker
