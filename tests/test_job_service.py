"""JobService's compare-and-set state changes, on SQLite and PostgreSQL: claim, heartbeat, checkpoint, release, finish."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update

from jobs.events import stream_key
from jobs.kinds import FAILED, QUEUED, RESTART, RUNNING, SUCCEEDED
from scope.models import Job
from tests.conftest import audit_events
from wiring.runtime import Runtime


def new_job(rt: Runtime, target: str = "orders-api") -> str:
    return rt.jobs.create(action=RESTART, environment="staging", target=target, actor="dev@acme.test",
                          source="api", request_id="req-7").id


def row(rt: Runtime, job_id: str) -> Job:
    with rt.sessions() as s:
        job = s.scalar(select(Job).where(Job.id == job_id))
        assert job is not None
        return job


def age_heartbeat(rt: Runtime, job_id: str, seconds: float) -> None:
    with rt.engine.begin() as c:
        c.execute(update(Job).where(Job.id == job_id).values(
            heartbeat_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)))


def test_claim_takes_a_queued_job_once_and_a_lost_one_after_its_lease(rt):
    job_id = new_job(rt)
    first = rt.jobs.claim(job_id)
    assert first is not None and (first.status, first.attempts) == (RUNNING, 1)
    assert first.started_at is not None and first.created_at.tzinfo is not None
    assert rt.jobs.claim(job_id) is None  # held by a live worker
    age_heartbeat(rt, job_id, rt.jobs.lease.total_seconds() + 5)
    second = rt.jobs.claim(job_id)
    assert second is not None and second.attempts == 2
    assert second.started_at == first.started_at  # set once, on the first claim


def test_heartbeat_and_checkpoints_touch_only_a_running_job(rt):
    job_id = new_job(rt)
    rt.jobs.heartbeat(job_id, params={"restart_tasks": ["arn:t/1"]}, before={"running": 2})
    assert row(rt, job_id).params == {} and row(rt, job_id).heartbeat_at is None  # still queued: untouched
    rt.jobs.claim(job_id)
    age_heartbeat(rt, job_id, 30)
    rt.jobs.heartbeat(job_id, params={"restart_tasks": ["arn:t/1"]}, before={"running": 2})
    job = row(rt, job_id)
    assert job.params == {"restart_tasks": ["arn:t/1"]} and job.before == {"running": 2}
    assert dt.datetime.now(dt.timezone.utc) - job.heartbeat_at < dt.timedelta(seconds=10)
    rt.jobs.heartbeat(job_id, params={"restart_tasks": ["arn:t/1"], "stopped": 1})  # keeps "before"
    assert row(rt, job_id).before == {"running": 2} and row(rt, job_id).params["stopped"] == 1
    rt.jobs.heartbeat(job_id)  # the lease only
    assert row(rt, job_id).params["stopped"] == 1


def test_release_hands_a_running_job_back_to_the_queue(rt):
    job_id = new_job(rt)
    rt.jobs.release(job_id)
    assert row(rt, job_id).status == QUEUED  # nothing to release yet
    rt.jobs.claim(job_id)
    rt.jobs.release(job_id)
    job = row(rt, job_id)
    assert (job.status, job.heartbeat_at) == (QUEUED, None)
    assert rt.jobs.claim(job_id) is not None


def test_finish_happens_once_and_records_the_outcome_everywhere(rt):
    job_id = new_job(rt)
    rt.jobs.claim(job_id)
    assert rt.jobs.finish(job_id, SUCCEEDED, "HEALTHY after 38s", after={"running": 2})
    assert not rt.jobs.finish(job_id, FAILED, "too late")  # a second finish changes nothing
    job = row(rt, job_id)
    assert (job.status, job.detail, job.after, job.active_key) == (SUCCEEDED, "HEALTHY after 38s", {"running": 2}, None)
    outcomes = [e for e in audit_events(rt) if e["job_id"] == job_id and e["outcome"] != "requested"]
    assert [(e["outcome"], e["detail"], e["after"], e["request_id"]) for e in outcomes] == [
        (SUCCEEDED, "HEALTHY after 38s", {"running": 2}, "req-7")]
    events = rt.events.read(job_id, None)
    assert [e.type for e in events] == ["queued", SUCCEEDED] and events[-1].message == "HEALTHY after 38s"
    assert 0 < rt.redis.ttl(stream_key(job_id))  # the last event renewed the stream's expiry
    assert new_job(rt) != job_id  # the service is free for the next job


def test_mid_job_events_leave_the_expiry_set_at_creation(rt):
    job_id = new_job(rt)
    rt.redis.expire(stream_key(job_id), 1000)
    rt.events.append(job_id, "progress", "Stopped 1 of 2", keep=False)
    assert 0 < rt.redis.ttl(stream_key(job_id)) <= 1000
    rt.events.append(job_id, "redelivered", "handing over")
    assert rt.redis.ttl(stream_key(job_id)) > 1000


def test_unset_states_are_sql_null(rt):
    job_id = new_job(rt)
    with rt.engine.connect() as c:
        assert c.execute(select(Job.id).where(Job.id == job_id, Job.before.is_(None), Job.after.is_(None))).all()
    rt.jobs.claim(job_id)
    rt.jobs.finish(job_id, FAILED, "Rollout FAILED")  # a failure has no "after" state
    with rt.engine.connect() as c:
        assert c.execute(select(Job.id).where(Job.id == job_id, Job.after.is_(None))).all()


def test_a_failed_progress_event_does_not_append_the_outcome_twice(rt):
    job_id = new_job(rt)
    rt.jobs.claim(job_id)
    rt.redis.delete(stream_key(job_id))
    rt.redis.set(stream_key(job_id), "not a stream")  # the event's XADD fails (WRONGTYPE); the audit's works
    assert rt.jobs.finish(job_id, SUCCEEDED, "HEALTHY after 1s")
    outcomes = [e for e in audit_events(rt) if e["job_id"] == job_id and e["outcome"] == SUCCEEDED]
    assert len(outcomes) == 1
    assert row(rt, job_id).status == SUCCEEDED


def test_a_worker_whose_claim_was_taken_over_can_no_longer_touch_the_job(rt):
    """A stalled worker (attempt 1) wakes up after another took the job over (attempt 2)."""
    job_id = new_job(rt)
    stalled = rt.jobs.claim(job_id)
    assert stalled is not None and rt.jobs.heartbeat(job_id, attempt=stalled.attempts)
    age_heartbeat(rt, job_id, rt.jobs.lease.total_seconds() + 5)
    owner = rt.jobs.claim(job_id)
    assert owner is not None and owner.attempts == 2
    assert not rt.jobs.heartbeat(job_id, attempt=stalled.attempts)
    assert not rt.jobs.heartbeat(job_id, params={"restart_tasks": ["arn:t/9"]}, attempt=stalled.attempts)
    rt.jobs.release(job_id, attempt=stalled.attempts)
    assert not rt.jobs.finish(job_id, FAILED, "stale", attempt=stalled.attempts)
    job = row(rt, job_id)
    assert (job.status, job.params, job.attempts) == (RUNNING, {}, 2)  # the owner's job, untouched
    assert rt.jobs.heartbeat(job_id, attempt=owner.attempts)
    assert rt.jobs.finish(job_id, SUCCEEDED, "HEALTHY after 40s", attempt=owner.attempts)
    assert not rt.jobs.heartbeat(job_id, attempt=owner.attempts)  # finished: nobody's any more


def test_a_finish_carries_more_writes_in_its_round_trip_only_when_it_finishes(rt):
    job_id = new_job(rt)
    job = rt.jobs.claim(job_id)
    seen: list[object] = []

    def also(pipe):
        pipe.set(f"test:{job_id}", "ended")
        pipe.incr(f"test:{job_id}")  # fails: not an integer; only its own result says so
        return seen.append

    assert rt.jobs.finish(job_id, SUCCEEDED, "done", attempt=job.attempts, also=also)
    assert len(seen) == 1 and seen[0][0] is True and isinstance(seen[0][1], Exception)
    assert rt.redis.get(f"test:{job_id}") == b"ended"
    assert [e["outcome"] for e in audit_events(rt) if e["job_id"] == job_id] == ["requested", SUCCEEDED]
    # Not finished here (already finished): nothing queued, nothing called.
    assert not rt.jobs.finish(job_id, FAILED, "again", attempt=job.attempts, also=also)
    assert len(seen) == 1


def test_a_job_claimed_by_the_runner_ends_with_no_step_lock_nor_due_entry(rt, make_user):
    from jobs.suspended import DUE_KEY, LOCK_PREFIX
    from workers.runner import JobRunner

    make_user("dev@acme.test", ("staging", "developer"))
    job_id = rt.jobs.create(action="restart", environment="nowhere", target="web", actor="dev@acme.test",
                            source="api").id
    runner = JobRunner(rt)
    assert runner.run(job_id) == FAILED  # refused at run time: the environment is not configured
    assert rt.redis.zcard(DUE_KEY) == 0 and not rt.redis.exists(LOCK_PREFIX + job_id)
    assert runner._held == {}
    assert [e.type for e in rt.events.read(job_id, None)] == ["queued", "running", FAILED]
