"""Job lifecycle: create (row, audit, enqueue — in that order), claim, heartbeat, finish.

State changes are compare-and-set UPDATEs so that a redelivered message, a
second worker or a sweeper can never move a job backwards or finish it twice.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from typing import Any, Callable

import dramatiq
from sqlalchemy import func, literal, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from jobs.audit_stream import AuditEvent, AuditLog
from jobs.broker import send_run_job
from jobs.events import JobEvents
from jobs.kinds import FAILED, QUEUED, RUNNING, SUCCEEDED, TERMINAL
from scope.errors import Conflict, NotFound, Unavailable, ValetKeyError
from scope.models import Job, utcnow

log = logging.getLogger(__name__)

# A running job whose worker has not touched it for this long is presumed
# orphaned (worker killed): a redelivered message may take it over.
DEFAULT_LEASE = dt.timedelta(seconds=60)


def iso(t: dt.datetime | None) -> str | None:
    return t.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z") if t else None


def job_dict(job: Job) -> dict[str, Any]:
    """The job object of the HTTP contract."""
    return {"id": job.id, "action": job.action, "environment": job.environment, "target": job.target,
            "status": job.status, "detail": job.detail, "actor": job.actor, "source": job.source,
            "created_at": iso(job.created_at), "started_at": iso(job.started_at),
            "finished_at": iso(job.finished_at), "url": f"/api/v1/jobs/{job.id}"}


class JobService:
    def __init__(self, sessions: sessionmaker[Session], audit: AuditLog, events: JobEvents,
                 broker: dramatiq.Broker | None, clock: Callable[[], dt.datetime] = utcnow,
                 lease: dt.timedelta = DEFAULT_LEASE) -> None:
        self.sessions, self.audit, self.events, self.broker, self.clock = sessions, audit, events, broker, clock
        self.lease = lease

    # ---- web side ---------------------------------------------------------
    def create(self, *, action: str, environment: str, target: str, actor: str, source: str,
               request_id: str = "", params: dict[str, Any] | None = None, exclusive: bool = True,
               detail: str = "") -> Job:
        """Commit the job row, append its ``requested`` audit event, then enqueue.

        Any failure before the enqueue refuses the action (Unavailable) and leaves
        the row failed, so what the database says always matches what happened.
        """
        job = Job(id=uuid.uuid4().hex, action=action, environment=environment, target=target,
                  status=QUEUED, actor=actor, source=source, request_id=request_id, params=params or {},
                  active_key=f"{environment}/{target}" if exclusive else None, detail=detail,
                  created_at=self.clock())
        try:
            with self.sessions.begin() as s:
                s.add(job)
        except IntegrityError:
            running = self.active_job(environment, target)
            if running is None:  # finished in between: one retry is enough
                return self.create(action=action, environment=environment, target=target, actor=actor,
                                   source=source, request_id=request_id, params=params, exclusive=exclusive,
                                   detail=detail)
            conflict = Conflict(f"{target} in {environment} already has a job in progress: {running.id} "
                                f"({running.action}, {running.status}, by {running.actor}).",
                                job_id=running.id, job_url=f"/api/v1/jobs/{running.id}")
            # A refusal like any other: it goes to the audit trail as denied.
            self.audit.record(AuditEvent(actor=actor, source=source, action=action, outcome="denied",
                                         environment=environment, target=target, request_id=request_id,
                                         detail=conflict.detail))
            raise conflict from None
        except SQLAlchemyError as e:
            raise Unavailable("The job database cannot be written right now; nothing was done.") from e
        try:
            self.audit.record(AuditEvent(actor=actor, source=source, action=action, outcome="requested",
                                         environment=environment, target=target, job_id=job.id,
                                         request_id=request_id, detail=detail))
            self.events.append(job.id, "queued", f"{action} of {target} requested by {actor}")
            if self.broker is None:
                raise Unavailable("No job queue is configured.")
            send_run_job(self.broker, job.id)
        except Exception as e:  # noqa: BLE001 - any failure here means the job never runs
            self._abandon(job.id, "Refused: the job queue is unavailable; nothing was done.")
            if isinstance(e, ValetKeyError):
                raise
            raise Unavailable("The job queue is unavailable right now; nothing was done.") from e
        return job

    def _abandon(self, job_id: str, detail: str) -> None:
        try:
            with self.sessions.begin() as s:
                s.execute(update(Job).where(Job.id == job_id, Job.status == QUEUED)
                          .values(status=FAILED, detail=detail, finished_at=self.clock(), active_key=None))
        except SQLAlchemyError:
            log.exception("could not mark job %s failed after enqueue failure", job_id)

    def get(self, job_id: str) -> Job:
        with self.sessions() as s:
            job = s.get(Job, job_id) if len(job_id) <= 32 else None
            if job is None:
                raise NotFound(f"No job {job_id!r}.")
            return job

    def active_job(self, environment: str, target: str) -> Job | None:
        with self.sessions() as s:
            return s.scalar(select(Job).where(Job.active_key == f"{environment}/{target}"))

    # ---- worker side ------------------------------------------------------
    def claim(self, job_id: str) -> Job | None:
        """Move a job to running; None if it is finished or another live worker holds it."""
        now = self.clock()
        # One compare-and-set statement that also sets started_at once and returns
        # the claimed row: SQLite holds its single write lock for one statement
        # instead of three, which is what concurrent worker threads queue on.
        with self.sessions.begin() as s:
            return s.scalar(
                update(Job).where(Job.id == job_id, or_(
                    Job.status == QUEUED,
                    (Job.status == RUNNING) & or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < now - self.lease)))
                .values(status=RUNNING, heartbeat_at=now, attempts=Job.attempts + 1,
                        started_at=func.coalesce(Job.started_at, literal(now, Job.started_at.type)))
                .returning(Job))

    def release(self, job_id: str) -> None:
        """Back to queued so that a retried message can claim the job again."""
        with self.sessions.begin() as s:
            s.execute(update(Job).where(Job.id == job_id, Job.status == RUNNING)
                      .values(status=QUEUED, heartbeat_at=None))

    def heartbeat(self, job_id: str, params: dict[str, Any] | None = None,
                  before: dict[str, Any] | None = None) -> None:
        values: dict[str, Any] = {"heartbeat_at": self.clock()}
        if params is not None:
            values["params"] = params
        if before is not None:
            values["before"] = before
        with self.sessions.begin() as s:
            s.execute(update(Job).where(Job.id == job_id, Job.status == RUNNING).values(**values))

    def finish(self, job_id: str, status: str, detail: str, after: dict[str, Any] | None = None) -> bool:
        """Finish a running (or queued, for stale ones) job once; emits the outcome audit event."""
        assert status in TERMINAL
        with self.sessions.begin() as s:
            # The compare-and-set returns the finished row: no second read in the write transaction.
            job = s.scalar(update(Job).where(Job.id == job_id, Job.status.in_([QUEUED, RUNNING]))
                           .values(status=status, detail=detail, after=after, finished_at=self.clock(),
                                   active_key=None)
                           .returning(Job))
        if job is None:
            return False
        self.events.append(job_id, status, detail)
        event = AuditEvent(actor=job.actor, source=job.source, action=job.action,
                           outcome=SUCCEEDED if status == SUCCEEDED else FAILED,
                           environment=job.environment, target=job.target, detail=detail, job_id=job.id,
                           before=job.before, after=after, request_id=job.request_id)
        try:
            self.audit.record(event)
        except Unavailable:
            # The job row holds the outcome durably; the audit stream append is
            # retried once after a moment before giving up loudly.
            log.error("audit stream unavailable; retrying outcome of job %s", job_id)
            time.sleep(1)
            self.audit.record(event)
        return True

    def stale(self, older_than: dt.timedelta) -> list[Job]:
        """Jobs queued or running with no sign of life for ``older_than`` (for the sweeper)."""
        cutoff = self.clock() - older_than
        with self.sessions() as s:
            return list(s.scalars(select(Job).where(
                or_((Job.status == QUEUED) & (Job.created_at < cutoff),
                    (Job.status == RUNNING) & (Job.heartbeat_at < cutoff)))))
