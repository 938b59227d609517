"""RFC 9457 problem responses: the one place errors become HTTP answers.

Domain errors carry their status and a detail that is safe to show; Flask's
own errors (404, 405, ...) get the same shape; an outage of our database or
Redis (or a target that cannot be reached for now) is a 503 with Retry-After;
anything unexpected is logged with its traceback server-side and answered
with a generic 500.
"""
from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from markupsafe import escape
from werkzeug.exceptions import HTTPException

from cloud.errors import OUTAGE_RETRY_AFTER, outage
from scope.errors import ValetKeyError, ValidationFailed

log = logging.getLogger("valetkey.web")
PROBLEM = "application/problem+json"
from web.context import request_id


def wants_html() -> bool:
    """Browsers navigating to a page get an HTML error page; everything else problem+json."""
    if request.path.startswith(("/api/", "/hooks/", "/healthz", "/readyz")):
        return False
    best = request.accept_mimetypes.best_match(["application/json", PROBLEM, "text/html"])
    return best == "text/html"


def problem(status: int, title: str, detail: str, **extra: Any) -> Response:
    body: dict[str, Any] = {"type": "about:blank", "status": status, "title": title, "detail": detail}
    rid = request_id() or None
    if rid:
        body["request_id"] = rid
    body.update({k: v for k, v in extra.items() if v is not None})
    if wants_html():
        resp = Response(_error_page(body), status=status, mimetype="text/html")
    else:
        resp = jsonify(body)
        resp.status_code = status
        resp.mimetype = PROBLEM
    return resp


def _error_page(body: dict[str, Any]) -> str:
    try:
        return render_template("error.html", problem=body)
    except Exception:  # noqa: BLE001 - the page frame needs what is down (who is signed in)
        pass
    try:  # the same page as a signed-out visitor sees it: flask-login's cached user, set to anonymous
        g._login_user = current_app.login_manager.anonymous_user()  # type: ignore[attr-defined]
        return render_template("error.html", problem=body)
    except Exception:  # noqa: BLE001 - and if even that fails, a bare page
        title, detail = escape(f"{body['status']} · {body['title']}"), escape(body["detail"])
        return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title></head>"
                f"<body><main><h1>{title}</h1><p>{detail}</p><p><a href=\"/\">Back to your environments</a>"
                "</p></main></body></html>")


def _validation_fields(e: HTTPException) -> dict[str, Any] | None:
    data = getattr(e, "data", None) or {}
    messages = data.get("messages") or data.get("errors")
    if not messages:
        return None
    # webargs nests by location ({"json": {"field": [...]}}); callers care about fields.
    fields: dict[str, Any] = {}
    for loc, errs in messages.items():
        if isinstance(errs, dict) and loc in ("json", "query", "form", "querystring", "headers", "files"):
            fields.update(errs)
        else:
            fields[loc] = errs
    return fields


def init_app(app: Flask) -> None:
    @app.errorhandler(ValetKeyError)
    def domain_error(e: ValetKeyError) -> Response:
        extra = dict(e.extra)
        if isinstance(e, ValidationFailed):
            extra["errors"] = extra.pop("fields", e.fields)
        elif "fields" in extra:
            extra["errors"] = extra.pop("fields")
        extra.pop("code", None)
        status, title = e.status, e.title
        if status == 503:  # every 503 says when to come back
            extra.setdefault("retry_after", OUTAGE_RETRY_AFTER)
        resp = problem(status, title, e.detail, **extra)
        if e.status == 401:
            resp.headers["WWW-Authenticate"] = 'Bearer realm="valetkey"'
        if extra.get("retry_after") is not None:  # e.g. AWS throttling: tell clients when to come back
            resp.headers["Retry-After"] = str(int(extra["retry_after"]))
        return resp

    @app.errorhandler(CSRFError)
    def csrf_error(e: CSRFError) -> Response:
        return problem(400, "Bad Request", "The form expired or was not sent from Valet Key; reload the page and try again.")

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> Response:
        status = e.code or 500
        fields = _validation_fields(e)
        if fields:
            names = ", ".join(sorted(fields))
            return problem(400, "Validation failed", f"Invalid field(s): {names}", errors=fields)
        detail = (e.description or e.name) if status < 500 else "The server could not complete the request."
        resp = problem(status, e.name, detail)
        if status == 405 and e.get_response().headers.get("Allow"):
            resp.headers["Allow"] = e.get_response().headers["Allow"]
        return resp

    @app.errorhandler(Exception)
    def unexpected(e: Exception) -> Response:
        down = outage(e)
        if down is not None:  # an outage, not a bug: say so, and when to come back (no traceback to anyone)
            log.warning("%s unreachable on %s %s (request %s): %s", down, request.method, request.path,
                        request_id() or "-", type(e).__name__)
            resp = problem(503, "Service Unavailable", f"Valet Key's {down} cannot be reached right now; "
                           f"try again in {OUTAGE_RETRY_AFTER} seconds.", retry_after=OUTAGE_RETRY_AFTER)
            resp.headers["Retry-After"] = str(OUTAGE_RETRY_AFTER)
            return resp
        log.exception("unhandled error on %s %s (request %s)", request.method, request.path,
                      request_id() or "-")
        return problem(500, "Internal Server Error",
                       "Something went wrong on our side; it has been logged. Please try again.")
