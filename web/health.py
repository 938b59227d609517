"""Liveness and readiness probes."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from web.context import runtime
from web.errors import problem

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Readiness: Redis and the database answer."""
    rt = runtime()
    checks: dict[str, str] = {}
    try:
        rt.redis.ping()
        checks["redis"] = "ok"
    except Exception:  # noqa: BLE001 - any failure means not ready
        checks["redis"] = "unavailable"
    try:
        with rt.engine.connect() as c:
            c.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception:  # noqa: BLE001
        checks["database"] = "unavailable"
    if all(v == "ok" for v in checks.values()):
        return jsonify({"status": "ok", "checks": checks})
    down = ", ".join(k for k, v in checks.items() if v != "ok")
    return problem(503, "Service Unavailable", f"Not ready: {down} unavailable.", checks=checks)
