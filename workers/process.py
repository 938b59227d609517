"""``valetkey worker``: a Dramatiq worker in this process, the lease keeper of its jobs, and the sweeper.

Takeover: this process renews the leases of all the jobs it holds in one
statement every third of a lease (VALETKEY_JOB_LEASE, 10 s); killed, its jobs'
leases run out within a lease, and every worker's sweeper (every
VALETKEY_SWEEP_INTERVAL, 3 s) hands them to another worker, which resumes each
from its checkpoint. On SIGTERM each job is handed back at its next heartbeat
(between polls) and taken by another worker at once.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
import time

from dramatiq import Worker

from jobs.broker import send_run_job
from jobs.kinds import QUEUED, RUNNING, UNCONFIRMED
from cloud.errors import outage
from jobs.outcomes import recover_outcomes
from jobs.service import NEVER_CONFIRMED
from jobs.suspended import run_ticker
from wiring.runtime import Runtime
from workers.actors import declare, declare_notify
from workers.notify import Notifier
from workers.runner import JobRunner

log = logging.getLogger("valetkey.worker")
MAX_TAKEOVERS = 3


class DatabaseWatch:
    """When this process last found the database unreachable (leases renewals, sweeps).

    After an outage every lease looks expired, though the workers that hold them are
    alive and about to renew them: running jobs are judged only once the database has
    answered for a whole lease again, so a live worker is never taken over.
    """

    def __init__(self, lease: float) -> None:
        self.lease = lease
        self._down_at = time.monotonic() - lease

    def down(self) -> None:
        self._down_at = time.monotonic()

    def leases_trustworthy(self) -> bool:
        return time.monotonic() - self._down_at >= self.lease


def sweep(rt: Runtime, take_over: bool = True) -> int:
    """Re-send or fail jobs whose worker vanished; returns how many were touched.

    Jobs whose approval window passed end ``rejected`` ("approval expired").
    A running job whose heartbeat is older than the lease lost its worker: the
    message is sent again (claim() lets exactly one worker take it over) until
    it has been attempted MAX_TAKEOVERS times, then it is failed. A queued job
    past the age limit is failed, never run. Without ``take_over`` (just after a
    database outage) running jobs are left alone. A job still unconfirmed long after
    its request (the web process died between its row and its promotion) is
    ended "never confirmed; nothing was done", with its audit entry. A finished job whose outcome
    never reached the audit trail gets it appended (jobs/outcomes.py).
    """
    touched = rt.jobs.expire_approvals()
    max_age = dt.timedelta(seconds=rt.settings.job_max_age_seconds)
    now = rt.jobs.clock()
    for job in rt.jobs.stale():
        if job.status == UNCONFIRMED:  # its request died before it was accepted: it must never run
            rt.jobs.finish(job.id, "failed", NEVER_CONFIRMED)
        elif job.status == QUEUED and now - (job.approved_at or job.created_at) > max_age:
            rt.jobs.finish(job.id, "failed", "Expired: never picked up within the age limit; not run.")
        elif job.status == RUNNING and not take_over:
            continue
        elif job.status == RUNNING and job.attempts >= MAX_TAKEOVERS:
            rt.jobs.finish(job.id, "failed", f"The worker was lost {job.attempts} times; gave up. "
                                             "Check the service state before trying again.")
        else:
            assert rt.broker is not None
            send_run_job(rt.broker, job.id)
            rt.events.append(job.id, "redelivered", "No sign of the worker; handing the job to another one")
        touched += 1
    return touched + recover_outcomes(rt.engine, rt.redis, rt.audit)


# How long a job's progress event waits out a Redis outage before it is dropped (the job goes on).
REDIS_PATIENCE = 60.0


def keep_leases(rt: Runtime, stop: threading.Event, db: DatabaseWatch) -> None:
    """Renew this process's job leases every third of a lease until ``stop``: one statement for all."""
    every = rt.jobs.lease.total_seconds() / 3
    while not stop.wait(every):
        try:
            rt.jobs.renew_held()
        except Exception as e:  # noqa: BLE001 - a database outage: the leases run out, jobs are taken over
            db.down()
            log.warning("could not renew job leases: %s", outage(e) or type(e).__name__)


# A job waiting on ECS is suspended and holds no thread (jobs/suspended.py), but a step's own time is
# mostly AWS calls in flight — tens of milliseconds each against AWS, the GIL released — and, while a
# tick's snapshot is read, waiting for it: a worker is latency-bound, not CPU-bound. At 50 ms a call,
# a burst of 200 restarts waited 58 s (p99) for its first ECS call on 2 threads, 14 s on 8, 3.3 s on
# 16 (bench/README.md, bench.inflight). Cores do not enter into it: one process's CPU work is bound
# by one GIL whatever the host; more processes for more CPU. 16 stays below the PostgreSQL pool's
# 25 connections (VALETKEY_DB_POOL_SIZE 5 + VALETKEY_DB_MAX_OVERFLOW 20), which every step uses.
DEFAULT_THREADS = 16


def default_threads() -> int:
    """Job threads of ``valetkey worker`` without ``--threads``: enough AWS calls in flight, not cores."""
    return DEFAULT_THREADS


def run_worker(rt: Runtime, stop: threading.Event, threads: int | None = None) -> None:
    assert rt.broker is not None
    threads = threads or default_threads()
    rt.events.outage_patience = REDIS_PATIENCE
    runner = JobRunner(rt)
    declare(rt.broker, runner, max_age_ms=rt.settings.job_max_age_seconds * 1000)
    declare_notify(rt.broker, Notifier.from_runtime(rt), min_backoff_ms=rt.settings.notify_backoff_ms)
    worker = Worker(rt.broker, worker_threads=threads, worker_timeout=1000)
    worker.start()
    # Leases are renewed until the last job thread is done (not only until SIGTERM): a job still
    # finishing its step must not be taken over meanwhile.
    threads_done = threading.Event()
    db = DatabaseWatch(rt.jobs.lease.total_seconds())
    leases = threading.Thread(target=keep_leases, args=(rt, threads_done, db), name="job-leases", daemon=True)
    leases.start()
    ticker_stop = threading.Event()
    run_ticker(runner.suspended, rt.broker, ticker_stop)  # sends the steps of suspended jobs when due
    log.info("worker started with %d threads", threads)
    try:
        while not stop.wait(rt.settings.sweep_interval):
            try:
                n = sweep(rt, take_over=db.leases_trustworthy())
                if n:
                    log.info("sweeper handled %d stale job(s)", n)
            except Exception as e:  # noqa: BLE001 - the sweeper must never take the worker down
                if outage(e) == "database":
                    db.down()
                if outage(e) is not None:
                    log.warning("sweeper skipped: %s unreachable", outage(e))
                else:
                    log.exception("sweeper failed")
    finally:
        log.info("worker stopping: handing its jobs back")
        rt.jobs.handing_back.set()
        ticker_stop.set()
        worker.stop(timeout=10_000)
        threads_done.set()
        leases.join(5)
        if rt.jobs.outbox.flush():
            log.error("stopping with outcome entries Redis did not take; the sweeper will append them")
        rt.close()
