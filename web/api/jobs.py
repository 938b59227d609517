"""Jobs and their progress events (long-polling)."""
from __future__ import annotations

from typing import Any

from jobs.kinds import TERMINAL
from jobs.service import job_dict
from web.api.blueprint import Blueprint
from web.api.schemas import JobEventsQuerySchema, JobEventsSchema, JobSchema
from web.context import runtime
from web.services.jobs import events_page, read_or_defer, visible_job

blp = Blueprint("jobs", __name__, url_prefix="/api/v1", description="Jobs")


@blp.get("/jobs/<job_id>")
@blp.response(200, JobSchema)
def get_job(job_id: str) -> dict[str, Any]:
    """A job: its status and, once finished, the verified outcome in ``detail``."""
    return job_dict(visible_job(job_id))


@blp.get("/jobs/<job_id>/events")
@blp.arguments(JobEventsQuerySchema, location="query", error_status_code=400)
@blp.response(200, JobEventsSchema)
def job_events(query: dict[str, Any], job_id: str) -> dict[str, Any]:
    """Progress events after ``after``; with ``wait`` long-polls up to 25 s for new ones."""
    job = visible_job(job_id)
    events = runtime().events
    after = query["after"]
    wait = query["wait"] if job.status not in TERMINAL else 0.0
    got = read_or_defer(events, job_id, after, wait)
    if got is None:
        # Deferred: the ASGI front waits off-thread and answers from the new events (or runs the
        # view again); this placeholder is never sent.
        return events_page([], after, False)
    nxt = got[-1].id if got else after
    # Done once the job is terminal and the caller has seen its final event.
    done = False
    if job.status in TERMINAL or not got or got[-1].type in TERMINAL:
        fresh = runtime().jobs.get(job_id)
        if fresh.status in TERMINAL:
            done = not events.read(job_id, nxt, 0)
    return events_page(got, after, done)
