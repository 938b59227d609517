"""One-off tasks from the allowlist: validate the family, authorize, queue the job."""
from __future__ import annotations

import re
from typing import Any

from jobs.kinds import RUN_TASK
from jobs.service import job_dict
from scope.errors import Forbidden, ValidationFailed
from scope.roles import Permission
from web.context import principal, request_id, runtime, source
from web.guard import allow, audit_denied
from web.services.approvals import job_policy

FAMILY = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


def start_task_job(env: str, family: str, reason: str | None = None) -> dict[str, Any]:
    """Queue a one-off run of an allow-listed family; anything off the list is refused and audited."""
    if not FAMILY.match(family or ""):
        # Only a family name: a revision or ARN would let a caller pick an older,
        # unreviewed revision or another family's definition.
        raise ValidationFailed({"task_definition": ["Give a task definition family name (no revision, no ARN)."]})
    environment, _ = allow(env, Permission.RUN_TASK, action=RUN_TASK, target=family)
    if family not in environment.run_tasks:
        detail = f"{family} is not on {env}'s list of task definitions allowed for one-off runs."
        audit_denied(RUN_TASK, env, family, detail)
        raise Forbidden(detail)
    why, approval = job_policy(environment, RUN_TASK, family, reason)
    job = runtime().jobs.create(action=RUN_TASK, environment=environment.name, target=family,
                                actor=principal().actor, source=source(), request_id=request_id(),
                                reason=why, approval=approval)
    return job_dict(job)
