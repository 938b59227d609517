"""Jobs as the current principal may see them."""
from __future__ import annotations

from sqlalchemy import select

from jobs.kinds import QUEUED, RUNNING
from scope.access import environment_for
from scope.errors import NotFound
from scope.models import Job
from web.context import principal, runtime


def visible_job(job_id: str) -> Job:
    """The job if the caller may see its environment; NotFound otherwise (no leaking ids)."""
    job = runtime().jobs.get(job_id)
    try:
        environment_for(principal(), runtime().catalog, job.environment)
    except NotFound:
        raise NotFound(f"No job {job_id!r}.") from None
    return job


# Statuses of a job that still holds (or waits for) its service; approvals may add "awaiting_approval".
ACTIVE_STATUSES = (QUEUED, RUNNING, "awaiting_approval")


def active_jobs(environment: str, limit: int = 50) -> list[Job]:
    """Jobs of an environment not finished yet, oldest first (the environment page marks their services)."""
    with runtime().sessions() as s:
        return list(s.scalars(select(Job).where(Job.environment == environment, Job.status.in_(ACTIVE_STATUSES))
                              .order_by(Job.created_at).limit(limit)))
