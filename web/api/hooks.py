"""Signed redeploy webhooks for CI (GitHub Actions)."""
from __future__ import annotations

from flask_smorest import Blueprint

blp = Blueprint("hooks", __name__, url_prefix="/hooks", description="Webhooks for CI")
