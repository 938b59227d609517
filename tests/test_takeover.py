"""Takeover with real worker processes on the real-time ECS simulator (issue 21; issue 18's Redis outage).

With the default lease and sweep interval: a worker SIGKILLed mid-restart is
taken over by another (its suspended job's next step runs there, or the
sweeper takes a job that died mid-step) and the service is free again within
30 s; a worker sent SIGTERM hands its job back at once or leaves it suspended
for the others; a job in flight survives its Redis
being down for 10 s. Never two workers act on one job: every original task is
stopped exactly once and capacity holds throughout.
"""
from __future__ import annotations

import os
import signal
import time
from collections import Counter
from typing import Any

import pytest

from jobs.audit_stream import STREAM, AuditEvent
from scope.settings import Settings
from tests.outage import RedisServer
from tests.test_processes import RESTART, start, wait_for
from wiring.runtime import Runtime


def restart_under_way(sim: Any, client: Any, make_user: Any) -> tuple[dict[str, Any], set[str], float]:
    """A batched restart of slow-api (4 tasks, 50 % minimum) requested; returns (job, original tasks, t0)."""
    from ecssim.seed import ServiceSpec, seed

    s = seed(sim, "stg", [ServiceSpec("slow-api", desired=4, min_percent=50)], settle=False)
    wait_for(lambda: len([t for t in sim.tasks("stg", "slow-api") if t.wanted_running
                          and t.counted_healthy(sim.clock.now(), 0)]) == 4, 30, "the service to run 4 tasks")
    sim.push_image(s.services["slow-api"].repository, "latest")  # batches, not a new deployment
    originals = {t.arn for t in sim.tasks("stg", "slow-api") if t.wanted_running}
    dev = make_user("dev@acme.test", ("staging", "developer"))
    t0 = sim.clock.now()
    r = client.post(RESTART, headers=dev)
    assert r.status_code == 202, r.get_json()
    return r.get_json(), originals, t0


def waiting_for_replacements(sim: Any, rt: Runtime, job_id: str) -> bool:
    return sim.calls.count("StopTask") == 2 and any(
        e.message.startswith("Old tasks going") for e in rt.events.read(job_id, None))


def finished(rt: Runtime, job_id: str) -> Any:
    job = rt.jobs.get(job_id)
    return job if job.status in ("succeeded", "failed") else None


def assert_resumed_not_repeated(sim: Any, originals: set[str], t0: float) -> None:
    stopped = Counter(c.params["task"] for c in sim.calls.of("StopTask"))
    assert set(stopped) == originals and max(stopped.values()) == 1
    assert sim.truth.violations("slow-api", since=t0) == []


@pytest.fixture
def defaults_env(environ: dict[str, str], steady_tasks: str) -> dict[str, str]:
    """The worker's own defaults for lease and sweep (no VALETKEY_JOB_LEASE / SWEEP_INTERVAL)."""
    return {**environ, "VALETKEY_POLL_INTERVAL": "0.5", "VALETKEY_STABILITY_TIMEOUT": "60"}


def test_a_worker_sigkilled_mid_job_is_taken_over_and_its_service_free_within_30s(
        client, rt, make_user, defaults_env, tmp_path, realtime_sim):
    sim = realtime_sim
    assert Settings.from_env(defaults_env).job_lease_seconds <= 10  # the defaults are what is tested
    job, originals, t0 = restart_under_way(sim, client, make_user)
    log = open(tmp_path / "workers.log", "wb")
    a = start(["worker", "--threads", "1"], defaults_env, log)
    b = None
    try:
        wait_for(lambda: waiting_for_replacements(sim, rt, job["id"]), 60, "worker A to wait for replacements")
        b = start(["worker", "--threads", "1"], defaults_env, log)  # the survivor, idle
        time.sleep(3)  # B is up and polling its queue
        os.killpg(a.pid, signal.SIGKILL)
        killed = time.monotonic()
        a.wait(10)
        done = wait_for(lambda: finished(rt, job["id"]), 60, "worker B to take the job over and finish it")
        took = time.monotonic() - killed
        print(f"job finished {took:.1f}s after worker A was killed")
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(20)
        log.close()
    out = (tmp_path / "workers.log").read_text()
    assert done.status == "succeeded", (done.detail, out[-3000:])
    # Waiting on ECS the job is suspended, not in A's thread: B's tick sends its next step under the
    # same claim (attempts 1). Killed mid-step, its lease runs out and B's sweeper takes it over (2).
    assert done.attempts in (1, 2) and took < 30, (took, out[-3000:])
    assert rt.jobs.active_job("staging", "slow-api") is None  # the service is free
    assert_resumed_not_repeated(sim, originals, t0)


