"""Real processes: a worker killed mid-job, and every Procfile process stopping on SIGTERM."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import audit_events

RESTART = "/api/v1/environments/staging/services/slow-api/restart"


def start(args: list[str], environ: dict[str, str], log) -> subprocess.Popen:
    env = {**os.environ, **environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "valetkey.cli", *args], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def worker_env(environ, steady_tasks):
    return {**environ, "VALETKEY_JOB_LEASE": "1", "VALETKEY_SWEEP_INTERVAL": "0.5",
            "VALETKEY_POLL_INTERVAL": "0.2", "VALETKEY_STABILITY_TIMEOUT": "60"}


def test_worker_killed_mid_job_is_finished_once_by_another(client, rt, make_user, worker_env, tmp_path,
                                                           realtime_sim):
    from collections import Counter

    from ecssim.seed import ServiceSpec, seed

    sim = realtime_sim
    s = seed(sim, "stg", [ServiceSpec("slow-api", desired=4, min_percent=50)], settle=False)
    wait_for(lambda: len([t for t in sim.tasks("stg", "slow-api") if t.wanted_running
                          and t.counted_healthy(sim.clock.now(), 0)]) == 4, 30, "the service to run 4 tasks")
    # The tag moved: a new deployment would change the image, so the restart stops tasks in batches.
    sim.push_image(s.services["slow-api"].repository, "latest")
    originals = {t.arn for t in sim.tasks("stg", "slow-api") if t.wanted_running}
    dev = make_user("dev@acme.test", ("staging", "developer"))
    t0 = sim.clock.now()
    job = client.post(RESTART, headers=dev).get_json()
    log = open(tmp_path / "worker.log", "wb")
    a = start(["worker", "--threads", "1"], worker_env, log)
    try:
        def a_is_waiting():
            return sim.calls.count("StopTask") == 2 and any(
                e.message.startswith("Old tasks going") for e in rt.events.read(job["id"], None))
        wait_for(a_is_waiting, 60, "worker A to stop the first batch and wait for its replacements")
        os.killpg(a.pid, signal.SIGKILL)
        a.wait(10)
        b = start(["worker", "--threads", "1"], worker_env, log)
        try:
            done = wait_for(lambda: (lambda j: j if j.status in ("succeeded", "failed") else None)(
                rt.jobs.get(job["id"])), 90, "worker B to finish the job")
        finally:
            os.killpg(b.pid, signal.SIGTERM)
            b.wait(20)
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
        log.close()
    assert done.status == "succeeded", (done.detail, (tmp_path / "worker.log").read_text()[-3000:])
    # Worker B resumes the suspended job under its claim (attempt 1, from the due set), unless its sweeper
    # saw the 1 s lease lapse first and took it over (attempt 2): either way from the checkpoint, once.
    assert done.attempts in (1, 2) and done.detail.startswith("HEALTHY after")
    # Resumed, not repeated: every original stopped exactly once, and capacity held throughout.
    stopped = Counter(c.params["task"] for c in sim.calls.of("StopTask"))
    assert set(stopped) == originals and max(stopped.values()) == 1
    assert sim.truth.violations("slow-api", since=t0) == []
    outcomes = [e["outcome"] for e in audit_events(rt) if e["job_id"] == job["id"]]
    assert outcomes == ["requested", "succeeded"]


@pytest.mark.parametrize("command", [["worker"], ["audit", "consume"], ["schedule", "run"],
                                     ["web", "--bind", "127.0.0.1:0", "--workers", "1"]])
def test_process_stops_cleanly_on_sigterm(environ, tmp_path, command):
    log = open(tmp_path / "p.log", "wb")
    p = start(command, environ, log)
    time.sleep(2.5)
    assert p.poll() is None, (tmp_path / "p.log").read_text()
    os.killpg(p.pid, signal.SIGTERM)
    code = p.wait(20)
    log.close()
    out = (tmp_path / "p.log").read_text()
    assert code == 0, out
    assert "Traceback" not in out


def test_worker_without_threads_runs_sixteen(environ, tmp_path):
    """A worker is latency-bound (its steps wait on AWS calls), so its default is not a thread per core."""
    from workers.process import DEFAULT_THREADS

    log = open(tmp_path / "w.log", "wb")
    p = start(["worker"], environ, log)
    try:
        line = wait_for(lambda: next((ln for ln in (tmp_path / "w.log").read_text().splitlines()
                                      if "worker started with" in ln), None), 60, "the worker to start")
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(20)
        log.close()
    assert DEFAULT_THREADS == 16
    assert line.endswith(f"worker started with {DEFAULT_THREADS} threads")
