"""The pages blueprint and the decorator every page view wears (shared by pages.py and pages_logs.py)."""
from __future__ import annotations

import functools
from typing import Any, Callable

from flask import Blueprint, redirect, request, url_for
from flask_login import current_user

bp = Blueprint("pages", __name__)


def page(view: Callable[..., Any]) -> Callable[..., Any]:
    """Pages send anonymous visitors to the sign-in page instead of answering 401."""
    @functools.wraps(view)
    def wrapper(*a: Any, **kw: Any) -> Any:
        if not current_user.is_authenticated:
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        return view(*a, **kw)
    return wrapper
