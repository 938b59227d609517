"""What Valet Key says in Slack about a job: the same words from the web process (acknowledgements,
button answers) and from the notify worker (approval requests, progress, outcomes)."""
from __future__ import annotations

from typing import Any

from jobs.kinds import AWAITING_APPROVAL, FAILED, REJECTED, SUCCEEDED
from scope.models import Job

APPROVE, REJECT = "valetkey_approve", "valetkey_reject"  # the buttons' action_id
VERBS = {"service.restart": "Restart", "service.redeploy": "Redeploy", "redis.flush": "Flush",
         "task.run": "One-off task"}


def escape(text: str) -> str:
    """Slack's mrkdwn control characters (&, <, >) as entities: a service name or reason cannot
    turn into a link or a mention."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def job_url(base_url: str, job_id: str) -> str:
    return f"{base_url}/jobs/{job_id}"


def what(job: Job) -> str:
    return f"{VERBS.get(job.action, job.action)} of *{escape(job.target)}* in *{escape(job.environment)}*"


def link(base_url: str, job: Job) -> str:
    return f"<{job_url(base_url, job.id)}|job {job.id[:8]}>"


def acknowledgement(base_url: str, job: Job) -> str:
    if job.status == AWAITING_APPROVAL:
        return (f"{what(job)} requested ({link(base_url, job)}): it waits for a second person's approval "
                "(30 minutes). You will hear here when it is decided.")
    return f"{what(job)} queued ({link(base_url, job)}). You will hear here when it has finished."


def _reason(job: Job) -> str:
    return f"\nReason: {escape(job.reason)}" if job.reason else ""


def approval_request(base_url: str, job: Job) -> tuple[str, list[dict[str, Any]]]:
    """The channel message with Approve / Reject buttons (their value is the job id)."""
    text = f"{escape(job.actor)} asks for {what(job)} ({link(base_url, job)}).{_reason(job)}"
    plan = job.plan or {}
    steps = "\n".join(f"• {escape(s)}" for s in plan.get("steps", [])[:6])
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    if steps:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"Plan:\n{steps}"}})
    blocks.append({"type": "actions", "block_id": f"approval:{job.id}", "elements": [
        {"type": "button", "action_id": APPROVE, "style": "primary", "value": job.id,
         "text": {"type": "plain_text", "text": "Approve"}},
        {"type": "button", "action_id": REJECT, "style": "danger", "value": job.id,
         "text": {"type": "plain_text", "text": "Reject"}}]})
    return text, blocks


def decided(base_url: str, job: Job) -> tuple[str, list[dict[str, Any]]]:
    """The approval request once decided: who decided, no more buttons."""
    if job.status == REJECTED:
        verdict = escape(job.detail)
    else:
        verdict = f"Approved by {escape(job.approved_by or '')}."
    text = f"{escape(job.actor)} asked for {what(job)} ({link(base_url, job)}).{_reason(job)}\n{verdict}"
    return text, [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]


def started(base_url: str, job: Job) -> str:
    return f"{what(job)} is running ({link(base_url, job)})."


def outcome(base_url: str, job: Job) -> str:
    mark = {SUCCEEDED: "Succeeded", FAILED: "Failed", REJECTED: "Rejected"}.get(job.status, job.status)
    return f"{mark}: {what(job)} by {escape(job.actor)} ({link(base_url, job)})\n{escape(job.detail)}"
