"""A job whose request never completed never runs (issue 18, fault findings), on SQLite and PostgreSQL.

The request is a real process killed between the job row's commit and its
``requested`` audit entry: its Redis is a socket that accepts and never
answers, so the process sits in the audit append with its row committed, and
is SIGKILLed there. A real worker then gets the job's message and must not
run it; its sweeper ends it "never confirmed; nothing was done", audited.
"""
from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

import pytest
from sqlalchemy import select, update

from jobs.broker import send_run_job
from jobs.kinds import FAILED, QUEUED, RESTART, UNCONFIRMED
from jobs.service import NEVER_CONFIRMED, QUEUED_RESEND, UNCONFIRMED_TIMEOUT
from scope.models import Job
from tests.conftest import audit_events
from tests.test_processes import start, wait_for
from workers.process import sweep

DYING_REQUEST = """
import sys
from wiring.runtime import Runtime
rt = Runtime.from_env(__import__("os").environ)
rt.jobs.create(action="service.restart", environment="staging", target="orders-api", actor="dev@acme.test",
               source="api", request_id="req-dying")
print("create returned", flush=True)
"""


@pytest.fixture
def silent_redis() -> Iterator[str]:
    """A TCP socket that accepts connections (the kernel's backlog) and never answers a command."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield f"redis://127.0.0.1:{s.getsockname()[1]}/0"
    s.close()


def rows(rt: Any) -> list[Job]:
    with rt.sessions() as s:
        return list(s.scalars(select(Job)))


def kill_a_request_after_its_row(environ: dict[str, str], silent_redis: str, rt: Any, tmp_path: Any) -> Job:
    env = {**os.environ, **environ, "VALETKEY_REDIS_URL": silent_redis, "PYTHONPATH": os.getcwd()}
    log = open(tmp_path / "request.log", "wb")
    p = subprocess.Popen([sys.executable, "-c", DYING_REQUEST], env=env, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
    try:
        job = wait_for(lambda: next(iter(rows(rt)), None), 30, "the request to commit its job row")
        time.sleep(0.3)  # it is now waiting for Redis to take the audit entry
        assert p.poll() is None, (tmp_path / "request.log").read_text()
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)
        log.close()
    assert "create returned" not in (tmp_path / "request.log").read_text()
    return job


def test_a_request_killed_after_its_row_leaves_a_job_that_never_runs(environ, rt, client, make_user, silent_redis,
                                                                    tmp_path):
    job = kill_a_request_after_its_row(environ, silent_redis, rt, tmp_path)
    assert job.status == UNCONFIRMED and job.active_key == "staging/orders-api"
    assert audit_events(rt) == []  # its request never reached the audit trail

    # Users see the contract's statuses: it reads as queued, and it holds the service meanwhile.
    viewer = make_user("dev@acme.test", ("staging", "developer"))
    assert client.get(f"/api/v1/jobs/{job.id}", headers=viewer).get_json()["status"] == QUEUED

    # A real worker is handed the job's message (as if the enqueue had happened) and leaves it alone.
    log = open(tmp_path / "worker.log", "wb")
    w = start(["worker", "--threads", "1"], {**environ, "VALETKEY_SWEEP_INTERVAL": "0.5"}, log)
    try:
        send_run_job(rt.broker, job.id)
        time.sleep(4)  # longer than a worker waits for a request to confirm its job
        got = rt.jobs.get(job.id)
        assert (got.status, got.attempts, got.started_at) == (UNCONFIRMED, 0, None)
        assert rt.events.read(job.id, None) == []  # not even "picked up"
        # Its request is long gone: the worker's sweeper ends it, once, audited.
        with rt.engine.begin() as c:
            c.execute(update(Job).where(Job.id == job.id).values(
                created_at=dt.datetime.now(dt.timezone.utc) - UNCONFIRMED_TIMEOUT - dt.timedelta(seconds=1)))
        ended = wait_for(lambda: (lambda j: j if j.status == FAILED else None)(rt.jobs.get(job.id)), 20,
                         "the sweeper to end the unconfirmed job")
    finally:
        os.killpg(w.pid, signal.SIGTERM)
        w.wait(20)
        log.close()
    assert (ended.detail, ended.active_key, ended.attempts) == (NEVER_CONFIRMED, None, 0)
    entries = [e for e in audit_events(rt) if e["job_id"] == job.id]
    assert [(e["outcome"], e["action"], e["actor"], e["detail"]) for e in entries] == [
        ("failed", RESTART, "dev@acme.test", NEVER_CONFIRMED)]
    # The service is free again.
    r = client.post("/api/v1/environments/staging/services/orders-api/restart", headers=viewer,
                    json={"dry_run": True})
    assert r.status_code != 409


def test_a_worker_waits_for_a_request_that_confirms_its_job_late(rt):
    """The message may arrive before the request promotes the job: the claim waits for it."""
    job = rt.jobs.create(action=RESTART, environment="staging", target="orders-api", actor="dev@acme.test",
                         source="api")
    with rt.engine.begin() as c:  # back to the moment between the enqueue and the promotion
        c.execute(update(Job).where(Job.id == job.id).values(status=UNCONFIRMED))
    assert rt.jobs.claim(job.id, wait=0.3) is None  # never promoted: not claimed
    promote = threading.Timer(0.3, lambda: rt.jobs._confirm(job.id, QUEUED))
    promote.start()
    claimed = rt.jobs.claim(job.id)
    promote.join()
    assert claimed is not None and claimed.attempts == 1


def test_a_job_promoted_after_its_message_was_given_up_on_is_sent_again(rt):
    """Promoted after the worker stopped waiting: the sweeper re-sends it as a stale queued job."""
    job = rt.jobs.create(action=RESTART, environment="staging", target="orders-api", actor="dev@acme.test",
                         source="api")
    stale = dt.datetime.now(dt.timezone.utc) - QUEUED_RESEND - dt.timedelta(seconds=1)
    with rt.engine.begin() as c:
        c.execute(update(Job).where(Job.id == job.id).values(created_at=stale))
    before = rt.redis.llen("dramatiq:valetkey")
    assert sweep(rt) >= 1
    assert rt.redis.llen("dramatiq:valetkey") == before + 1
    assert rt.jobs.get(job.id).status == QUEUED
    assert [e.type for e in rt.events.read(job.id, None)][-1] == "redelivered"


def test_an_unconfirmed_job_is_only_ended_after_its_request_had_time(rt):
    job = rt.jobs.create(action=RESTART, environment="staging", target="orders-api", actor="dev@acme.test",
                         source="api")
    with rt.engine.begin() as c:
        c.execute(update(Job).where(Job.id == job.id).values(status=UNCONFIRMED))
    sweep(rt)
    assert rt.jobs.get(job.id).status == UNCONFIRMED  # a request still in progress is left alone
    # And a request that confirms after the sweeper ended it is refused (503), never run.
    with rt.engine.begin() as c:
        c.execute(update(Job).where(Job.id == job.id).values(
            created_at=dt.datetime.now(dt.timezone.utc) - UNCONFIRMED_TIMEOUT * 2))
    sweep(rt)
    assert rt.jobs.get(job.id).status == FAILED
    from scope.errors import Unavailable
    with pytest.raises(Unavailable):
        rt.jobs._confirm(job.id, QUEUED)
    assert rt.jobs.claim(job.id, wait=0) is None


DYING_APPROVAL = """
import sys
from wiring.runtime import Runtime
rt = Runtime.from_env(__import__("os").environ)
rt.jobs.approve(sys.argv[1], approver="ops@acme.test", source="web")
print("approve returned", flush=True)
"""


def test_an_approval_killed_before_its_entry_never_runs(environ, rt, silent_redis, tmp_path):
    job = rt.jobs.create(action=RESTART, environment="staging", target="orders-api", actor="dev@acme.test",
                         source="api", approval=True)
    assert rt.jobs.get(job.id).status == "awaiting_approval"
    env = {**os.environ, **environ, "VALETKEY_REDIS_URL": silent_redis, "PYTHONPATH": os.getcwd()}
    log = open(tmp_path / "approve.log", "wb")
    p = subprocess.Popen([sys.executable, "-c", DYING_APPROVAL, job.id], env=env, stdout=log,
                         stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: rt.jobs.get(job.id).approved_by, 30, "the approval's row to commit")
        time.sleep(0.3)
        assert p.poll() is None, (tmp_path / "approve.log").read_text()
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)
        log.close()
    got = rt.jobs.get(job.id)
    assert (got.status, got.approved_by) == (UNCONFIRMED, "ops@acme.test")
    assert rt.jobs.claim(job.id, wait=0.2) is None  # no worker runs it
    assert [e["action"] for e in audit_events(rt) if e["job_id"] == job.id] == [RESTART]  # requested only
    sweep(rt)
    assert rt.jobs.get(job.id).status == UNCONFIRMED  # its approval is recent: the request may still finish
    with rt.engine.begin() as c:
        c.execute(update(Job).where(Job.id == job.id).values(
            approved_at=dt.datetime.now(dt.timezone.utc) - UNCONFIRMED_TIMEOUT - dt.timedelta(seconds=1)))
    sweep(rt)
    ended = rt.jobs.get(job.id)
    assert (ended.status, ended.detail, ended.active_key, ended.attempts) == (FAILED, NEVER_CONFIRMED, None, 0)
    assert [(e["action"], e["outcome"]) for e in audit_events(rt) if e["job_id"] == job.id] == [
        (RESTART, "requested"), (RESTART, "failed")]
