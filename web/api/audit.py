"""The audit trail: filtered pages and streamed CSV/JSON downloads."""
from __future__ import annotations

from typing import Any

from flask import Response, request, stream_with_context

from audit.export import write_export
from audit.queries import FILTER_ACTIONS, MAX_LIMIT, entry_dict, page
from jobs.kinds import AUDIT_OUTCOMES
from web.api.blueprint import Blueprint
from web.api.schemas import AuditPageSchema, ProblemSchema
from web.context import runtime
from web.errors import PROBLEM
from web.services.audit import (
    DEFAULT_LIMIT,
    audit_scope,
    parse_filter,
    parse_limit,
)

blp = Blueprint("audit", __name__, url_prefix="/api/v1", description="Audit trail")


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
_BAD = {"400": {"description": "a filter is invalid (problem+json naming the field)",
                "content": {PROBLEM: {"schema": ProblemSchema}}}}
_PAGE = {"200": {"description": "a page of entries, newest first",
                 "content": {"application/json": {"schema": AuditPageSchema}}}}


@blp.get("/audit")
@blp.doc(parameters=_FILTER_DOCS + _PAGE_DOCS, responses={**_PAGE, **_BAD})
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


