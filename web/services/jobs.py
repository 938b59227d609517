"""Jobs as the current principal may see them."""
from __future__ import annotations

from functools import partial
from typing import Any

from sqlalchemy import select

from jobs.events import MAX_WAIT, JobEvent, JobEvents, event_from_entry, stream_key
from jobs.kinds import AWAITING_APPROVAL, QUEUED, RUNNING, TERMINAL
from scope.access import environment_for
from scope.errors import NotFound
from scope.models import Job
from web.context import principal, runtime
from web.services.approvals import fresh
from web.watch import current_slot


def visible_job(job_id: str) -> Job:
    """The job if the caller may see its environment; NotFound otherwise (no leaking ids)."""
    job = runtime().jobs.get(job_id)
    try:
        environment_for(principal(), runtime().catalog, job.environment)
    except NotFound:
        raise NotFound(f"No job {job_id!r}.") from None
    return fresh(job)


def events_page(got: list[JobEvent], after: str | None, done: bool) -> dict[str, Any]:
    """The body of ``GET /api/v1/jobs/{id}/events``."""
    return {"events": [e.as_dict() for e in got], "next": got[-1].id if got else after, "done": done}


def read_or_defer(events: JobEvents, job_id: str, after: str | None, wait: float) -> list[JobEvent] | None:
    """The job's events after ``after``, waiting up to ``wait`` s for some; None when the request came
    through the ASGI front and there is nothing yet: the front then waits without this thread
    (web/watch.py). Under a plain WSGI server the thread waits, as it always did."""
    slot = current_slot()
    if slot is None:
        return events.read(job_id, after, wait)
    got = events.read(job_id, after, 0)  # validates ``after`` before anything waits on it
    if slot.defer(stream_key(job_id), after or "0-0", 0.0 if got else min(wait, MAX_WAIT),
                  partial(_answer_woken, after=after)):
        return None
    return got


def _answer_woken(entries: list[tuple[Any, dict[Any, Any]]], after: str | None) -> dict[str, Any] | None:
    """The answer to a deferred poll from the entries that woke it, when it needs nothing else: the job
    was running when the poll began, so while its newest event is not a final one it is not done
    (the view's rule). A final event, or none, takes the view's own second pass (done needs the row)."""
    got = [event_from_entry(eid, fields) for eid, fields in entries]
    if not got or got[-1].type in TERMINAL:
        return None
    return events_page(got, after, False)


# Statuses of a job that still holds (or waits for) its service.
ACTIVE_STATUSES = (AWAITING_APPROVAL, QUEUED, RUNNING)


def active_jobs(environment: str, limit: int = 50) -> list[Job]:
    """Jobs of an environment not finished yet, oldest first (the environment page marks their services).
    A lapsed approval window is turned into ``rejected`` first, as on every read of a job."""
    with runtime().sessions() as s:
        jobs = list(s.scalars(select(Job).where(Job.environment == environment, Job.status.in_(ACTIVE_STATUSES))
                              .order_by(Job.created_at).limit(limit)))
    return [j for j in map(fresh, jobs) if j.status in ACTIVE_STATUSES]
