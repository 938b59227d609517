"""Server-rendered pages. Views are thin: authorize, call the same services as the API, render."""
from __future__ import annotations

import functools
from typing import Any, Callable

from flask import Blueprint, Flask, Response, redirect, render_template, request, url_for
from flask_login import current_user

from jobs.kinds import REDEPLOY, RESTART
from jobs.service import job_dict
from scope.access import visible_environments
from scope.errors import UpstreamError
from scope.roles import Permission
from web.api.environments import environment_detail, start_service_job
from web.api.guard import allow
from web.api.jobs import visible_job
from web.context import principal, runtime

bp = Blueprint("pages", __name__)


def page(view: Callable[..., Any]) -> Callable[..., Any]:
    """Pages send anonymous visitors to the sign-in page instead of answering 401."""
    @functools.wraps(view)
    def wrapper(*a: Any, **kw: Any) -> Any:
        if not current_user.is_authenticated:
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        return view(*a, **kw)
    return wrapper


@bp.get("/")
@page
def index() -> str:
    """The environments you may operate."""
    envs = visible_environments(principal(), runtime().catalog)
    return render_template("environments.html", environments=envs)


@bp.get("/environments/<env>")
@page
def environment(env: str) -> str:
    """One environment: services with their health and the actions your role allows."""
    environment, role = allow(env, Permission.VIEW)
    error = None
    try:
        detail = environment_detail(environment, role)
    except UpstreamError as e:
        detail = {"name": env, "cls": environment.cls, "enabled": environment.enabled, "role": role.value,
                  "services": [], "redis": sorted(environment.redis), "run_tasks": list(environment.run_tasks),
                  "schedule": None, "permissions": []}
        error = e.detail
    return render_template("environment.html", env=detail, error=error)


@bp.post("/environments/<env>/services/<svc>/<action>")
@page
def service_action(env: str, svc: str, action: str) -> Response:
    """The Restart / Redeploy buttons: start the job, then watch it on its page."""
    kinds = {"restart": (RESTART, Permission.RESTART), "redeploy": (REDEPLOY, Permission.REDEPLOY)}
    if action not in kinds:
        from werkzeug.exceptions import NotFound as HTTPNotFound
        raise HTTPNotFound()
    body, _, _ = start_service_job(env, svc, *kinds[action])
    return redirect(url_for("pages.job", job_id=body["id"]))


@bp.get("/jobs/<job_id>")
@page
def job(job_id: str) -> str:
    """A job's live progress and its verified outcome."""
    return render_template("job.html", job=job_dict(visible_job(job_id)))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

    @app.context_processor
    def _globals() -> dict[str, Any]:
        return {"me": current_user if current_user.is_authenticated else None}
