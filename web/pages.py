"""Server-rendered pages. Views are thin: authorize, call the same services as the API, render."""
from __future__ import annotations

from typing import Any, Callable

from flask import (
    Flask,
    abort,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user
from werkzeug.wrappers import Response as WResponse  # what redirect() returns; flask's Response is one

from jobs.kinds import REDEPLOY, RESTART
from jobs.service import job_dict
from scope.access import environment_for, visible_environments
from scope.errors import Conflict, UpstreamError, ValidationFailed
from scope.roles import Permission
from web.context import principal, runtime
from web.guard import allow
from web.page_base import bp, job_title, page, status_words, template_helpers
from web.services.access import pending_for_me
from web.services.approvals import awaiting_my_decision, may_decide
from web.services.audit import audit_page_context, recent_entries
from web.services.environments import environment_detail, permissions, start_service_job
from web.services.flush import preview_flush, start_flush_job
from web.services.jobs import active_jobs, visible_job
from web.services.schedule import pause_schedule, resume_schedule
from web.services.tasks import start_task_job


@bp.get("/")
@page
def index() -> str:
    """The environments you may operate."""
    envs = visible_environments(principal(), runtime().catalog)
    return render_template("environments.html", environments=envs, awaiting=[job_dict(j) for j in awaiting_my_decision()],
                           access_requests=pending_for_me())


@bp.get("/environments/<env>")
@page
def environment(env: str) -> str:
    """One environment: services with their health and the actions your role allows."""
    return _environment_page(env)


@bp.post("/environments/<env>/services/<svc>/<action>")
@page
def service_action(env: str, svc: str, action: str) -> WResponse:
    """The Restart / Redeploy buttons: start the job, then watch it on its page."""
    kinds = {"restart": (RESTART, Permission.RESTART), "redeploy": (REDEPLOY, Permission.REDEPLOY)}
    if action not in kinds:
        abort(404)
    return _start_and_watch(lambda: start_service_job(env, svc, *kinds[action], _reason())[0])


def _reason() -> str | None:
    """The ``reason`` of the confirmation dialog, passed on as typed: the service functions clean it,
    enforce ``require_reason`` (refused and audited) and store it on the job and its audit entry."""
    return request.form.get("reason")


def _start_and_watch(start: Callable[[], dict[str, Any]]) -> WResponse:
    """Start a job and show its page. A second click while one runs (409) shows the running
    job with a notice instead of an error page: that is what the person was looking for."""
    try:
        body = start()
    except Conflict as e:
        running_id = e.extra.get("job_id")
        if not running_id:
            raise
        running = job_dict(visible_job(running_id))
        flash(f"Nothing new was started: {job_title(running)} is already {status_words(running['status'])} "
              f"(requested by {running['actor']}). This is that job.", "notice")
        return redirect(url_for("pages.job", job_id=running_id))
    return redirect(url_for("pages.job", job_id=body["id"]))


@bp.get("/jobs/<job_id>")
@page
def job(job_id: str) -> str:
    """A job's live progress as a timeline, its verified outcome, and what to do next."""
    record = visible_job(job_id)
    body = job_dict(record)
    environment, role = environment_for(principal(), runtime().catalog, record.environment)
    plan = body.get("plan")  # carried by jobs that waited for an approver (they decide on it)
    return render_template("job.html", job=body, title=job_title(body), plan=plan,
                           permissions=permissions(environment, role), may_decide=may_decide(record),
                           is_service_job=record.action in (RESTART, REDEPLOY),
                           require_reason=environment.require_reason, approval=environment.approval)


# ---- Redis flush and one-off tasks (same service functions as the API) --------------
def _environment_page(env: str, **extra: Any) -> str:
    """The environment page again, with extra context for its sections (e.g. a flush preview)."""
    environment, role = allow(env, Permission.VIEW)
    error = None
    try:
        detail = environment_detail(environment, role)
    except UpstreamError as e:
        detail = {"name": env, "cls": environment.cls, "enabled": environment.enabled, "role": role.value,
                  "services": [], "redis": sorted(environment.redis), "run_tasks": list(environment.run_tasks),
                  "schedule": None, "permissions": [], "approval": environment.approval,
                  "require_reason": environment.require_reason}
        error = e.detail
    running = {j.target: job_dict(j) for j in active_jobs(env)}
    return render_template("environment.html", env=detail, error=error, history=recent_entries(env),
                           running=running, require_reason=environment.require_reason,
                           approval=environment.approval,
                           **extra)


@bp.get("/environments/<env>/redis/<target>/flush")
@page
def redis_flush_preview(env: str, target: str) -> str:
    """Step 1 of a flush: count what the pattern matches (changes nothing) and offer the confirm button."""
    pattern = request.args.get("pattern", "")
    try:
        preview = preview_flush(env, target, pattern)
    except ValidationFailed as e:
        preview = {"target": target, "pattern": pattern, "error": e.fields.get("pattern", [e.detail])[0]}
    except UpstreamError as e:
        preview = {"target": target, "pattern": pattern, "error": e.detail}
    return _environment_page(env, flush_preview=preview)


@bp.post("/environments/<env>/redis/<target>/flush")
@page
def redis_flush(env: str, target: str) -> WResponse:
    """Step 2 of a flush: the explicit confirm starts the job (which counts again and respects the cap)."""
    return _start_and_watch(lambda: start_flush_job(env, target, request.form.get("pattern", ""), _reason()))


@bp.post("/environments/<env>/tasks")
@page
def run_task(env: str) -> WResponse:
    """The Run button of an allow-listed one-off task."""
    return _start_and_watch(lambda: start_task_job(env, request.form.get("task_definition", ""), _reason()))


# ---- schedule pause / resume (same service functions as the API) ---------------------
@bp.post("/environments/<env>/schedule/pause")
@page
def schedule_pause(env: str) -> Any:
    """The Pause button; an optional ``until``: ISO 8601 (app.js sends UTC), or wall-clock time in the
    environment's zone without an offset (a datetime-local field without JavaScript)."""
    try:
        pause_schedule(env, request.form.get("until", ""), _reason())
    except (ValidationFailed, Conflict) as e:
        fields = e.fields if isinstance(e, ValidationFailed) else {}
        message = (fields.get("until") or fields.get("reason") or [e.detail])[0]
        return _environment_page(env, schedule_error=f"Not paused: {message}"), e.status
    return redirect(url_for("pages.environment", env=env) + "#schedule")


@bp.post("/environments/<env>/schedule/resume")
@page
def schedule_resume(env: str) -> Any:
    """The Resume button: the scheduler reconciles the environment within seconds."""
    try:
        resume_schedule(env)
    except Conflict as e:
        return _environment_page(env, schedule_error=e.detail), e.status
    return redirect(url_for("pages.environment", env=env) + "#schedule")


def init_app(app: Flask) -> None:
    from web import pages_access, pages_logs  # noqa: F401 - add their routes to bp before it is registered

    app.register_blueprint(bp)

    @app.context_processor
    def _globals() -> dict[str, Any]:
        return {"me": current_user if current_user.is_authenticated else None, **template_helpers()}


# ---- the audit trail (same queries, scoping and exports as /api/v1/audit) --------------
@bp.get("/audit")
@page
def audit_page() -> tuple[str, int]:
    """Filters, the newest matching entries, and CSV/JSON downloads that carry the filters."""
    ctx, status = audit_page_context()
    return render_template("audit.html", **ctx), status
