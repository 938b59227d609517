"""The logs page of a service: the shell that web/static/logs.js fills by polling the logs API."""
from __future__ import annotations

from flask import render_template, url_for

from cloud.logs import DEFAULT_SINCE, MAX_FILTER, LogsNotReadable
from scope.errors import NotFound, UpstreamError
from scope.roles import Permission
from web.guard import allow, audit_denied
from web.page_base import bp, page
from web.services.logs import ACTION, service_logs


@bp.get("/environments/<env>/services/<svc>/logs")
@page
def service_logs_page(env: str, svc: str) -> str:
    """A service's logs: history by time range and filter pattern, and a live tail."""
    environment, _ = allow(env, Permission.LOGS, action=ACTION, target=svc)
    source, unreadable, error = None, None, None
    try:
        source = service_logs(environment).source(svc)
    except NotFound as e:
        audit_denied(ACTION, env, svc, e.detail)
        raise
    except LogsNotReadable as e:
        unreadable = e.detail  # a clear message on the page, not an error page
    except UpstreamError as e:
        error = e.detail  # the viewer still loads; the API answers once AWS does
    return render_template("logs.html", env=environment.name, svc=svc, source=source, unreadable=unreadable,
                           error=error, api_url=url_for("logs.get_logs", env=environment.name, svc=svc),
                           default_since=DEFAULT_SINCE, max_filter=MAX_FILTER)
