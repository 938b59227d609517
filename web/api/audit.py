"""The audit trail: filtered pages and streamed CSV/JSON downloads."""
from __future__ import annotations

from typing import Any

from flask import Response, request, stream_with_context
from flask_smorest import Blueprint

from audit.export import write_export
from audit.queries import MAX_LIMIT, AuditFilter, entry_dict, page
from scope.errors import ValidationFailed
from scope.roles import Permission
from web.context import principal, runtime

blp = Blueprint("audit", __name__, url_prefix="/api/v1", description="Audit trail")
FILTERS = ("environment", "actor", "action", "outcome", "since", "until")


def audit_scope() -> list[str] | None:
    """None (everything) for auditors and admins; otherwise the environments one holds a role in."""
    p = principal()
    if p.can_global(Permission.AUDIT_ALL):
        return None
    return [e.name for e in runtime().catalog if p.role_in(e.name) is not None]


def parse_filter() -> AuditFilter:
    unknown = set(request.args) - set(FILTERS) - {"limit", "cursor"}
    if unknown:
        raise ValidationFailed({k: ["unknown filter"] for k in sorted(unknown)})
    return AuditFilter.parse({k: request.args.get(k, "") for k in FILTERS})


@blp.get("/audit")
def list_audit() -> dict[str, Any]:
    """A page of audit entries, newest first (filters: environment, actor, action, outcome, since, until)."""
    flt = parse_filter()
    try:
        limit = int(request.args.get("limit", "100"))
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError
    except ValueError:
        raise ValidationFailed({"limit": [f"must be an integer from 1 to {MAX_LIMIT}"]}) from None
    rows, nxt = page(runtime().sessions, flt, audit_scope(), limit, request.args.get("cursor") or None)
    return {"entries": [entry_dict(r) for r in rows], "cursor": nxt}


def _download(fmt: str) -> Response:
    flt = parse_filter()
    scope = audit_scope()
    mimetype = "text/csv" if fmt == "csv" else "application/json"
    body = write_export(runtime().sessions, flt, fmt, scope)
    resp = Response(stream_with_context(body), mimetype=mimetype)
    resp.headers["Content-Disposition"] = f'attachment; filename="valetkey-audit_{flt.slug()}.{fmt}"'
    return resp


@blp.get("/audit/export.csv")
def export_csv() -> Response:
    """All matching entries as CSV (header row; formula-like cells prefixed with ')."""
    return _download("csv")


@blp.get("/audit/export.json")
def export_json() -> Response:
    """All matching entries as one JSON array, with before/after and the hash chain fields."""
    return _download("json")
