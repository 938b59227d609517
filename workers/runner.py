"""Run one job: claim it, check scope again, run its operation as steps, finish it exactly once.

Between two steps the job is suspended (jobs/suspended.py): still ``running``
under its claim, its checkpoint in the job row, its next step due in Redis,
no thread held. Scope is re-checked with each claim (the first run, and a
takeover after a lost worker), as before; the steps of one claim continue it.
"""
from __future__ import annotations

import datetime as dt
import logging
import random
import time
from typing import Any, Callable

import redis
from botocore.exceptions import ClientError

from cloud.errors import THROTTLING_CODES, error_code
from jobs.kinds import FAILED, FLUSH, REDEPLOY, RESTART, RUN_TASK, RUNNING, SUCCEEDED
from jobs.suspended import SuspendedJobs
from scope.access import APPROVER_ROLES, check, principal_from_grants
from scope.catalog import Environment
from scope.errors import Forbidden, NotFound, ValetKeyError
from scope.models import Job
from scope.roles import Permission
from wiring.runtime import Runtime
from workers import ecs, redis_flush, tasks
from workers.context import JobContext, Operation, Outcome, Suspend
from workers.errors import OperationFailed, TransientError

log = logging.getLogger("valetkey.worker")

# action -> (the permission the actor must still hold, the operation that runs it)
OPERATIONS: dict[str, tuple[Permission, Operation]] = {
    RESTART: (Permission.RESTART, ecs.restart),
    REDEPLOY: (Permission.REDEPLOY, ecs.redeploy),
    FLUSH: (Permission.FLUSH, redis_flush.flush),
    RUN_TASK: (Permission.RUN_TASK, tasks.run_task),
}


class LeaseLost(Exception):
    """This worker's claim on the job ended (taken over after a stall, or finished): stop touching it."""


class StepLost(LeaseLost):
    """This step's lock expired and another copy of the step holds it now: leave the job to that copy."""


# Consecutive transient failures (5xx, timeouts) a job waits out before it fails; AWS throttling,
# which only says "later", is waited out longer. The count is checkpointed ("retries") and starts
# again after a step that got as far as a checkpoint.
MAX_RETRIES = 3
MAX_THROTTLED = 10
MAX_BACKOFF = 30.0


def backoff(n: int) -> float:
    """Seconds before the n-th retry (n >= 1): 2, 4, 8, ... capped, with jitter so that jobs
    throttled together do not all come back in the same second."""
    return min(MAX_BACKOFF, 2.0 * 2 ** (n - 1)) * random.uniform(0.8, 1.0)


