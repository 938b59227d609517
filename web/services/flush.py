"""Redis flush by pattern: authorize, validate the pattern, count (dry run) or queue the job."""
from __future__ import annotations

import logging
from typing import Any

from cloud.redis_targets import dry_run, validate_pattern
from jobs.kinds import FLUSH
from jobs.service import job_dict
from scope.catalog import Environment, RedisTarget
from scope.errors import NotFound, ValidationFailed
from scope.roles import Permission
from web.context import principal, request_id, runtime, source
from web.guard import allow, audit_denied
from web.services.approvals import job_policy

log = logging.getLogger("valetkey.web")


def job_target(name: str) -> str:
    """The job/audit target of a flush: prefixed so that it can never share a lock with a service."""
    return f"redis:{name}"


def flush_target(env: str, name: str, pattern: str) -> tuple[Environment, RedisTarget, str]:
    """Authorize a flush of ``pattern`` in target ``name``; every refusal is audited ``denied``."""
    environment, _ = allow(env, Permission.FLUSH, action=FLUSH, target=job_target(name))
    target = environment.redis.get(name)
    if target is None:
        detail = f"No Redis target named {name!r} in {env}."
        audit_denied(FLUSH, env, job_target(name), detail)
        raise NotFound(detail)
    try:
        pattern = validate_pattern(pattern)
    except ValidationFailed as e:
        shown = pattern[:120] if isinstance(pattern, str) else pattern
        audit_denied(FLUSH, env, job_target(name), f"Refused pattern {shown!r}: {e.fields['pattern'][0]}")
        raise
    return environment, target, pattern


def preview_flush(env: str, name: str, pattern: str) -> dict[str, Any]:
    """Count the keys a flush would delete (nothing is changed, so no job and no audit entry)."""
    environment, target, pattern = flush_target(env, name, pattern)
    result = dry_run(target, runtime().settings.environ, pattern)
    log.info("flush dry run by %s in %s/%s: %r matched %d%s", principal().actor, environment.name, name,
             pattern, result["matched"], " (capped)" if result["capped"] else "")
    return result


def start_flush_job(env: str, name: str, pattern: str, reason: str | None = None) -> dict[str, Any]:
    """Queue the flush; the job counts again and refuses above the target's max_keys."""
    environment, target, pattern = flush_target(env, name, pattern)
    why, approval = job_policy(environment, FLUSH, job_target(target.name), reason)
    job = runtime().jobs.create(action=FLUSH, environment=environment.name, target=job_target(target.name),
                                actor=principal().actor, source=source(), request_id=request_id(),
                                params={"redis_target": target.name, "pattern": pattern},
                                detail=f"Pattern: {pattern}", reason=why, approval=approval)
    return job_dict(job)
