"""The audit trail as the current principal may see it: scoping, filters, pages."""
from __future__ import annotations

from typing import Any

from flask import request

from audit.queries import FILTER_ACTIONS, MAX_LIMIT, AuditFilter, entry_dict, page
from jobs.kinds import AUDIT_OUTCOMES
from scope.errors import ValidationFailed
from scope.roles import Permission
from web.context import principal, runtime

FILTERS = ("environment", "actor", "action", "outcome", "since", "until")


DEFAULT_LIMIT = 100


def audit_scope() -> list[str] | None:
    """None (everything) for auditors and admins; otherwise the environments one holds a role in.

    Entries without an environment (logins, global grants, purges) are then out of sight too.
    """
    p = principal()
    if p.can_global(Permission.AUDIT_ALL):
        return None
    return [e.name for e in runtime().catalog if p.role_in(e.name) is not None]


def parse_filter(extra: tuple[str, ...] = ()) -> AuditFilter:
    unknown = set(request.args) - set(FILTERS) - set(extra)
    if unknown:
        raise ValidationFailed({k: [f"unknown parameter; filters are {', '.join(FILTERS)}"]
                                for k in sorted(unknown)})
    return AuditFilter.parse({k: request.args.get(k, "") for k in FILTERS})


def parse_limit(value: str | None) -> int:
    try:
        limit = int(value) if value not in (None, "") else DEFAULT_LIMIT
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError
    except ValueError:
        raise ValidationFailed({"limit": [f"must be an integer from 1 to {MAX_LIMIT}"]}) from None
    return limit


def recent_entries(environment: str, limit: int = 20) -> list[dict[str, Any]]:
    """The newest entries of one environment the current principal may see (the environment page)."""
    rows, _ = page(runtime().sessions, AuditFilter(environment=environment), audit_scope(), limit)
    return [entry_dict(r, full=False) for r in rows]


# ---- the audit page (web/pages.py renders it; same queries and scoping as the API) ------------
def audit_page_context() -> tuple[dict[str, Any], int]:
    """Template context for /audit and its status: 400 with the field errors for bad filters."""
    scope = audit_scope()
    environments = [e.name for e in runtime().catalog] if scope is None else scope
    values = {k: request.args.get(k, "") for k in FILTERS}
    ctx: dict[str, Any] = {"filters": values, "environments": environments, "actions": FILTER_ACTIONS,
                           "outcomes": AUDIT_OUTCOMES, "entries": [], "cursor": None, "errors": {},
                           "everything": scope is None,
                           "downloads": {k: v for k, v in values.items() if v}}
    try:
        flt = parse_filter(extra=("limit", "cursor"))
        rows, nxt = page(runtime().sessions, flt, scope, parse_limit(request.args.get("limit") or "50"),
                         request.args.get("cursor") or None)
    except ValidationFailed as e:
        ctx["errors"] = {k: " ".join(map(str, v)) for k, v in e.fields.items()}
        return ctx, 400
    ctx["entries"] = one_row_per_operation([entry_dict(r, full=False) for r in rows])
    ctx["cursor"] = nxt
    return ctx, 200


# The entries a job's outcome stands for on the page: its request and the decision on its approval.
_FOLDED = {"requested"}
_FOLDED_ACTIONS = {"approval.approve", "approval.reject"}


def one_row_per_operation(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Newest first, as read; a job's outcome (succeeded/failed) takes in the older entries of the same
    job on this page (its request, who approved it) as ``earlier``, so an operation is one row with its
    outcome. Nothing is dropped: each folded entry is listed in that row, and the exports stay entry by entry."""
    rows: list[dict[str, Any]] = []
    outcome_row: dict[str, dict[str, Any]] = {}
    for e in entries:
        job = e.get("job_id")
        head = outcome_row.get(job) if job else None
        if head is not None and (e["outcome"] in _FOLDED or e["action"] in _FOLDED_ACTIONS):
            head["earlier"].append(e)
            if not head.get("reason") and e.get("reason"):
                head["reason"] = e["reason"]
            continue
        row = {**e, "earlier": []}
        if job and e["outcome"] in ("succeeded", "failed") and job not in outcome_row:
            outcome_row[job] = row
        rows.append(row)
    return rows
