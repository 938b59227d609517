"""One-off tasks from the allowlist."""
from __future__ import annotations

from flask_smorest import Blueprint

blp = Blueprint("tasks", __name__, url_prefix="/api/v1", description="One-off tasks from the allowlist")
