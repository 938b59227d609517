"""Slack commands and button presses, run as the mapped person through the same services as the API.

By the time these run, web/slack.py has verified Slack's signature and set the
request's principal (the Valet Key user Slack's e-mail names) and its audit
source ``slack``: scope, roles, prod, approvals and audit are the API's own
rules, because these are the API's own service calls. Refusals come back as
domain errors; web/slack.py turns them into ephemeral answers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from jobs.kinds import REDEPLOY, RESTART
from jobs.slack_messages import acknowledgement, escape
from jobs.slack_state import remember_reply
from scope.access import APPROVER_ROLES, visible_environments
from scope.errors import NotFound, ValidationFailed
from scope.models import Job
from scope.roles import Permission, allows
from web.context import principal, runtime
from web.guard import allow
from web.services.approvals import approve_job, reject_job
from web.services.environments import environment_detail, start_service_job

SHORT_ID = 8  # the job ids Slack messages show ("job 3f9c2a1b")
ACTIONS = {"restart": (RESTART, Permission.RESTART), "redeploy": (REDEPLOY, Permission.REDEPLOY)}
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}"
SERVICE_ACTION = re.compile(rf"(restart|redeploy)\s+({_NAME})\s+in\s+({_NAME})")
STATUS = re.compile(rf"status\s+({_NAME})")
DECIDE = re.compile(r"(approve|reject)\s+([0-9a-f]{1,32})")
USAGE = ("Usage: `/valet restart SERVICE in ENV [-- reason]`, `/valet redeploy SERVICE in ENV [-- reason]`, "
         "`/valet status ENV`, `/valet approve JOB`, `/valet reject JOB`, `/valet help`.")


@dataclass(frozen=True)
class Command:
    verb: str  # restart, redeploy, status, approve, reject, help
    args: tuple[str, ...] = ()
    reason: str | None = None

    @property
    def audit_action(self) -> str:
        """The audit action a refusal of this command is recorded under."""
        if self.verb in ACTIONS:
            return ACTIONS[self.verb][0]
        return {"approve": "approval.approve", "reject": "approval.reject"}.get(self.verb, "login")


def parse(text: str) -> Command:
    """The command in a slash command's text; ValidationFailed naming ``text`` with the usage otherwise."""
    body, sep, reason = text.strip().partition(" -- ")
    body = " ".join(body.split())
    if body in ("", "help"):
        return Command("help")
    for pattern in (SERVICE_ACTION, STATUS, DECIDE):
        m = pattern.fullmatch(body)
        if m:
            verb = m.group(1) if pattern is not STATUS else "status"
            args = m.groups()[1:] if pattern is not STATUS else m.groups()
            return Command(verb, tuple(args), reason.strip() if sep else None)
    raise ValidationFailed({"text": [f"I did not understand {escape(body[:80])!r}. {USAGE}"]})


def run(command: Command, response_url: str) -> str:
    """Run a parsed command as the request's principal; the ephemeral answer's text."""
    if command.verb == "help":
        return help_text()
    if command.verb == "status":
        return status_text(command.args[0])
    if command.verb in ACTIONS:
        svc, env = command.args
        action, permission = ACTIONS[command.verb]
        body, _, _ = start_service_job(env, svc, action, permission, command.reason)
        job = runtime().jobs.get(body["id"])
        if response_url:
            remember_reply(runtime().redis, job.id, response_url)
        return acknowledgement(runtime().settings.base_url, job)
    return decide(command.verb, command.args[0], command.reason)


def _full_id(job_id: str) -> str:
    """The job a short id (at least 8 characters, as Slack messages show them) names among the jobs
    awaiting approval; the id as given when it names none or several."""
    if len(job_id) >= 32 or len(job_id) < SHORT_ID:
        return job_id
    matches = [j.id for j in runtime().jobs.awaiting() if j.id.startswith(job_id)]
    return matches[0] if len(matches) == 1 else job_id


def decide(verb: str, job_id: str, reason: str | None = None) -> str:
    """Approve or reject a job awaiting approval, as the API's approve/reject do (no self-approval)."""
    full = _full_id(job_id)
    try:
        job: Job = approve_job(full, reason) if verb == "approve" else reject_job(full, reason)
    except NotFound:
        raise NotFound(f"No job {job_id!r}.") from None  # never the full id of a job they may not see
    base = runtime().settings.base_url
    if verb == "approve":
        return f"Approved: {acknowledgement(base, job)}"
    return f"Rejected job {job.id[:8]}: {escape(job.detail)}"


def help_text() -> str:
    """The commands this person may use, with the environments they may use them in."""
    p = principal()
    envs = visible_environments(p, runtime().catalog)
    if not envs:
        return "You hold no role in any environment yet: ask a platform engineer, or request access on the web."
    lines = ["You can:"]
    for verb, (_, permission) in ACTIONS.items():
        names = [e.name for e, r in envs if allows(r, permission) and e.actions_allowed]
        if names:
            lines.append(f"• `/valet {verb} SERVICE in ENV [-- reason]` in {', '.join(names)}")
    lines.append(f"• `/valet status ENV` in {', '.join(e.name for e, _ in envs)}")
    approvable = [e.name for e, r in envs if e.two_person and r in APPROVER_ROLES and e.actions_allowed]
    if approvable:
        lines.append(f"• `/valet approve JOB` · `/valet reject JOB` for others' requests in {', '.join(approvable)}")
    return "\n".join(lines)


def status_text(env_name: str) -> str:
    environment, role = allow(env_name, Permission.VIEW)
    detail = environment_detail(environment, role)
    state = "" if environment.actions_allowed else " (disabled: every action is refused)"
    lines = [f"*{escape(environment.name)}*{state}, your role: {role.value}"]
    for s in detail["services"]:
        lines.append(f"• *{escape(s['name'])}* {s['status']} — {s['running']}/{s['desired']} running · "
                     f"{escape(str(s.get('image') or ''))}")
    if not detail["services"]:
        lines.append("No services in its cluster.")
    return "\n".join(lines)
