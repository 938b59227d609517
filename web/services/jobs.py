"""Jobs as the current principal may see them."""
from __future__ import annotations

from jobs.events import MAX_WAIT, JobEvent, JobEvents, stream_key
from scope.access import environment_for
from scope.errors import NotFound
from scope.models import Job
from web.context import principal, runtime
from web.watch import current_slot


def visible_job(job_id: str) -> Job:
    """The job if the caller may see its environment; NotFound otherwise (no leaking ids)."""
    job = runtime().jobs.get(job_id)
    try:
        environment_for(principal(), runtime().catalog, job.environment)
    except NotFound:
        raise NotFound(f"No job {job_id!r}.") from None
    return job


def read_or_defer(events: JobEvents, job_id: str, after: str | None, wait: float) -> list[JobEvent] | None:
    """The job's events after ``after``, waiting up to ``wait`` s for some; None when the request came
    through the ASGI front and there is nothing yet: the front then waits without this thread
    (web/watch.py). Under a plain WSGI server the thread waits, as it always did."""
    slot = current_slot()
    if slot is None:
        return events.read(job_id, after, wait)
    got = events.read(job_id, after, 0)  # validates ``after`` before anything waits on it
    if got or not slot.defer(stream_key(job_id), after or "0-0", min(wait, MAX_WAIT)):
        return got
    return None
