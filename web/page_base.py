"""The pages blueprint, the decorator every page view wears, and the template helpers of the pages."""
from __future__ import annotations

import datetime as dt
import functools
import re
from typing import Any, Callable

from flask import Blueprint, redirect, request, url_for
from flask_login import current_user
from markupsafe import Markup

from scope.times import iso, parse_iso

bp = Blueprint("pages", __name__)

# What a job is called on its page and in notices ("Restart of orders-api in staging").
ACTION_WORDS = {"service.restart": "Restart", "service.redeploy": "Redeploy", "redis.flush": "Redis flush",
                "task.run": "One-off task"}

# How a restart/redeploy plan will act, in words (static/app.js mirrors it for the dialog).
MECHANISM_WORDS = {"deployment": "A new ECS deployment of the same image",
                   "batches": "Tasks replaced in batches (stop, then wait for the replacement)"}

# A job's status as a sentence says it ("already awaiting approval", not "awaiting_approval").
STATUS_WORDS = {"awaiting_approval": "awaiting approval"}

_DIGEST = re.compile(r"@sha256:([0-9a-f]{7,})", re.I)


def page(view: Callable[..., Any]) -> Callable[..., Any]:
    """Pages send anonymous visitors to the sign-in page instead of answering 401."""
    @functools.wraps(view)
    def wrapper(*a: Any, **kw: Any) -> Any:
        if not current_user.is_authenticated:
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        return view(*a, **kw)
    return wrapper


def time_tag(value: str | dt.datetime | None) -> Markup:
    """Every time on a page: UTC in the markup and the text (it says its zone); app.js shows it in the
    viewer's zone and keeps UTC in the title, so a screenshot pasted into a chat is never ambiguous."""
    if not value:
        return Markup('<span class="muted">—</span>')
    try:
        t = value if isinstance(value, dt.datetime) else parse_iso(value)
    except ValueError:
        return Markup("{}").format(value)
    if t.tzinfo is None:  # SQLite hands back naive datetimes; the database stores UTC
        t = t.replace(tzinfo=dt.timezone.utc)
    stamp = iso(t, "seconds")
    text = f"{stamp[:10]} {stamp[11:19]} UTC"
    return Markup('<time datetime="{}" title="{}">{}</time>').format(stamp, text, text)


def short_image(image: str) -> str:
    """``123.dkr.ecr…/orders-api:1.4@sha256:a3f2b1…`` → ``orders-api:1.4 · sha:a3f2b1`` (static/app.js mirrors it)."""
    if not image:
        return "—"
    digest = _DIGEST.search(image)
    name = _DIGEST.sub("", image).rsplit("/", 1)[-1]
    return f"{name} · sha:{digest.group(1)[:7]}" if digest else name


def job_title(job: dict[str, Any]) -> str:
    """``Restart of orders-api in staging``."""
    word = action_word(job["action"])
    target = job["target"].removeprefix("redis:")
    return f"{word} of {target} in {job['environment']}"


def action_word(action: str) -> str:
    return ACTION_WORDS.get(action, action)


def status_words(status: str) -> str:
    return STATUS_WORDS.get(status, status)


def template_helpers() -> dict[str, Any]:
    return {"time_tag": time_tag, "short_image": short_image, "job_title": job_title, "action_word": action_word,
            "status_words": status_words, "mechanism_words": MECHANISM_WORDS}