def throttled(e: BaseException) -> bool:
    """Whether AWS (or our own call budget) said "too many requests" somewhere down the cause chain."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, ClientError) and error_code(seen) in THROTTLING_CODES:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class JobRunner:
    """Runs a job as steps: each call runs one step (or, given ``sleep``, every step in this thread).

    A step ends by suspending the job (its next step due in Redis, jobs/suspended.py), or by
    finishing it. ``sleep`` None (the worker): suspend and return, the thread is free. Given a
    ``sleep`` (tests, benchmarks): sleep, reload the job's checkpoint and run the next step here.
    """

    def __init__(self, rt: Runtime, *, sleep: Callable[[float], None] | None = None,
                 ecs_client: Callable[[Environment], Any] | None = None,
                 aws_client: Callable[[Environment, str], Any] | None = None,
                 clock: Callable[[], float] = time.time,
                 logs_client: Callable[[Environment], Any] | None = None,
                 suspended: SuspendedJobs | None = None) -> None:
        self.rt = rt
        self._sleep = sleep
        self._ecs_client = ecs_client or rt.aws.ecs
        self._aws_client = aws_client or rt.aws.client
        # Wall time: a job's start is checkpointed and read again by the step after a suspension,
        # possibly in another process.
        self._clock = clock
        self._logs_client = logs_client or rt.aws.logs
        lease = rt.jobs.lease.total_seconds()
        self.suspended = suspended or SuspendedJobs(rt.redis, lock_seconds=lease, visibility=lease)
        self._held: dict[str, float] = {}  # step lock token -> when it was taken or last renewed (monotonic)

    def _taken(self, token: str | None) -> None:
        if token is not None:
            self._held[token] = time.monotonic()

    def _suspend(self, job_id: str, attempt: int, seconds: float, token: str | None) -> None:
        self._held.pop(token or "", None)
        self.suspended.suspend(job_id, attempt, seconds, token)

    def _end(self, job_id: str, attempt: int, token: str | None) -> None:
        self._held.pop(token or "", None)
        self.suspended.end(job_id, attempt, token)

    def run(self, job_id: str, attempt: int | None = None) -> str | None:
        """Run the job (``attempt`` None: a new claim) or its next step (``attempt``: the claim it continues).

        Returns the final status, ``running`` when the job was suspended until its next step, or
        None if it was not ours to run (finished, held by another claim, or its step runs elsewhere).
        """
        if attempt is not None:
            return self._continue(job_id, attempt)
        job = self.rt.jobs.claim(job_id)
        if job is None:
            log.info("job %s: already finished or held by a live worker; skipping", job_id)
            return None
        # An approved job's age counts from its approval: it waited for a person, not for a worker.
        age = dt.datetime.now(dt.timezone.utc) - (job.approved_at or job.created_at)
        if age.total_seconds() > self.rt.settings.job_max_age_seconds:
            token = self.suspended.begin(job.id, job.attempts, force=True)  # the claim itself is exclusive
            self._taken(token)
            self._finish(job, FAILED, f"Expired: queued for {int(age.total_seconds())}s, longer than the "
                                      f"{self.rt.settings.job_max_age_seconds}s age limit; not run.", token=token)
            return FAILED
        token = self._begin_claim(job)
        try:
            env = self._recheck_scope(job)
        except ValetKeyError as e:
            self._finish(job, FAILED, e.detail, token=token)
            return FAILED
        return self._steps(job, env, token, continuing=False)

    def _one_redis(self) -> bool:
        """Whether the step locks and the job events live on one Redis client (always, but in some tests):
        only then can their writes share a round trip."""
        return self.suspended.redis is self.rt.events.r

    def _begin_claim(self, job: Job) -> str:
        """The first step of a new claim: its step lock and due entry (``begin``, forced: the claim
        itself is exclusive), then its "running" event, in one round trip. If that round trip
        fails, each is done on its own as before: ``begin`` raising, the event waiting out an outage (a
        reply lost after the event landed may show it twice)."""
        message = f"Worker picked up the job (attempt {job.attempts})"
        token: str | None = None
        begun: Any = None
        added: Any = None
        if self._one_redis():
            pipe = self.suspended.redis.pipeline(transaction=False)
            token = self.suspended.queue_begin(pipe, job.id, job.attempts)
            self.rt.events.queue(pipe, job.id, "running", message, keep=False)  # create and finish set the expiry
            try:
                begun, added = pipe.execute(raise_on_error=False)
            except redis.RedisError:
                pass
        if begun != 1:  # not sent, or failed (an exception in its place)
            token = self.suspended.begin(job.id, job.attempts, force=True)
        self._taken(token)
        if added is None or isinstance(added, Exception):
            self.rt.events.append(job.id, "running", message, keep=False)
        assert token is not None  # forced
        return token

    def _continue(self, job_id: str, attempt: int) -> str | None:
        """The next step of a suspended job, under the claim that suspended it."""
        token = self.suspended.begin(job_id, attempt)
        if token is None:
            log.info("job %s: its step is running elsewhere; this copy of the message is dropped", job_id)
            return None
        self._taken(token)
        try:
            job = self.rt.jobs.get(job_id)
        except NotFound:
            job = None
        if job is None or job.status != RUNNING or job.attempts != attempt:
            # Finished, or taken over by a newer claim (which has its own due entry): nothing to do.
            self._end(job_id, attempt, token)
            return None
        env = self.rt.catalog.get(job.environment)
        if env is None:
            self._finish(job, FAILED, f"Environment {job.environment} is no longer configured; stopped.",
                         token=token)
            return FAILED
        return self._steps(job, env, token, continuing=True)

    def _steps(self, job: Job, env: Environment, token: str, continuing: bool) -> str | None:
        while True:
            try:
                outcome = self._dispatch(job, env, continuing, token)
            except Suspend as s:
                if self._sleep is None:
                    self._suspend(job.id, job.attempts, s.seconds, token)
                    return RUNNING
                self._sleep(s.seconds)
                again = self.rt.jobs.get(job.id)
                if again.status != RUNNING or again.attempts != job.attempts:
                    self._end(job.id, job.attempts, token)
                    return None
                job, continuing = again, True
                continue
            except StepLost:
                log.warning("job %s: this step outlasted its lock; another copy of it goes on", job.id)
                self._held.pop(token, None)
                return None
            except LeaseLost:
                log.warning("job %s: attempt %d lost its claim (another worker took over, or it ended); stopping",
                            job.id, job.attempts)
                self._end(job.id, job.attempts, token)
                return None
            except TransientError as e:
                try:
                    delay = self._retry_later(job, e, token)
                except LeaseLost:
                    self._end(job.id, job.attempts, token)
                    return None
                if delay is None:
                    return FAILED
                if self._sleep is None:
                    self._suspend(job.id, job.attempts, delay, token)
                    return RUNNING
                self._sleep(delay)
                job, continuing = self.rt.jobs.get(job.id), True
                continue
            except ValetKeyError as e:  # OperationFailed, Forbidden, NotFound and the rest of the hierarchy
                self._finish(job, FAILED, e.detail, token=token)
                return FAILED
            except Exception:  # noqa: BLE001 - a bug must still end the job, not leave it running
                log.exception("job %s crashed", job.id)
                self._finish(job, FAILED, "Internal error in the worker (logged); the service may need a look.",
                             token=token)
                return FAILED
            self._finish(job, SUCCEEDED, outcome.detail, outcome.after, token=token)
            return SUCCEEDED

    def _hold(self, job_id: str, token: str) -> None:
        """Make sure this step still holds the job's step lock (StepLost if not), renewing it.

        Within half the lock's time since it was taken or renewed it cannot have expired, and a new
        claim that took it over is caught by the claim's own fence (the heartbeat compare-and-set):
        no round trip is needed then.
        """
        now = time.monotonic()
        if now - self._held.get(token, float("-inf")) < self.suspended.lock_ms / 2000:
            return
        if not self.suspended.renew(job_id, token):
            raise StepLost(job_id)
        self._held[token] = now

    def _retry_later(self, job: Job, e: TransientError, token: str | None) -> float | None:
        """Count one more transient failure in the checkpoint; the delay before the next step, or None
        (the job failed: too many in a row)."""
        params = dict(self.rt.jobs.get(job.id).params or {})
        n = int(params.get("retries", 0)) + 1
        limit = MAX_THROTTLED if throttled(e) else MAX_RETRIES
        if n > limit:
            self._finish(job, FAILED, f"{e.detail} Gave up after {limit} retries.", token=token)
            return None
        delay = backoff(n)
        params["retries"] = n
        if token is not None:
            self._hold(job.id, token)
        if not self.rt.jobs.heartbeat(job.id, params=params, attempt=job.attempts):
            raise LeaseLost(job.id)
        self.rt.events.append(job.id, "retry", f"{e.detail} Retrying in {delay:.0f}s ({n} of {limit}).", keep=False)
        return delay

    def _finish(self, job: Job, status: str, detail: str, after: dict[str, Any] | None = None,
                token: str | None = None) -> None:
        def end_step(pipe: redis.client.Pipeline) -> Callable[[list[Any] | None], None]:
            # The step's end (lock released, due entry removed) goes in the outcome's round trip.
            self.suspended.queue_end(pipe, job.id, job.attempts, token)

            def done(results: list[Any] | None) -> None:
                if results is None or any(isinstance(r, Exception) for r in results):
                    self._end(job.id, job.attempts, token)  # on its own, as before (it may raise)
                else:
                    self._held.pop(token or "", None)
            return done

        one = self._one_redis()
        if not self.rt.jobs.finish(job.id, status, detail, after, attempt=job.attempts,
                                   also=end_step if one else None):
            log.warning("job %s: attempt %d no longer holds the job; its outcome (%s) was not recorded",
                        job.id, job.attempts, status)
            self._end(job.id, job.attempts, token)
        elif not one:
            self._end(job.id, job.attempts, token)

    def _recheck_scope(self, job: Job) -> Environment:
        """Scope is checked again here: grants or config may have changed since the request."""
        env = self.rt.catalog.get(job.environment)
        if env is None:
            raise NotFound(f"Environment {job.environment} is no longer configured; nothing was done.")
        if job.action not in OPERATIONS:
            raise OperationFailed(f"This worker does not know how to run {job.action}.")
        permission = OPERATIONS[job.action][0]
        if job.source in ("web", "api", "cli", "slack"):
            user = self.rt.users.standing(job.actor)
            if user is None or user.disabled:
                raise Forbidden(f"Refused at run time: {job.actor} is no longer an active user; nothing was done.")
            p = principal_from_grants(user.email, user.name, user.id, user.grants)
            try:
                check(p, env, permission)
            except (Forbidden, NotFound) as e:
                raise Forbidden(f"Refused at run time: {e.detail} Nothing was done.") from e
        elif not env.actions_allowed:
            raise Forbidden(f"Refused at run time: {env.name} is disabled; nothing was done.")
        if job.approved_by:
            self._recheck_approver(job, env)
        elif env.two_person:
            raise Forbidden(f"Refused at run time: {env.name} requires a second person's approval and this job "
                            "has none; nothing was done.")
        return env

    def _recheck_approver(self, job: Job, env: Environment) -> None:
        """The approver must still be someone else, active, and an operator there (or an admin)."""
        approver = job.approved_by or ""
        who = self.rt.users.standing(approver)
        if who is None or who.disabled or who.email == job.actor:
            raise Forbidden(f"Refused at run time: the approver {approver} is no longer an active user; "
                            "nothing was done.")
        role = principal_from_grants(who.email, who.name, who.id, who.grants).role_in(env.name)
        if role not in APPROVER_ROLES:
            raise Forbidden(f"Refused at run time: the approver {approver} no longer holds operator or admin in "
                            f"{env.name}; nothing was done.")

    def _dispatch(self, job: Job, env: Environment, continuing: bool, token: str) -> Outcome:
        params = dict(job.params or {})
        params.pop("retries", None)  # a step that gets as far as a checkpoint starts the count again

        job_id, attempt = job.id, job.attempts  # plain locals: each ORM attribute read is a descriptor call

        def progress(type_: str, message: str) -> None:
            self.rt.events.append(job_id, type_, message, keep=False)  # create and finish set the expiry

        def checkpoint(p: dict[str, Any]) -> None:
            # Both fences before anything the operation does next (a mutation follows a checkpoint):
            # this step still holds the job's step lock, and this claim still holds the job.
            self._hold(job_id, token)
            if not self.rt.jobs.heartbeat(job_id, params=dict(p), before=p.get("before"), attempt=attempt):
                raise LeaseLost(job_id)

        def suspend(seconds: float) -> None:
            # The operation has checkpointed what its next step needs (which renewed the lease).
            raise Suspend(seconds)

        ctx = JobContext(settings=self.rt.settings, job=job, env=env, params=params, progress=progress,
                         checkpoint=checkpoint, sleep=suspend, ecs_client=self._ecs_client,
                         aws_client=self._aws_client, clock=self._clock, logs_client=self._logs_client,
                         continuing=continuing, gateway=self.rt.aws.gateway, account_of=self.rt.aws.account_of)
        return OPERATIONS[job.action][1](ctx)