def test_a_worker_sent_sigterm_hands_its_job_back_at_once(client, rt, make_user, defaults_env, tmp_path,
                                                           realtime_sim):
    sim = realtime_sim
    job, originals, t0 = restart_under_way(sim, client, make_user)
    log = open(tmp_path / "workers.log", "wb")
    a = start(["worker", "--threads", "1"], defaults_env, log)
    b = None
    try:
        wait_for(lambda: waiting_for_replacements(sim, rt, job["id"]), 60, "worker A to wait for replacements")
        b = start(["worker", "--threads", "1"], defaults_env, log)
        time.sleep(3)
        os.killpg(a.pid, signal.SIGTERM)
        sent = time.monotonic()
        assert a.wait(20) == 0
        exited = rt.jobs.clock()
        # A hands back a job in the middle of a step (attempts 2, claimed by B); a suspended one
        # needs no hand-back: B's tick sends its next step under the same claim. Either way B
        # carries on, heartbeating the job, well within a lease of the signal.
        wait_for(lambda: rt.jobs.get(job["id"]).heartbeat_at > exited or finished(rt, job["id"]), 20,
                 "worker B to carry on with the job")
        claimed = time.monotonic() - sent
        done = wait_for(lambda: finished(rt, job["id"]), 60, "worker B to finish the job")
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(20)
        log.close()
    out = (tmp_path / "workers.log").read_text()
    # Handed back, not left to its lease: B had it sooner than a lease (10 s) after the signal.
    assert claimed < Settings.from_env(defaults_env).job_lease_seconds, (claimed, out[-3000:])
    handed_back = "handed back" in [e.type for e in rt.events.read(job["id"], None)]
    assert done.attempts == (2 if handed_back else 1), (done.attempts, handed_back)
    assert done.status == "succeeded", (done.detail, out[-3000:])
    assert_resumed_not_repeated(sim, originals, t0)


def test_a_job_in_flight_survives_its_redis_down_for_10s(client, make_user, environ, steady_tasks, tmp_path,
                                                        realtime_sim):
    sim = realtime_sim
    redis_server = RedisServer(tmp_path, persistent=True).start()
    env = {**environ, "VALETKEY_REDIS_URL": redis_server.url, "VALETKEY_POLL_INTERVAL": "0.5",
           "VALETKEY_STABILITY_TIMEOUT": "90"}
    rt = Runtime.from_settings(Settings.from_env(env))
    from web import create_app
    own_client = create_app({"TESTING": True}, runtime=rt).test_client()
    log = open(tmp_path / "worker.log", "wb")
    w = start(["worker", "--threads", "1"], env, log)
    try:
        job, originals, t0 = restart_under_way(sim, own_client, make_user)
        wait_for(lambda: waiting_for_replacements(sim, rt, job["id"]), 60, "the worker to be mid-restart")
        redis_server.stop()
        time.sleep(10)
        redis_server.start()
        done = wait_for(lambda: finished(rt, job["id"]), 90, "the job to finish after the outage")
        # Its outcome entry reaches the audit stream (at once, or from the worker's outbox).
        entries = wait_for(lambda: [e for e in (AuditEvent.decode(f) for _, f in rt.redis.xrange(STREAM))
                                    if e.job_id == job["id"] and e.outcome == done.status], 60,
                           "the job's outcome entry")
    finally:
        os.killpg(w.pid, signal.SIGTERM)
        w.wait(30)
        log.close()
        rt.close()
        redis_server.stop()
    out = (tmp_path / "worker.log").read_text()
    assert done.status == "succeeded" and done.attempts == 1, (done.detail, out[-3000:])
    assert "Internal error" not in done.detail
    assert len(entries) == 1
    assert_resumed_not_repeated(sim, originals, t0)
