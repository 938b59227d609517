"""Flush the keys of a declared Redis target that match a pattern: count, refuse above the cap, SCAN + UNLINK.

The job row holds the target name and the pattern, never the URL (it is read
from the process environment here). Redelivery is safe: a second run counts
and deletes what is left, and the running total is checkpointed per batch
(which also keeps the job's lease alive during a long flush).
"""
from __future__ import annotations

from typing import Any

from cloud.errors import RedisTargetError
from cloud.redis_targets import SCAN_COUNT, TargetClient, validate_pattern
from scope.catalog import RedisTarget
from scope.errors import Forbidden, OperationFailed, ValidationFailed, job_error
from workers.context import JobContext, Outcome


def keys_phrase(n: int) -> str:
    return f"{n} key{'' if n == 1 else 's'}"


def _target(ctx: JobContext) -> RedisTarget:
    name = str(ctx.params.get("redis_target", ""))
    target = ctx.env.redis.get(name)
    if target is None:
        raise Forbidden(f"Refused at run time: Redis target {name!r} is no longer configured in "
                        f"{ctx.env.name}; nothing was done.")
    return target


def flush(ctx: JobContext) -> Outcome:
    target = _target(ctx)
    try:
        # Checked again at run time: the rules may have tightened since the request.
        pattern = validate_pattern(ctx.params.get("pattern"))
    except ValidationFailed as e:
        raise OperationFailed(f"Refused: {e.fields['pattern'][0]} Nothing was deleted.") from None
    try:
        with TargetClient.connect(target, ctx.settings.environ) as client:
            return _flush(ctx, client, target, pattern)
    except RedisTargetError as e:
        done = int(ctx.params.get("deleted", 0))
        so_far = f" {keys_phrase(done)} had been deleted." if done else " Nothing was deleted."
        raise job_error(e, so_far) from None


def _flush(ctx: JobContext, client: TargetClient, target: RedisTarget, pattern: str) -> Outcome:
    params: dict[str, Any] = ctx.params
    deleted = int(params.get("deleted", 0))
    cap = target.max_keys
    matched, capped = client.count(pattern, cap - deleted + 1)
    if capped:
        raise OperationFailed(f"Refused: more than {cap} keys match {pattern} in {target.name} "
                              f"(max_keys {cap}); nothing was deleted.")
    ctx.progress("count", f"{keys_phrase(matched)} match {pattern} in {target.name}"
                          f"{' (cluster: every primary scanned)' if client.cluster else ''}")
    for batch in client.batches(pattern, SCAN_COUNT):
        # Keys written while we flush also match; the cap still bounds what we delete.
        room = cap - deleted
        deleted += client.unlink(batch[:room])
        params["deleted"] = deleted
        ctx.checkpoint(params)
        if len(batch) > room:
            raise OperationFailed(f"Pattern: {pattern} — {keys_phrase(deleted)} deleted, then stopped at the "
                                  f"cap of {cap}: more keys appeared while flushing.")
        ctx.progress("progress", f"Deleted {deleted} of {matched} matching key(s)")
    return Outcome(f"Pattern: {pattern} — {keys_phrase(deleted)} deleted",
                   after={"target": target.name, "pattern": pattern, "deleted": deleted})
