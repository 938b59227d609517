"""Operations in flight on one worker process: N restarts started together against the ECS simulator.

``python -m bench.inflight [--n 50 200 1000] [--threads T] [--latency-ms L] [--naive-sample K]``

For each N: N services of 2 tasks in one cluster of the simulator (moto in this process, ecssim on a
fake clock with ``Timings.realistic()``: a task takes 20-60 s to start and count as healthy, 5-15 s to
stop), N restart jobs created at once with ``JobService.create`` (row, audit, message) into the real
Redis broker, and one ``dramatiq.Worker`` with ``valetkey worker``'s default shape
running the product's actor (16 threads). Every other service had its tag moved, so half the restarts go in
batches (StopTask, then wait for the replacement) and half by a new deployment. Simulated time moves
in steps of one second, and only when the worker has nothing left to run (every due step was sent and
done): a job's rollout takes simulated minutes, the benchmark real seconds.

Figures, for each N:

- ``max``: the most jobs ``running`` at once (counted at every step of simulated time);
- ``wait_p99``: the 99th percentile, in real seconds, of the time from a job's request (its
  ``create``) to its first ECS call: how long the last of a burst of requests sits before anything
  happens, which with jobs that slept on threads was a whole rollout per thread;
- ``calls_per_job_min``: ECS calls (the simulator's log) per job-minute of simulated time.

The naive loop, measured on the same simulator for a sample of K services (default 50): each job
polls on its own, the way a script would — UpdateService(forceNewDeployment), then DescribeServices
every 3 s until one deployment is left, COMPLETED, with its tasks running. Its calls per job-minute
are printed as ``naive: calls_per_job_min=<x>``; the last line is ``inflight: max=<concurrent>
wait_p99=<s> calls_per_job_min=<x>`` for the largest N.

``--latency-ms`` (default 50): every simulated API call blocks its caller this many real milliseconds (ecssim's
``Latency``; the fake clock still times ECS's own changes), as a call to AWS blocks a worker thread.
Without it the simulator answers in microseconds and a worker looks CPU-bound when on AWS it is
latency-bound. Direct reads (a job reading ECS itself instead of the tick's shared snapshot: the
gateway's lock holder too slow, or a job's own change) are counted by their fingerprints in the
call log: ListTasks with a ``serviceName`` and DescribeServices of one name.

The AWS call budget is off here (share 0: calls counted only): its clock is Redis', not the
simulator's. The peak of simulated calls per second is printed, to compare with the budget.
Redis: VALETKEY_BENCH_REDIS_URL (default db 8 of the local server; another database must be empty),
flushed before and after each N.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import redis
from dramatiq import Worker
from moto import mock_aws
from sqlalchemy import text

import ecssim
from ecssim import FakeClock, Latency, Simulator, Timings
from ecssim.seed import ServiceSpec, seed
from jobs.broker import send_run_job
from jobs.kinds import QUEUED, RESTART, RUNNING, SUCCEEDED
from jobs.suspended import SuspendedJobs
from scope.migrate import upgrade
from scope.settings import Settings
from wiring.runtime import Runtime
from workers.actors import declare
from workers.process import default_threads
from workers.runner import JobRunner

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/8"
MSGS = "dramatiq:valetkey.msgs"
ENV, CLUSTER, REGION, ACTOR = "staging", "stg", "us-east-1", "bench@example.test"
NAIVE_POLL = 3.0
# An assumption (AWS publishes no ECS API latency): a same-Region HTTPS call to an AWS API takes tens
# of ms (60-130 ms measured for small S3 uploads from Lambda, kkc.github.io/2020/03/16/s3-latency);
# 50 ms for a small Describe/List. The default, because at 0 the bench measured a CPU-bound worker
# that AWS never shows: the thread count and the gateway's tick read both depend on it.
DEFAULT_LATENCY_MS = 50.0


def p99(xs: list[float]) -> float:
    s = sorted(xs)
    return s[max(0, math.ceil(len(s) * 0.99) - 1)]


def _fleet(sim: Simulator, n: int, prefix: str) -> list[str]:
    names = [f"{prefix}-{i:04d}" for i in range(n)]
    seeded = seed(sim, CLUSTER, [ServiceSpec(name, desired=2, min_percent=50) for name in names],
                  cidr=f"10.{hash(prefix) % 200 + 20}")
    for i, name in enumerate(names):
        if i % 2:  # the tag moved: this restart goes in batches
            sim.push_image(seeded.services[name].repository, "latest")
    return names


def run_product(n: int, threads: int, url: str, tmp: Path, latency: float = 0.0) -> dict[str, Any]:
    sim = ecssim.install(Simulator(clock=FakeClock(), timings=Timings.realistic(), seed=11,
                                   latency=Latency(latency)))
    r = redis.Redis.from_url(url)
    r.flushdb()
    try:
        names = _fleet(sim, n, "svc")
        (tmp / "environments.toml").write_text(
            f'[environments.{ENV}]\nclass = "staging"\nregion = "{REGION}"\ncluster = "{CLUSTER}"\n')
        db = tmp / f"jobs-{n}.db"
        settings = Settings.from_env({"VALETKEY_REDIS_URL": url, "VALETKEY_DATABASE_URL": f"sqlite:///{db}",
                                      "VALETKEY_ENVIRONMENTS": str(tmp / "environments.toml"),
                                      "VALETKEY_AWS_BUDGET_SHARE": "0", "VALETKEY_POLL_INTERVAL": "3",
                                      "VALETKEY_STABILITY_TIMEOUT": "1800"})
        rt = Runtime.from_settings(settings)
        upgrade(rt.engine)
        rt.users.add_user(ACTOR, name="Bench Developer")
        rt.users.grant(ACTOR, ENV, "developer", rt.catalog, by="bench")
        first_call: dict[str, float] = {}

        def note_first(params: dict[str, Any], **_: Any) -> None:
            for name in params.get("services") or []:
                first_call.setdefault(name, time.monotonic())

        def ecs_client(env: Any) -> Any:
            client = rt.aws.ecs(env)
            client.meta.events.register("before-parameter-build.ecs.DescribeServices", note_first,
                                        unique_id="bench-inflight-first-call")
            return client

        assert rt.broker is not None
        suspended = SuspendedJobs(rt.redis, clock=sim.clock.now, lock_seconds=600, visibility=600)
        runner = JobRunner(rt, clock=sim.clock.now, suspended=suspended, ecs_client=ecs_client)
        declare(rt.broker, runner, max_age_ms=3_600_000)
        sim.calls.clear()
        worker = Worker(rt.broker, worker_threads=threads, worker_timeout=50)
        worker.start()
        t0 = sim.clock.now()
        requested: dict[str, tuple[str, float]] = {}
        for name in names:  # the burst: every request at once, the worker already running
            job = rt.jobs.create(action=RESTART, environment=ENV, target=name, actor=ACTOR, source="api")
            requested[job.id] = (name, time.monotonic())
        finished_at: dict[str, float] = {}
        most = resent = 0
        wall0 = time.monotonic()
        try:
            while len(finished_at) < n:
                suspended.tick(rt.broker, limit=100_000)
                # As the worker's sweeper does (workers/process.py; its lease and takeover parts need the
                # lease keeper this bench does not run): a job promoted after its message's claim gave up
                # waiting (a loaded machine) stays queued, and is sent again.
                for job in rt.jobs.stale():
                    if job.status == QUEUED:
                        send_run_job(rt.broker, job.id)
                        resent += 1
                while r.hlen(MSGS):
                    time.sleep(0.005)
                with rt.engine.connect() as c:
                    rows = c.execute(text("SELECT id, status FROM jobs")).all()
                most = max(most, sum(1 for _, s in rows if s == RUNNING))
                for job_id, status in rows:
                    if status not in ("queued", RUNNING) and job_id not in finished_at:
                        finished_at[job_id] = sim.clock.now()
                if len(finished_at) < n:
                    if sim.clock.now() - t0 > 3600:
                        raise SystemExit(f"inflight: {n - len(finished_at)} job(s) unfinished after an hour "
                                         "of simulated time")
                    sim.advance(1.0)
        finally:
            worker.stop(timeout=30_000)
        wall = time.monotonic() - wall0
        with rt.engine.connect() as c:
            statuses = Counter(s for (s,) in c.execute(text("SELECT status FROM jobs")))
            # A job that did not succeed says why (its detail), so a failure can be told from noise.
            for target, status, detail in c.execute(text(
                    "SELECT target, status, detail FROM jobs WHERE status != :ok LIMIT 10"), {"ok": SUCCEEDED}):
                print(f"  not succeeded: {target} {status}: {detail[:300]}", file=sys.stderr)
        rt.close()
        waits = [first_call[name] - at for name, at in requested.values() if name in first_call]
        ecs_calls = [c for c in sim.calls.calls if c.service == "ecs"]
        job_minutes = sum(t - t0 for t in finished_at.values()) / 60.0
        per_second = Counter(int(c.time) for c in ecs_calls)
        return {"n": n, "max": most, "wait_p99": p99(waits) if waits else float("nan"),
                "calls_per_job_min": len(ecs_calls) / job_minutes, "calls": len(ecs_calls),
                "succeeded": statuses.get(SUCCEEDED, 0), "statuses": dict(statuses),
                "sim_minutes": (max(finished_at.values()) - t0) / 60.0, "wall": wall,
                "peak_calls_per_s": max(per_second.values()) if per_second else 0,
                "by_api": Counter(c.api for c in ecs_calls), "resent": resent,
                # Direct reads: the shared snapshot lists the whole cluster and describes services by
                # up to 10; a job reading for itself lists its service's tasks and describes one name.
                "direct_list": sum(1 for c in ecs_calls if c.api == "ListTasks" and "serviceName" in c.params),
                "direct_describe": sum(1 for c in ecs_calls if c.api == "DescribeServices"
                                       and len(c.params.get("services") or []) == 1)}
    finally:
        r.flushdb()
        r.close()
        ecssim.uninstall()


def run_naive(k: int) -> dict[str, Any]:
    """Each job polls on its own: UpdateService, then DescribeServices every 3 s until it is done."""
    sim = ecssim.install(Simulator(clock=FakeClock(), timings=Timings.realistic(), seed=11))
    try:
        names = _fleet(sim, k, "naive")
        ecs = boto3.client("ecs", region_name=REGION)
        sim.calls.clear()
        t0 = sim.clock.now()
        due = {name: t0 for name in names}
        started: set[str] = set()
        done: dict[str, float] = {}
        while len(done) < k:
            now = sim.clock.now()
            for name in [x for x, at in due.items() if at <= now]:
                if name not in started:
                    ecs.update_service(cluster=CLUSTER, service=name, forceNewDeployment=True)
                    started.add(name)
                else:
                    svc = ecs.describe_services(cluster=CLUSTER, services=[name])["services"][0]
                    deps = svc["deployments"]
                    if (len(deps) == 1 and deps[0].get("rolloutState") == "COMPLETED"
                            and svc["runningCount"] == svc["desiredCount"]):
                        done[name] = now
                        del due[name]
                        continue
                due[name] = now + NAIVE_POLL
            if len(done) < k:
                sim.advance(1.0)
        calls = [c for c in sim.calls.calls if c.service == "ecs"]
        job_minutes = sum(t - t0 for t in done.values()) / 60.0
        return {"k": k, "calls_per_job_min": len(calls) / job_minutes, "calls": len(calls),
                "minutes": job_minutes / k}
    finally:
        ecssim.uninstall()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.inflight", description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[50, 200, 1000], help="restarts per run")
    ap.add_argument("--threads", type=int, default=default_threads(),
                    help="worker threads (default: valetkey worker's, 16)")
    ap.add_argument("--latency-ms", type=float, default=DEFAULT_LATENCY_MS,
                    help=f"real milliseconds every simulated API call takes (default {DEFAULT_LATENCY_MS:g}; "
                         "0: the simulator's own speed, as figures before it were measured)")
    ap.add_argument("--naive-sample", type=int, default=50, help="services polled by the naive loop")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("dramatiq").setLevel(logging.CRITICAL)
    url = os.environ.get("VALETKEY_BENCH_REDIS_URL", DEFAULT_REDIS_URL)
    r = redis.Redis.from_url(url)
    if url != DEFAULT_REDIS_URL and r.dbsize():
        raise SystemExit("inflight: the Redis database of VALETKEY_BENCH_REDIS_URL is not empty; give an empty "
                         "one (it is flushed before and after the run)")
    r.close()
    for k, v in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                 "AWS_DEFAULT_REGION": REGION}.items():
        os.environ[k] = v
    os.environ.pop("AWS_ENDPOINT_URL", None)  # moto in this process, not a server
    tmp = Path(tempfile.mkdtemp(prefix="valetkey-inflight-"))
    try:
        with mock_aws():
            naive = run_naive(args.naive_sample)
            print(f"naive: {naive['k']} jobs each polling on its own every {NAIVE_POLL:g}s: {naive['calls']} ECS "
                  f"calls, {naive['minutes']:.1f} simulated min per rollout; "
                  f"calls_per_job_min={naive['calls_per_job_min']:.1f}", flush=True)
            results = []
            for n in args.n:
                res = run_product(n, args.threads, url, tmp, args.latency_ms / 1000.0)
                results.append(res)
                print(f"n={n}: 1 process x {args.threads} threads, latency {args.latency_ms:g} ms; "
                      f"{res['succeeded']}/{n} succeeded "
                      f"{res['statuses']}; max={res['max']} in flight; wait_p99={res['wait_p99']:.2f}s; "
                      f"{res['calls']} ECS calls over {res['sim_minutes']:.1f} simulated min "
                      f"(peak {res['peak_calls_per_s']}/s) -> calls_per_job_min={res['calls_per_job_min']:.1f} "
                      f"({res['calls_per_job_min'] / naive['calls_per_job_min']:.2f} x naive); "
                      f"real {res['wall']:.0f}s; {res['resent']} resent; direct reads: ListTasks(serviceName)={res['direct_list']} "
                      f"DescribeServices(1 name)={res['direct_describe']}; "
                      f"by API {dict(res['by_api'].most_common())}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    last = results[-1]
    print(f"inflight: max={last['max']} wait_p99={last['wait_p99']:.2f} "
          f"calls_per_job_min={last['calls_per_job_min']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
