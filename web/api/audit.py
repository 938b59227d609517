"""The audit trail: filtered pages and streamed CSV/JSON downloads."""
from __future__ import annotations

from typing import Any

from flask import Response, request, stream_with_context
from flask_smorest import Blueprint

from audit.export import write_export
from audit.queries import FILTER_ACTIONS, MAX_LIMIT, AuditFilter, entry_dict, page
from jobs.kinds import AUDIT_OUTCOMES
from scope.errors import ValidationFailed
from scope.roles import Permission
from web.context import principal, runtime

blp = Blueprint("audit", __name__, url_prefix="/api/v1", description="Audit trail")
FILTERS = ("environment", "actor", "action", "outcome", "since", "until")
DEFAULT_LIMIT = 100


_FILTER_DOCS = [
    {"in": "query", "name": "environment", "schema": {"type": "string"}, "description": "one environment"},
    {"in": "query", "name": "actor", "schema": {"type": "string"},
     "description": "exact actor (e-mails compared lowercased)"},
    {"in": "query", "name": "action", "schema": {"type": "string", "enum": list(FILTER_ACTIONS)}},
    {"in": "query", "name": "outcome", "schema": {"type": "string", "enum": list(AUDIT_OUTCOMES)}},
    {"in": "query", "name": "since", "schema": {"type": "string"},
     "description": "inclusive; ISO 8601 (UTC unless an offset is given) or an age like 15m, 2h, 7d"},
    {"in": "query", "name": "until", "schema": {"type": "string"}, "description": "exclusive; like since"},
]
_PAGE_DOCS = [
    {"in": "query", "name": "limit", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                                                "default": DEFAULT_LIMIT}},
    {"in": "query", "name": "cursor", "schema": {"type": "string"},
     "description": "the cursor of the previous page"},
]
_BAD = {"400": {"description": "a filter is invalid (problem+json naming the field)"}}


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


@blp.get("/audit")
@blp.doc(parameters=_FILTER_DOCS + _PAGE_DOCS, responses=_BAD)
def list_audit() -> dict[str, Any]:
    """A page of audit entries, newest first (filters: environment, actor, action, outcome, since, until;
    pass the returned cursor to get the next page)."""
    flt = parse_filter(extra=("limit", "cursor"))
    limit = parse_limit(request.args.get("limit"))
    rows, nxt = page(runtime().sessions, flt, audit_scope(), limit, request.args.get("cursor") or None)
    return {"entries": [entry_dict(r) for r in rows], "cursor": nxt}


def _download(fmt: str) -> Response:
    flt = parse_filter()
    body = write_export(runtime().sessions, flt, fmt, audit_scope())
    resp = Response(stream_with_context(body),
                    mimetype="text/csv" if fmt == "csv" else "application/json")
    if fmt == "csv":
        resp.headers["Content-Type"] = "text/csv; charset=utf-8; header=present"
    resp.headers["Content-Disposition"] = f'attachment; filename="valetkey-audit_{flt.slug()}.{fmt}"'
    return resp


@blp.get("/audit/export.csv")
@blp.doc(parameters=_FILTER_DOCS, responses={"200": {"description": "CSV download", "content": {
    "text/csv": {"schema": {"type": "string"}}}}, **_BAD})
def export_csv() -> Response:
    """All matching entries, oldest first, as CSV (header row; formula-like cells prefixed with ')."""
    return _download("csv")


@blp.get("/audit/export.json")
@blp.doc(parameters=_FILTER_DOCS, responses={"200": {"description": "JSON download: an array of entries",
                                                     "content": {"application/json": {"schema": {"type": "array"}}}},
                                            **_BAD})
def export_json() -> Response:
    """All matching entries, oldest first, as one JSON array, with before/after and the hash chain fields."""
    return _download("json")


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
    ctx["entries"] = [entry_dict(r, full=False) for r in rows]
    ctx["cursor"] = nxt
    return ctx, 200
