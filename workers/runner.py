"""Run one job: claim it, check scope again, dispatch to its operation, finish it exactly once."""
from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any, Callable

from jobs.kinds import FAILED, FLUSH, REDEPLOY, RESTART, RUN_TASK, SUCCEEDED
from scope.access import APPROVER_ROLES, check, principal_from_grants
from scope.catalog import Environment
from scope.errors import Forbidden, NotFound, ValetKeyError
from scope.models import Job
from scope.roles import Permission
from wiring.runtime import Runtime
from workers import ecs, redis_flush, tasks
from workers.context import JobContext, Operation, Outcome
from workers.errors import OperationFailed, TransientError

log = logging.getLogger("valetkey.worker")

# action -> (the permission the actor must still hold, the operation that runs it)
OPERATIONS: dict[str, tuple[Permission, Operation]] = {
    RESTART: (Permission.RESTART, ecs.restart),
    REDEPLOY: (Permission.REDEPLOY, ecs.redeploy),
    FLUSH: (Permission.FLUSH, redis_flush.flush),
    RUN_TASK: (Permission.RUN_TASK, tasks.run_task),
}


class Retry(Exception):
    """Raised to Dramatiq so that it retries the message with backoff (transient AWS trouble)."""


class LeaseLost(Exception):
    """This worker's claim on the job ended (taken over after a stall, or finished): stop touching it."""


class JobRunner:
    def __init__(self, rt: Runtime, *, sleep: Callable[[float], None] = time.sleep,
                 ecs_client: Callable[[Environment], Any] | None = None,
                 aws_client: Callable[[Environment, str], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 logs_client: Callable[[Environment], Any] | None = None) -> None:
        self.rt = rt
        self._sleep = sleep
        self._ecs_client = ecs_client or rt.aws.ecs
        self._aws_client = aws_client or rt.aws.client
        self._clock = clock
        self._logs_client = logs_client or rt.aws.logs

    def run(self, job_id: str, retries: int = 0, max_retries: int = 3) -> str | None:
        """Run the job; returns its final status, or None if it was not ours to run."""
        job = self.rt.jobs.claim(job_id)
        if job is None:
            log.info("job %s: already finished or held by a live worker; skipping", job_id)
            return None
        events = self.rt.events
        # An approved job's age counts from its approval: it waited for a person, not for a worker.
        age = dt.datetime.now(dt.timezone.utc) - (job.approved_at or job.created_at)
        if age.total_seconds() > self.rt.settings.job_max_age_seconds:
            self._finish(job, FAILED, f"Expired: queued for {int(age.total_seconds())}s, longer than the "
                                      f"{self.rt.settings.job_max_age_seconds}s age limit; not run.")
            return FAILED
        events.append(job.id, "running", f"Worker picked up the job (attempt {job.attempts})", keep=False)
        try:
            env = self._recheck_scope(job)
            outcome = self._dispatch(job, env)
        except LeaseLost:
            log.warning("job %s: attempt %d lost its claim (another worker took over, or it ended); stopping",
                        job.id, job.attempts)
            return None
        except TransientError as e:
            if retries < max_retries:
                events.append(job.id, "retry", f"{e.detail} Retrying ({retries + 1} of {max_retries}).", keep=False)
                self.rt.jobs.release(job.id, attempt=job.attempts)
                raise Retry(e.detail) from e
            self._finish(job, FAILED, f"{e.detail} Gave up after {max_retries} retries.")
            return FAILED
        except (OperationFailed, Forbidden, NotFound) as e:
            self._finish(job, FAILED, e.detail)
            return FAILED
        except ValetKeyError as e:
            self._finish(job, FAILED, e.detail)
            return FAILED
        except Exception:  # noqa: BLE001 - a bug must still end the job, not leave it running
            log.exception("job %s crashed", job.id)
            self._finish(job, FAILED, "Internal error in the worker (logged); the service may need a look.")
            return FAILED
        self._finish(job, SUCCEEDED, outcome.detail, outcome.after)
        return SUCCEEDED

    def _finish(self, job: Job, status: str, detail: str, after: dict[str, Any] | None = None) -> None:
        if not self.rt.jobs.finish(job.id, status, detail, after, attempt=job.attempts):
            log.warning("job %s: attempt %d no longer holds the job; its outcome (%s) was not recorded",
                        job.id, job.attempts, status)

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

    def _dispatch(self, job: Job, env: Environment) -> Outcome:
        params = dict(job.params or {})

        def progress(type_: str, message: str) -> None:
            self.rt.events.append(job.id, type_, message, keep=False)  # create and finish set the expiry

        def checkpoint(p: dict[str, Any]) -> None:
            if not self.rt.jobs.heartbeat(job.id, params=dict(p), before=p.get("before"), attempt=job.attempts):
                raise LeaseLost(job.id)

        def sleep(seconds: float) -> None:
            if not self.rt.jobs.heartbeat(job.id, attempt=job.attempts):
                raise LeaseLost(job.id)
            self._sleep(seconds)

        ctx = JobContext(settings=self.rt.settings, job=job, env=env, params=params, progress=progress,
                         checkpoint=checkpoint, sleep=sleep, ecs_client=self._ecs_client,
                         aws_client=self._aws_client, clock=self._clock, logs_client=self._logs_client)
        return OPERATIONS[job.action][1](ctx)
