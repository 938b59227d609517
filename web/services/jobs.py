"""Jobs as the current principal may see them."""
from __future__ import annotations

from scope.access import environment_for
from scope.errors import NotFound
from scope.models import Job
from web.context import principal, runtime
from web.services.approvals import fresh


def visible_job(job_id: str) -> Job:
    """The job if the caller may see its environment; NotFound otherwise (no leaking ids)."""
    job = runtime().jobs.get(job_id)
    try:
        environment_for(principal(), runtime().catalog, job.environment)
    except NotFound:
        raise NotFound(f"No job {job_id!r}.") from None
    return fresh(job)
