"""Suspend, don't sleep: many operations in flight on one worker thread, against the ECS simulator.

A real Dramatiq worker (one thread) runs the jobs from the real Redis broker; the simulator, the
jobs' clock, the due set and the call budget share one FakeClock. The test moves it forward only
when the worker has nothing left to do (the budget moves it too, while a call waits for its turn),
so "in flight at once" is exact: the first count is taken when every job has had its first step
and nothing else has run.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from typing import Any, Callable

import pytest
import redis as redis_lib
from dramatiq import Worker
from sqlalchemy import text

from cloud.aws import AwsClients
from cloud.budget import CallBudget
from cloud.ecs_gateway import EcsGateway
from ecssim import Simulator
from ecssim.seed import ServiceSpec, seed
from jobs.kinds import RESTART, RUNNING, SUCCEEDED
from jobs.suspended import DUE_KEY, SuspendedJobs
from tests.sim.conftest import NO_RETRY
from wiring.runtime import Runtime
from workers.actors import declare
from workers.runner import JobRunner

N = 50
MSGS = "dramatiq:valetkey.msgs"  # every message not yet acknowledged: queued, prefetched or running
# Half of each ECS bucket (the default share): burst, refill per second (cloud/budget.py).
SHARE = {"DescribeServices": (50, 10), "ListTasks": (50, 10), "DescribeTasks": (50, 10), "StopTask": (50, 20),
         "UpdateService": (25, 2.5)}
CATEGORY = {"DescribeServices": ("DescribeServices", "ListServices"), "ListTasks": ("ListTasks", "DescribeTasks"),
            "StopTask": ("StopTask", "RunTask"), "UpdateService": ("UpdateService",)}


class OneThreadWorker:
    """The job side of one worker process on the simulator's clock."""

    def __init__(self, rt: Runtime, sim: Simulator) -> None:
        assert rt.broker is not None
        self.rt, self.sim, self.broker = rt, sim, rt.broker
        self.suspended = SuspendedJobs(rt.redis, clock=sim.clock.now, lock_seconds=60, visibility=60)
        self.runner = JobRunner(rt, clock=sim.clock.now, suspended=self.suspended)
        declare(self.broker, self.runner, max_age_ms=3_600_000)
        self.worker = Worker(self.broker, worker_threads=1, worker_timeout=50)
        self.in_flight: list[int] = []

    def __enter__(self) -> "OneThreadWorker":
        self.worker.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.worker.stop(timeout=10_000)

    def idle(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.rt.redis.hlen(MSGS):
            assert time.monotonic() < deadline, "the worker did not drain its queue"
            time.sleep(0.01)

    def drive(self, done: Callable[[], bool], sim_seconds: float, step: float = 1.0) -> None:
        """Send due steps, let the worker drain the queue, then move simulated time; until ``done``."""
        end = self.sim.clock.now() + sim_seconds
        while True:
            self.suspended.tick(self.broker)
            self.idle()
            with self.rt.engine.connect() as c:
                self.in_flight.append(c.execute(text("SELECT count(*) FROM jobs WHERE status = :s"),
                                                {"s": RUNNING}).scalar_one())
            if done():
                return
            assert self.sim.clock.now() < end, "the jobs did not finish in simulated time"
            self.sim.advance(step)


@pytest.fixture
def fleet(sim: Simulator, rt: Runtime, redis_url: str, make_user: Callable[..., Any]) -> dict[str, Any]:
    """N services of 2 tasks in one cluster; for every other one the tag moved (restart in batches)."""
    specs = [ServiceSpec(f"svc-{i:02d}", desired=2, min_percent=50) for i in range(N)]
    seeded = seed(sim, "stg", specs)
    for i, spec in enumerate(specs):
        if i % 2:
            sim.push_image(seeded.services[spec.name].repository, "latest")
    make_user("dev@acme.test", ("staging", "developer"))
    sim.throttle.enabled = True  # ECS' own buckets, at AWS' numbers
    budget = CallBudget(redis_lib.Redis.from_url(redis_url), share=0.5, max_wait=3.0, clock=sim.clock.now,
                        sleep=sim.advance)
    # As the product builds it (wiring.runtime.aws_clients): with the process's ECS gateway.
    rt.aws = AwsClients(NO_RETRY, budget=budget, gateway=EcsGateway(redis_lib.Redis.from_url(redis_url), interval=3.0))
    rt.settings = dataclasses.replace(rt.settings, poll_interval=3.0, stability_timeout=900)
    return {"services": [s.name for s in specs]}


def test_fifty_restarts_in_flight_on_one_thread_all_finish_within_the_budget(sim, rt, fleet) -> None:
    t0 = sim.clock.now()
    originals = {svc: {t.arn for t in sim.tasks("stg", svc) if t.wanted_running} for svc in fleet["services"]}
    jobs = [rt.jobs.create(action=RESTART, environment="staging", target=svc, actor="dev@acme.test", source="api")
            for svc in fleet["services"]]
    with OneThreadWorker(rt, sim) as w:
        w.drive(lambda: all(rt.jobs.get(j.id).status not in ("queued", RUNNING) for j in jobs), sim_seconds=900)
    # Every one of them was in flight at once, on one thread, right after their first steps.
    assert w.in_flight[0] == N and max(w.in_flight) == N
    finished = [rt.jobs.get(j.id) for j in jobs]
    assert [(j.status, j.attempts) for j in finished] == [(SUCCEEDED, 1)] * N, [j.detail for j in finished]
    assert all(j.detail.startswith("HEALTHY after ") and "same image" in j.detail for j in finished)
    assert rt.redis.zcard(DUE_KEY) == 0  # nothing left waiting
    # Right, not just finished: the tag-still-right half by one deployment each, the other half in
    # batches, every original stopped once, capacity never below the minimum.
    updates = Counter(c.params["service"] for c in sim.calls.of("UpdateService"))
    assert updates == Counter({svc: 1 for i, svc in enumerate(fleet["services"]) if i % 2 == 0})
    stopped = Counter(c.params["task"] for c in sim.calls.of("StopTask") if not c.error)
    assert set(stopped) == {a for i, svc in enumerate(fleet["services"]) if i % 2 for a in originals[svc]}
    assert max(stopped.values()) == 1
    for svc in fleet["services"]:
        assert sim.truth.violations(svc, since=t0) == [], svc
    # Within Valet Key's share of every ECS throttling bucket: AWS never throttled, and no second
    # (simulated) holds more calls of a bucket than its share's burst plus one second of refill.
    assert [c for c in sim.calls.calls if c.error == "ThrottlingException"] == []
    # The polls were shared (cloud/ecs_gateway.py): per 3 s tick at most ⌈50/10⌉ DescribeServices for
    # every watched service, plus one per job that joined mid-tick (its first step) — where 50 jobs
    # polling on their own would make 50 a tick.
    ticks = math.ceil((sim.clock.now() - t0) / 3.0) + 1
    assert sim.calls.count("DescribeServices") <= ticks * math.ceil(N / 10) + N, (sim.calls.count("DescribeServices"), ticks)
    for name, apis in CATEGORY.items():
        burst, rate = SHARE[name]
        worst = _max_per_second(sim, apis)
        assert 0 < worst <= burst + rate, (name, worst)


def _max_per_second(sim: Simulator, apis: tuple[str, ...]) -> int:
    times = sorted(c.time for c in sim.calls.calls if c.api in apis)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - 1.0:
            j += 1
        best = max(best, i - j + 1)
    return best


# ---- a worker killed mid-flight -------------------------------------------------------------
def test_worker_killed_mid_flight_loses_no_job_and_repeats_no_mutation(client, rt, make_user, environ, tmp_path,
                                                                       realtime_sim) -> None:
    """Restarts in batches, redeploys and one-off tasks in flight on a 1-thread `valetkey worker`; it is
    SIGKILLed while they wait on ECS (and while one may be mid-step); a new worker resumes them all from
    their checkpoints. Every StopTask, UpdateService and RunTask the simulator saw happened once."""
    import os
    import signal

    import boto3

    from tests.conftest import audit_events
    from tests.test_processes import start, wait_for

    sim = realtime_sim
    batches = [f"batch-{i}" for i in range(6)]
    redeploys = ["dep-0", "dep-1"]
    s = seed(sim, "stg", [ServiceSpec(n, desired=2, min_percent=50) for n in batches + redeploys], settle=False)
    wait_for(lambda: all(len([t for t in sim.tasks("stg", n) if t.wanted_running
                              and t.counted_healthy(sim.clock.now(), 0)]) == 2 for n in batches + redeploys),
             60, "the services to run their tasks")
    for n in batches:  # the tag moved: these restarts stop tasks in batches
        sim.push_image(s.services[n].repository, "latest")
    boto3.client("ecs", region_name="us-east-1").register_task_definition(
        family="staging-migrate", networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256",
        memory="512", containerDefinitions=[{"name": "app", "image": s.services["dep-0"].image, "essential": True,
                                             "cpu": 256, "memory": 512}])
    sim.set_one_off("staging-migrate", duration=15, exit_code=0)
    originals = {t.arn for n in batches for t in sim.tasks("stg", n) if t.wanted_running}
    t0 = sim.clock.now()
    dev = make_user("dev@acme.test", ("staging", "developer"))
    base = "/api/v1/environments/staging"
    jobs = [client.post(f"{base}/services/{n}/restart", headers=dev).get_json() for n in batches]
    jobs += [client.post(f"{base}/services/{n}/redeploy", headers=dev).get_json() for n in redeploys]
    tasks = [client.post(f"{base}/tasks", headers=dev, json={"task_definition": "staging-migrate"}).get_json()]
    jobs += tasks
    assert all("id" in j for j in jobs), [j for j in jobs if "id" not in j]
    worker_env = {**environ, "VALETKEY_JOB_LEASE": "5", "VALETKEY_SWEEP_INTERVAL": "1",
                  "VALETKEY_POLL_INTERVAL": "0.5", "VALETKEY_STABILITY_TIMEOUT": "120",
                  "VALETKEY_TASK_TIMEOUT": "120"}
    log = open(tmp_path / "worker.log", "wb")
    a = start(["worker", "--threads", "1"], worker_env, log)
    try:
        def mid_flight() -> bool:
            # The one-off task's RunTask answered and checkpointed: a kill between the two would make the
            # resumed job send the very same RunTask (same clientToken, ECS answers with the same task).
            return (sim.calls.count("StopTask") >= len(batches) and sim.calls.count("UpdateService") >= 2
                    and bool(rt.jobs.get(tasks[0]["id"]).params.get("task_arn"))
                    and all(rt.jobs.get(j["id"]).status == RUNNING for j in jobs))
        wait_for(mid_flight, 60, "worker A to have every job in flight")
        os.killpg(a.pid, signal.SIGKILL)
        a.wait(10)
        killed_at = {j["id"]: rt.jobs.get(j["id"]).status for j in jobs}
        b = start(["worker", "--threads", "1"], worker_env, log)
        try:
            wait_for(lambda: all(rt.jobs.get(j["id"]).status in ("succeeded", "failed") for j in jobs), 150,
                     "worker B to finish every job")
        finally:
            os.killpg(b.pid, signal.SIGTERM)
            b.wait(20)
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
        log.close()
    out = (tmp_path / "worker.log").read_text()
    done = [rt.jobs.get(j["id"]) for j in jobs]
    assert set(killed_at.values()) == {RUNNING}  # every one of them was in flight when A died
    assert [d.status for d in done] == ["succeeded"] * len(jobs), ([d.detail for d in done][6:], out[-1500:])
    # Nothing repeated: each original stopped once, one deployment per redeploy, one task per one-off job.
    stopped = Counter(c.params["task"] for c in sim.calls.of("StopTask"))
    assert set(stopped) == originals and max(stopped.values()) == 1
    assert Counter(c.params["service"] for c in sim.calls.of("UpdateService")) == Counter(redeploys)
    assert sorted(c.params["clientToken"] for c in sim.calls.of("RunTask")) == sorted(t["id"] for t in tasks)
    assert len([t for t in sim.tasks("stg") if t.service is None]) == len(tasks)
    for n in batches:
        assert sim.truth.violations(n, since=t0) == [], n
    for j in jobs:
        assert [e["outcome"] for e in audit_events(rt) if e["job_id"] == j["id"]] == ["requested", "succeeded"]
    assert "Traceback" not in out
