"""``valetkey worker``: a Dramatiq worker in this process, plus the sweeper of orphaned jobs."""
from __future__ import annotations

import datetime as dt
import logging
import os
import threading

from dramatiq import Worker

from jobs.broker import send_run_job
from jobs.kinds import QUEUED, RUNNING
from jobs.outcomes import recover_outcomes
from jobs.suspended import run_ticker
from wiring.runtime import Runtime
from workers.actors import declare
from workers.runner import JobRunner

log = logging.getLogger("valetkey.worker")
MAX_TAKEOVERS = 3


def sweep(rt: Runtime) -> int:
    """Re-send or fail jobs whose worker vanished; returns how many were touched.

    Jobs whose approval window passed end ``rejected`` ("approval expired").
    A running job whose heartbeat is older than the lease lost its worker: the
    message is sent again (claim() lets exactly one worker take it over) until
    it has been attempted MAX_TAKEOVERS times, then it is failed. A queued job
    past the age limit is failed, never run. A finished job whose outcome
    never reached the audit trail gets it appended (jobs/outcomes.py).
    """
    touched = rt.jobs.expire_approvals()
    max_age = dt.timedelta(seconds=rt.settings.job_max_age_seconds)
    now = rt.jobs.clock()
    for job in rt.jobs.stale(rt.jobs.lease * 2):
        if job.status == QUEUED and now - (job.approved_at or job.created_at) > max_age:
            rt.jobs.finish(job.id, "failed", "Expired: never picked up within the age limit; not run.")
        elif job.status == RUNNING and job.attempts >= MAX_TAKEOVERS:
            rt.jobs.finish(job.id, "failed", f"The worker was lost {job.attempts} times; gave up. "
                                             "Check the service state before trying again.")
        else:
            assert rt.broker is not None
            send_run_job(rt.broker, job.id)
            rt.events.append(job.id, "redelivered", "No sign of the worker; handing the job to another one")
        touched += 1
    return touched + recover_outcomes(rt.engine, rt.redis, rt.audit)


def default_threads() -> int:
    """A thread per core: a job waiting on ECS is suspended and holds none (jobs/suspended.py)."""
    return os.cpu_count() or 1


def run_worker(rt: Runtime, stop: threading.Event, threads: int | None = None) -> None:
    assert rt.broker is not None
    threads = threads or default_threads()
    runner = JobRunner(rt)
    declare(rt.broker, runner, max_age_ms=rt.settings.job_max_age_seconds * 1000)
    worker = Worker(rt.broker, worker_threads=threads, worker_timeout=1000)
    worker.start()
    ticker_stop = threading.Event()
    run_ticker(runner.suspended, rt.broker, ticker_stop)  # sends the steps of suspended jobs when due
    log.info("worker started with %d threads", threads)
    try:
        while not stop.wait(rt.settings.sweep_interval):
            try:
                n = sweep(rt)
                if n:
                    log.info("sweeper handled %d stale job(s)", n)
            except Exception:  # noqa: BLE001 - the sweeper must never take the worker down
                log.exception("sweeper failed")
    finally:
        log.info("worker stopping")
        ticker_stop.set()
        worker.stop(timeout=10_000)
        rt.close()
