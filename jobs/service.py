"""Job lifecycle: create (row, audit, enqueue — in that order), claim, heartbeat, finish.

State changes are compare-and-set UPDATEs so that a redelivered message, a
second worker or a sweeper can never move a job backwards or finish it twice.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from typing import Any, Callable, cast

import dramatiq
import redis
from sqlalchemy import Engine, Table, bindparam, func, insert, or_, select, tuple_, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, configure_mappers, sessionmaker
from sqlalchemy.orm.attributes import manager_of_class

from jobs.audit_stream import AuditEvent, AuditLog
from jobs.broker import send_run_job
from jobs.events import JobEvents
from jobs.announce import no_announcements
from jobs.outcome_outbox import OUTCOME_KEY_TTL, OutcomeOutbox, outcome_key
from jobs.kinds import (
    APPROVAL_REQUESTED,
    AWAITING_APPROVAL,
    DECIDED,
    FAILED,
    OUTCOME,
    QUEUED,
    REJECTED,
    RUNNING,
    STARTED,
    SUCCEEDED,
    TERMINAL,
    UNCONFIRMED,
    public_status,
)
from scope.errors import Conflict, NotFound, Unavailable, ValetKeyError
from scope.models import Job, utcnow
from scope.times import iso, iso_or_none

log = logging.getLogger(__name__)

# A running job whose worker process has not renewed it for this long is presumed
# orphaned (worker killed): a redelivered message may take it over. Each worker
# process renews the leases of all the jobs it holds in one statement, every
# third of a lease (renew_held), so a short lease costs one UPDATE per process.
DEFAULT_LEASE = dt.timedelta(seconds=10)
# A job whose thread has not touched it (heartbeat, checkpoint) for this long is no longer
# renewed by its process: a stalled thread loses its job after this plus a lease. Longer than
# anything a job may legitimately wait on in one go (an AWS call with botocore's retries, a
# Redis outage a progress event waits out).
MAX_SILENCE = 180.0
# A queued job whose message seems lost is sent again after this long (not sooner: with every
# worker busy, a job may simply wait its turn, and each re-send is one more message).
QUEUED_RESEND = dt.timedelta(minutes=2)
# A job awaiting a second person's approval is rejected ("approval expired") after this long.
APPROVAL_WINDOW = dt.timedelta(minutes=30)
APPROVAL_EXPIRED = "Rejected: approval expired (no second person approved it within 30 minutes); nothing was done."
# An unconfirmed job (its request has not completed) older than this lost its request: the
# web process died, or gave up, between the row and the promotion. Longer than the slowest
# create can take (Redis connect 5 s + the audit append and the enqueue, 40 s socket timeout
# each, would be the worst case; they fail far sooner when Redis is down).
UNCONFIRMED_TIMEOUT = dt.timedelta(seconds=30)
NEVER_CONFIRMED = ("Never confirmed: the request that created (or approved) this job did not complete (nobody was "
                   "told it was accepted); nothing was done.")
# How long a worker whose message arrived before the request promoted the job waits for it.
CONFIRM_WAIT = 2.0


def job_dict(job: Job) -> dict[str, Any]:
    """The job object of the HTTP contract."""
    return {"id": job.id, "action": job.action, "environment": job.environment, "target": job.target,
            "status": public_status(job.status), "detail": job.detail, "actor": job.actor, "source": job.source,
            "created_at": iso_or_none(job.created_at), "started_at": iso_or_none(job.started_at),
            "finished_at": iso_or_none(job.finished_at), "url": f"/api/v1/jobs/{job.id}",
            "reason": job.reason or "", "approved_by": job.approved_by, "approved_at": iso_or_none(job.approved_at),
            "approval_expires_at": iso(job.created_at + APPROVAL_WINDOW) if job.status == AWAITING_APPROVAL else None,
            "plan": job.plan}


_JOBS = cast(Table, Job.__table__)
_JOB_CLASS = manager_of_class(Job)


def _columns(job: Job) -> dict[str, Any]:
    return {c.key: getattr(job, c.key) for c in _JOBS.columns}


def _job_from_row(row: Any) -> Job:
    """A (detached) Job from a full row of the jobs table, its attributes put in place the way the ORM's
    own loading does: into the instance's dict, not through an attribute event per column. A worker
    builds one at each claim, step and finish; ``Job(**row)`` cost seven times as much."""
    job: Job = _JOB_CLASS.new_instance()
    job.__dict__.update(row._mapping)
    return job


def outcome_event(job: Any) -> AuditEvent:
    """The audit entry of a finished job (a Job, or a row of the jobs table)."""
    return AuditEvent(actor=job.actor, source=job.source, action=job.action,
                      outcome=SUCCEEDED if job.status == SUCCEEDED else FAILED,
                      environment=job.environment, target=job.target, detail=job.detail, job_id=job.id,
                      before=job.before, after=job.after, request_id=job.request_id, reason=job.reason or "")


class _Statements:
    """The job-state statements, built once per service with bind parameters.

    Workers run them a few times per job; building and compiling an ORM
    statement each time cost several times what SQLite takes to execute it.
    """

    def __init__(self) -> None:
        t = _JOBS.c
        self.insert = insert(_JOBS)
        self.get = select(*_JOBS.columns).where(t.id == bindparam("job_id"))
        self.claim = (update(_JOBS).where(t.id == bindparam("job_id"), or_(
            t.status == QUEUED,
            (t.status == RUNNING) & or_(t.heartbeat_at.is_(None), t.heartbeat_at < bindparam("stale", type_=t.heartbeat_at.type))))
            .values(status=RUNNING, heartbeat_at=bindparam("now", type_=t.heartbeat_at.type), attempts=t.attempts + 1,
                    started_at=func.coalesce(t.started_at, bindparam("now", type_=t.started_at.type)))
            .returning(*_JOBS.columns))
        # ``attempt`` (the claim's attempts count) ties a worker's writes to its own claim:
        # after a takeover the old thread's heartbeat and finish match nothing. NULL: anyone
        # (the sweeper).
        mine = or_(bindparam("attempt", type_=t.attempts.type).is_(None),
                   t.attempts == bindparam("attempt", type_=t.attempts.type))
        self.release = (update(_JOBS).where(t.id == bindparam("job_id"), t.status == RUNNING, mine)
                        .values(status=QUEUED, heartbeat_at=None))
        self.finish = (update(_JOBS).where(t.id == bindparam("job_id"), t.status.in_([UNCONFIRMED, QUEUED, RUNNING]),
                                          mine)
                       .values(status=bindparam("status"), detail=bindparam("detail"),
                               after=bindparam("after", type_=t.after.type),
                               finished_at=bindparam("now", type_=t.finished_at.type), active_key=None)
                       .returning(*_JOBS.columns))

        held = update(_JOBS).where(t.id == bindparam("job_id"), t.status == RUNNING, mine)
        self.heartbeat = held.values(heartbeat_at=bindparam("now", type_=t.heartbeat_at.type))
        self.checkpoint = held.values(heartbeat_at=bindparam("now", type_=t.heartbeat_at.type),
                                      params=bindparam("params", type_=t.params.type))
        self.checkpoint_before = self.checkpoint.values(before=bindparam("before", type_=t.before.type))


class JobService:
    def __init__(self, sessions: sessionmaker[Session], audit: AuditLog, events: JobEvents,
                 broker: dramatiq.Broker | None, clock: Callable[[], dt.datetime] = utcnow,
                 lease: dt.timedelta = DEFAULT_LEASE) -> None:
        self.sessions, self.audit, self.events, self.broker, self.clock = sessions, audit, events, broker, clock
        self.lease = lease
        self.outbox = OutcomeOutbox(audit)  # outcomes Redis could not take at the time (finish)
        # The jobs this process holds: id -> (claim's attempts, monotonic time its thread last touched it).
        self._held: dict[str, tuple[int, float]] = {}
        self._held_lock = threading.Lock()
        # Set on SIGTERM: each job is handed back at its thread's next plain heartbeat (between polls,
        # where nothing is in flight), so another worker takes it at once and never two act on it.
        self.handing_back = threading.Event()
        # Reads go through ORM sessions; the state changes above run as Core on the same engine.
        self.engine: Engine = sessions.kw["bind"]
        self._sql = _Statements()
        # _job_from_row builds Jobs without their constructor, which is what would otherwise set up the
        # mappers' attribute handling on first use: set it up here (once per process; a no-op after).
        configure_mappers()
        # Slack and outbound webhooks hear about each step through this (wiring sets a jobs.announce.Announcer).
        self.announce: Callable[[str, Job], None] = no_announcements

    # ---- web side ---------------------------------------------------------
    def create(self, *, action: str, environment: str, target: str, actor: str, source: str,
               request_id: str = "", params: dict[str, Any] | None = None, exclusive: bool = True,
               detail: str = "", reason: str = "", approval: bool = False,
               plan: dict[str, Any] | None = None) -> Job:
        """Commit the job row (unconfirmed), append its ``requested`` audit event, enqueue, then promote it.

        The row is created ``unconfirmed``: no worker claims it and no approver
        sees it. Only once the audit entry is on the stream and the message is
        enqueued does a compare-and-set make it ``queued`` (or
        ``awaiting_approval``): a request killed anywhere before that leaves a
        job that never runs, which the sweeper ends as never confirmed. Any
        failure refuses the action (Unavailable) and leaves the row failed, so
        what the database says always matches what happened. With ``approval``
        the job waits in ``awaiting_approval`` (holding the target's lock) and
        is enqueued only by ``approve``.
        """
        job = Job(id=uuid.uuid4().hex, action=action, environment=environment, target=target,
                  status=UNCONFIRMED, actor=actor, source=source,
                  request_id=request_id, params=params or {},
                  active_key=f"{environment}/{target}" if exclusive else None, detail=detail,
                  created_at=self.clock(), attempts=0, before=None, after=None, heartbeat_at=None,
                  started_at=None, finished_at=None, reason=reason, approved_by=None, approved_at=None,
                  plan=plan)
        try:
            with self.engine.begin() as c:
                c.execute(self._sql.insert, _columns(job))
        except IntegrityError:
            running = self.active_job(environment, target)
            if running is None:  # finished in between: one retry is enough
                return self.create(action=action, environment=environment, target=target, actor=actor,
                                   source=source, request_id=request_id, params=params, exclusive=exclusive,
                                   detail=detail, reason=reason, approval=approval)
            conflict = Conflict(f"{target} in {environment} already has a job in progress: {running.id} "
                                f"({running.action}, {running.status}, by {running.actor}).",
                                job_id=running.id, job_url=f"/api/v1/jobs/{running.id}")
            # A refusal like any other: it goes to the audit trail as denied.
            self.audit.record(AuditEvent(actor=actor, source=source, action=action, outcome="denied",
                                         environment=environment, target=target, request_id=request_id,
                                         detail=conflict.detail, reason=reason))
            raise conflict from None
        except SQLAlchemyError as e:
            raise Unavailable("The job database cannot be written right now; nothing was done.") from e
        try:
            # The audit event and the first progress event in one round trip, before the enqueue.
            pipe = self.events.r.pipeline(transaction=False)
            self.audit.queue(pipe, AuditEvent(actor=actor, source=source, action=action, outcome="requested",
                                              environment=environment, target=target, job_id=job.id,
                                              request_id=request_id, detail=detail, reason=reason))
            if approval:
                self.events.queue(pipe, job.id, AWAITING_APPROVAL, f"{action} of {target} requested by {actor}; "
                                  "waiting for a second person's approval")
                pipe.execute()
            else:
                self.events.queue(pipe, job.id, "queued", f"{action} of {target} requested by {actor}")
                pipe.execute()
                if self.broker is None:
                    raise Unavailable("No job queue is configured.")
                send_run_job(self.broker, job.id)
            job.status = self._confirm(job.id, AWAITING_APPROVAL if approval else QUEUED)
        except Exception as e:  # noqa: BLE001 - any failure here means the job never runs
            self._abandon(job.id, "Refused: the job queue is unavailable; nothing was done.")
            if isinstance(e, ValetKeyError):
                raise
            raise Unavailable("The job queue is unavailable right now; nothing was done.") from e
        if approval:  # only once it is confirmed: an approver must never see a request that will not run
            self.announce(APPROVAL_REQUESTED, job)
        return job

    def _confirm(self, job_id: str, status: str) -> str:
        """Promote the job from unconfirmed (compare-and-set); Unavailable if it is no longer unconfirmed."""
        try:
            with self.engine.begin() as c:
                n = c.execute(update(_JOBS).where(_JOBS.c.id == job_id, _JOBS.c.status == UNCONFIRMED)
                              .values(status=status)).rowcount
        except SQLAlchemyError as e:
            raise Unavailable("The job database cannot be written right now; nothing was done.") from e
        if n != 1:  # the sweeper ended it meanwhile (a request slower than UNCONFIRMED_TIMEOUT)
            raise Unavailable("The request took too long to be confirmed; nothing was done.")
        return status

    def _abandon(self, job_id: str, detail: str) -> None:
        try:
            with self.sessions.begin() as s:
                s.execute(update(Job).where(Job.id == job_id, Job.status.in_([UNCONFIRMED, QUEUED, AWAITING_APPROVAL]))
                          .values(status=FAILED, detail=detail, finished_at=self.clock(), active_key=None))
        except SQLAlchemyError:
            log.exception("could not mark job %s failed after enqueue failure", job_id)

    def get(self, job_id: str) -> Job:
        # Core, not a Session: a worker reads its job at every step, and the ORM's session and
        # identity map doubled the cost of this one-row read.
        row = None
        if len(job_id) <= 32:
            with self.engine.connect() as c:
                row = c.execute(self._sql.get, {"job_id": job_id}).one_or_none()
        if row is None:
            raise NotFound(f"No job {job_id!r}.")
        return _job_from_row(row)

    # ---- two-person approval ------------------------------------------------
    def approve(self, job_id: str, *, approver: str, source: str, request_id: str = "",
                reason: str = "") -> Job:
        """Approve a job awaiting approval: row (compare-and-set) → audit ``approval.approve`` → enqueue.

        Conflict if the job is not awaiting approval (or its window has passed);
        Unavailable (and the job failed) if the audit entry or the enqueue fails.
        """
        now = self.clock()
        # Unconfirmed until its entry is on the stream and it is enqueued, as at create: an
        # approval whose request dies half-way never runs (the sweeper ends it).
        with self.engine.begin() as c:
            n = c.execute(update(Job).where(Job.id == job_id, Job.status == AWAITING_APPROVAL,
                                            Job.created_at > now - APPROVAL_WINDOW)
                          .values(status=UNCONFIRMED, approved_by=approver, approved_at=now)).rowcount
        if n != 1:
            raise self._not_awaiting(job_id)
        job = self.get(job_id)
        try:
            self.audit.record(AuditEvent(actor=approver, source=source, action="approval.approve",
                                         outcome="succeeded", environment=job.environment, target=job.target,
                                         job_id=job.id, request_id=request_id, reason=reason,
                                         detail=f"Approved {job.action} of {job.target} requested by {job.actor}"))
            self.events.append(job.id, "approved", f"Approved by {approver}; queued")
            if self.broker is None:
                raise Unavailable("No job queue is configured.")
            send_run_job(self.broker, job.id)
            self._confirm(job.id, QUEUED)
        except Exception as e:  # noqa: BLE001 - an approval that is not on record (or not queued) never runs
            self._abandon(job.id, "Refused: the approval could not be recorded or queued; nothing was done.")
            if isinstance(e, ValetKeyError):
                raise
            raise Unavailable("The job queue is unavailable right now; nothing was done.") from e
        approved = self.get(job_id)
        self.announce(DECIDED, approved)
        return approved

    def reject(self, job_id: str, *, approver: str, source: str, request_id: str = "",
               reason: str = "") -> Job:
        """Reject a job awaiting approval; it ends ``rejected`` and frees its target."""
        now = self.clock()
        detail = f"Rejected by {approver}" + (f": {reason}" if reason else "") + "; nothing was done."
        if not self._end_awaiting(job_id, detail, now, now - APPROVAL_WINDOW):
            raise self._not_awaiting(job_id)
        job = self.get(job_id)
        # After the row, unlike approve: a rejection makes nothing happen, so the safe
        # direction is to let it stand even if its entry cannot be written now.
        self._record_quietly(AuditEvent(actor=approver, source=source, action="approval.reject",
                                        outcome="succeeded", environment=job.environment, target=job.target,
                                        job_id=job.id, request_id=request_id, reason=reason, detail=detail))
        return job

    def _record_quietly(self, event: AuditEvent) -> None:
        try:
            self.audit.record(event)
        except Unavailable:
            log.error("job %s: %s could not be audited (audit stream unavailable)", event.job_id, event.action)

    def _end_awaiting(self, job_id: str, detail: str, now: dt.datetime, created_after: dt.datetime | None) -> bool:
        q = update(Job).where(Job.id == job_id, Job.status == AWAITING_APPROVAL)
        if created_after is not None:
            q = q.where(Job.created_at > created_after)
        with self.engine.begin() as c:
            n = c.execute(q.values(status=REJECTED, detail=detail, finished_at=now, active_key=None)).rowcount
        if n == 1:
            try:
                self.events.append(job_id, REJECTED, detail)
            except Exception:  # noqa: BLE001 - progress events are a courtesy; the row holds the outcome
                log.warning("job %s: its rejection event could not be written", job_id)
            self.announce(DECIDED, self.get(job_id))
        return n == 1

    def _not_awaiting(self, job_id: str) -> Conflict:
        self.expire_approvals(only=job_id)
        job = self.get(job_id)
        if job.status == REJECTED:
            return Conflict(f"Job {job_id} is not awaiting approval: {job.detail}", job_id=job_id)
        return Conflict(f"Job {job_id} is not awaiting approval (it is {public_status(job.status)}).", job_id=job_id)

    def expire_approvals(self, only: str | None = None) -> int:
        """End every job whose approval window has passed as ``rejected`` (once, with its audit entry).

        Run lazily on read and approve, and by the worker's sweeper; the
        compare-and-set makes concurrent runs record each expiry once.
        """
        now = self.clock()
        cutoff = now - APPROVAL_WINDOW
        q = select(Job.id).where(Job.status == AWAITING_APPROVAL, Job.created_at <= cutoff)
        if only is not None:
            q = q.where(Job.id == only)
        with self.sessions() as s:
            ids = list(s.scalars(q))
        n = 0
        for job_id in ids:
            if self._end_awaiting(job_id, APPROVAL_EXPIRED, now, None):
                job = self.get(job_id)
                n += 1
                # After the row, as for reject: an expiry makes nothing happen.
                self._record_quietly(AuditEvent(actor="valetkey", source="scheduler", action="approval.reject",
                                                outcome="succeeded", environment=job.environment,
                                                target=job.target, job_id=job.id, detail=APPROVAL_EXPIRED))
        return n

    def awaiting(self, environments: list[str] | None = None) -> list[Job]:
        """Jobs awaiting approval (in ``environments``, or all), oldest first."""
        self.expire_approvals()
        q = select(Job).where(Job.status == AWAITING_APPROVAL).order_by(Job.created_at)
        if environments is not None:
            q = q.where(Job.environment.in_(environments))
        with self.sessions() as s:
            return list(s.scalars(q))

    def active_job(self, environment: str, target: str) -> Job | None:
        with self.sessions() as s:
            return s.scalar(select(Job).where(Job.active_key == f"{environment}/{target}"))

    # ---- worker side ------------------------------------------------------
    def claim(self, job_id: str, wait: float = CONFIRM_WAIT) -> Job | None:
        """Move a job to running; None if it is finished or another live worker holds it."""
        deadline = time.monotonic() + wait
        while True:
            now = self.clock()
            # One compare-and-set statement that also sets started_at once and returns
            # the claimed row: SQLite holds its single write lock for one statement
            # instead of three, which is what concurrent worker threads queue on.
            with self.engine.begin() as c:
                row = c.execute(self._sql.claim, {"job_id": job_id, "now": now,
                                                  "stale": now - self.lease}).one_or_none()
            if row is not None:
                job = _job_from_row(row)
                self._hold(job.id, job.attempts)
                if job.attempts == 1:
                    self.announce(STARTED, job)
                return job
            # The message can arrive before its request promotes the job (enqueue, then promote):
            # wait a moment. Past that the job stays unclaimed; promoted later, the sweeper sends
            # it again as a stale queued job; never promoted, the sweeper ends it.
            if time.monotonic() >= deadline or self._status(job_id) != UNCONFIRMED:
                return None
            time.sleep(0.02)

    def _status(self, job_id: str) -> str | None:
        with self.engine.connect() as c:
            return c.scalar(select(_JOBS.c.status).where(_JOBS.c.id == job_id))

    def release(self, job_id: str, attempt: int | None = None) -> None:
        """Back to queued so that a retried message can claim the job again (if still this claim's)."""
        with self.engine.begin() as c:
            c.execute(self._sql.release, {"job_id": job_id, "attempt": attempt})
        self._drop(job_id, attempt)

    def heartbeat(self, job_id: str, params: dict[str, Any] | None = None,
                  before: dict[str, Any] | None = None, attempt: int | None = None) -> bool:
        """Renew the job's lease; with ``params``, also save the operation's checkpoint (and ``before``).

        False when the job is no longer running under this claim (``attempt``): another
        worker took it over, or it was finished; the caller must stop touching it. Also
        False when the database cannot be reached: the job cannot be kept or checkpointed,
        so this attempt stops where it is (it is not failed) and, once the database is
        back, another worker takes it over from its last checkpoint.
        """
        try:
            return self._heartbeat(job_id, params, before, attempt)
        except SQLAlchemyError as e:
            log.warning("job %s: database unreachable at a heartbeat (%s); this attempt stops, the job will be "
                        "taken over", job_id, type(e).__name__)
            self._drop(job_id, attempt)
            return False

    def _heartbeat(self, job_id: str, params: dict[str, Any] | None, before: dict[str, Any] | None,
                   attempt: int | None) -> bool:
        if params is None and attempt is not None and self.handing_back.is_set():
            self._hand_back(job_id, attempt)
            return False
        values: dict[str, Any] = {"job_id": job_id, "now": self.clock(), "attempt": attempt}
        if params is None:
            stmt = self._sql.heartbeat
        elif before is None:  # a checkpoint that leaves the recorded "before" state as it is
            stmt, values["params"] = self._sql.checkpoint, params
        else:
            stmt, values["params"], values["before"] = self._sql.checkpoint_before, params, before
        with self.engine.begin() as c:
            held = c.execute(stmt, values).rowcount == 1
        if not held:
            self._drop(job_id, attempt)
        elif attempt is not None:
            self._hold(job_id, attempt)
        return held

    # ---- leases of this process's jobs ---------------------------------------------
    def _hold(self, job_id: str, attempt: int) -> None:
        with self._held_lock:
            self._held[job_id] = (attempt, time.monotonic())

    def _drop(self, job_id: str, attempt: int | None = None) -> None:
        """Forget the job (only this claim of it, with ``attempt``: a takeover in this very process stays)."""
        with self._held_lock:
            held = self._held.get(job_id)
            if held is not None and (attempt is None or held[0] == attempt):
                del self._held[job_id]

    def held(self) -> list[str]:
        with self._held_lock:
            return list(self._held)

    def renew_held(self, max_silence: float = MAX_SILENCE) -> int:
        """Renew the lease of every job this process holds, in one statement; returns how many.

        A job whose thread has been silent longer than ``max_silence`` is left to expire.
        """
        now = time.monotonic()
        with self._held_lock:
            pairs = [(job_id, attempt) for job_id, (attempt, touched) in self._held.items()
                     if now - touched < max_silence]
        if not pairs:
            return 0
        t = _JOBS.c
        with self.engine.begin() as c:
            return int(c.execute(update(_JOBS).where(tuple_(t.id, t.attempts).in_(pairs), t.status == RUNNING)
                                 .values(heartbeat_at=self.clock())).rowcount)

    def _hand_back(self, job_id: str, attempt: int) -> None:
        """Give the job back (queued again, message re-sent) if it is still this claim's."""
        with self.engine.begin() as c:
            n = c.execute(self._sql.release, {"job_id": job_id, "attempt": attempt}).rowcount
        self._drop(job_id, attempt)
        if n != 1 or self.broker is None:
            return
        send_run_job(self.broker, job_id)
        try:
            self.events.append(job_id, "handed back", "This worker is stopping; handing the job to another one",
                               keep=False)
        except redis.RedisError:
            log.warning("job %s: its hand-back event could not be written", job_id)
        log.info("job %s: handed back (worker stopping)", job_id)

    def finish(self, job_id: str, status: str, detail: str, after: dict[str, Any] | None = None,
               attempt: int | None = None,
               also: Callable[[redis.client.Pipeline], Callable[[list[Any] | None], None]] | None = None) -> bool:
        """Finish a running (or queued, for stale ones) job once; emits the outcome audit event.

        With ``attempt``, only if the job is still under that claim (see heartbeat). ``also`` queues
        more writes in the round trip of the outcome (after it), only if the job was finished here,
        and returns what to call with their results (None: the round trip failed)."""
        assert status in TERMINAL
        with self.engine.begin() as c:
            # The compare-and-set returns the finished row: no second read in the write transaction.
            job = c.execute(self._sql.finish, {"job_id": job_id, "status": status, "detail": detail,
                                               "after": after, "now": self.clock(), "attempt": attempt}).one_or_none()
        self._drop(job_id, attempt)
        if job is None:
            return False
        event = outcome_event(job)
        # The last progress event and the outcome in one round trip. Each result is
        # looked at: a failed event alone must not make the outcome be appended again.
        # (A reply lost to a timeout cannot tell whether the append landed; it is
        # retried, so that rare case may show the outcome twice rather than never.)
        pipe = self.events.r.pipeline(transaction=False)
        self.events.queue(pipe, job_id, status, detail)
        # Keyed by the job: whoever appends its outcome (here, the outbox, a sweeper) does it once.
        self.audit.queue_once(pipe, outcome_key(job_id), event, OUTCOME_KEY_TTL)
        outcome_at = len(pipe) - 1
        also_done = also(pipe) if also is not None else None
        try:
            results: list[Any] | None = pipe.execute(raise_on_error=False)
        except redis.RedisError:
            results = None
        if results is None or any(isinstance(r, Exception) for r in results[:outcome_at]):
            log.warning("job %s: its last progress event could not be written", job_id)
        if results is None or isinstance(results[outcome_at], Exception):
            # The job row holds the outcome durably. The job is done either way: its entry waits
            # in this process's outbox for Redis, and, should the process die, the sweeper
            # appends it (jobs/outcomes.py).
            log.error("audit stream unavailable; the outcome of job %s will be appended when it is back", job_id)
            self.outbox.put(event)
        self.announce(OUTCOME, _job_from_row(job))
        if also_done is not None:  # last: whatever it does (or raises), the outcome is taken care of
            also_done(None if results is None else results[outcome_at + 1:])
        return True

    def stale(self, older_than: dt.timedelta | None = None, queued_after: dt.timedelta = QUEUED_RESEND) -> list[Job]:
        """For the sweeper: running jobs whose lease ran out ``older_than`` (default: the lease) ago,
        queued ones waiting longer than ``queued_after``, and unconfirmed ones whose request is gone
        (older than UNCONFIRMED_TIMEOUT)."""
        now = self.clock()
        cutoff = now - (self.lease if older_than is None else older_than)
        with self.sessions() as s:
            return list(s.scalars(select(Job).where(
                or_((Job.status == QUEUED) & (func.coalesce(Job.approved_at, Job.created_at) < now - queued_after),
                    (Job.status == RUNNING) & (Job.heartbeat_at < cutoff),
                    (Job.status == UNCONFIRMED)
                    & (func.coalesce(Job.approved_at, Job.created_at) < now - UNCONFIRMED_TIMEOUT)))))
