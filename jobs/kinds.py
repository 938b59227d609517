"""Job kinds (the audit ``action`` of each) and their statuses."""
from __future__ import annotations

RESTART = "service.restart"
REDEPLOY = "service.redeploy"
FLUSH = "redis.flush"
RUN_TASK = "task.run"

# Every job is run by this actor; its only argument is the job id, the rest
# is read from the job row (actor arguments are ids, not payloads).
RUN_JOB_ACTOR = "run_job"
QUEUE = "valetkey"
# Announcements (Slack messages, signed outbound webhooks) go through a queue of their own, so
# that a slow chat service never delays a job and a job never waits for one (workers/notify.py).
NOTIFY_QUEUE = "valetkey.notify"
ANNOUNCE_ACTOR = "announce"
DELIVER_ACTOR = "deliver_webhook"
# What is announced about a job: it waits for approval, it was decided, it started, it ended.
APPROVAL_REQUESTED, DECIDED, STARTED, OUTCOME = "approval_requested", "decided", "started", "outcome"

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
# Two-person approval: a job waits (never enqueued) until approved, or ends rejected.
AWAITING_APPROVAL, REJECTED = "awaiting_approval", "rejected"
TERMINAL = frozenset({SUCCEEDED, FAILED, REJECTED})
# Internal: a job row committed by a request that has not completed yet (its ``requested``
# audit entry and its enqueue are still to come). No worker claims it and no approver sees
# it; the request promotes it to queued (or awaiting_approval) once both are done, and the
# sweeper ends one whose request died ("never confirmed; nothing was done"). Shown as queued.
UNCONFIRMED = "unconfirmed"


def public_status(status: str) -> str:
    """The contract's status of a job (DESIGN.md): the internal unconfirmed state reads as queued."""
    return QUEUED if status == UNCONFIRMED else status
JOB_STATUSES = (AWAITING_APPROVAL, QUEUED, RUNNING, SUCCEEDED, FAILED, REJECTED)

AUDIT_ACTIONS = ("service.restart", "service.redeploy", "logs.view", "redis.flush", "task.run",
                 "schedule.pause", "schedule.resume", "grant.add", "grant.remove", "token.create", "login",
                 "grant.expire", "approval.approve", "approval.reject", "access.request")
AUDIT_OUTCOMES = ("requested", "succeeded", "failed", "denied")
AUDIT_SOURCES = ("web", "api", "webhook", "scheduler", "cli", "slack")
