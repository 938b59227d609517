"""Redis flush by pattern."""
from __future__ import annotations

from flask_smorest import Blueprint

blp = Blueprint("flush", __name__, url_prefix="/api/v1", description="Redis flush by pattern")
