"""Which job events are announced (Slack, signed outbound webhooks), and handing them to the notify queue.

The job service calls an Announcer at each step of a job's life. It decides from
the catalog alone (no I/O) whether anyone listens, then enqueues one small
message; the notify worker (workers/notify.py) does the talking. An announcement
that cannot be enqueued is logged and dropped: it never fails or delays the job,
and the job's own audit entries are written by the job service regardless.
"""
from __future__ import annotations

import logging

import dramatiq

from jobs.broker import send_announce
from jobs.kinds import APPROVAL_REQUESTED, DECIDED, OUTCOME, STARTED
from scope.catalog import Catalog
from scope.models import Job

log = logging.getLogger(__name__)
SLACK_SOURCE = "slack"


class Announcer:
    def __init__(self, broker: dramatiq.Broker | None, catalog: Catalog, *, slack: bool) -> None:
        self.broker, self.catalog, self.slack = broker, catalog, slack

    def wanted(self, kind: str, job: Job) -> bool:
        env = self.catalog.get(job.environment)
        if env is None:
            return False
        from_slack = self.slack and job.source == SLACK_SOURCE
        channel = self.slack and env.slack_channel is not None
        if kind in (APPROVAL_REQUESTED, DECIDED):
            return channel or from_slack
        if kind == STARTED:
            return from_slack
        if kind == OUTCOME:
            return channel or from_slack or bool(env.notify)
        return False

    def __call__(self, kind: str, job: Job) -> None:
        if self.broker is None or not self.wanted(kind, job):
            return
        try:
            send_announce(self.broker, kind, job.id)
        except Exception:  # noqa: BLE001 - a lost announcement must never touch the job
            log.warning("job %s: the %s announcement could not be queued", job.id, kind)


def no_announcements(kind: str, job: Job) -> None:
    """The job service's default: nobody listens."""
