"""Service logs from CloudWatch (history and live tail)."""
from __future__ import annotations

from flask_smorest import Blueprint

blp = Blueprint("logs", __name__, url_prefix="/api/v1", description="Service logs from CloudWatch (history and live tail)")
