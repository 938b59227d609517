"""Pages for two-person approval and access requests (the same services as /api/v1)."""
from __future__ import annotations

from typing import Any
from urllib.parse import quote

from flask import redirect, render_template, request, url_for
from werkzeug.wrappers import Response as WResponse  # what redirect() returns; flask's Response is one

from scope.errors import ValetKeyError
from web.page_base import bp, page
from web.services.access import decide_request, list_requests, request_access
from web.services.approvals import SignInAgain, approve_job, reject_job


def _sign_in_again(next_path: str) -> WResponse:
    """Through the IdP again (ForceAuthn), back to the page the person decided on."""
    return redirect(f"/saml/login?force=1&next={quote(next_path)}")


@bp.post("/jobs/<job_id>/<decision>")
@page
def job_decision(job_id: str, decision: str) -> WResponse:
    """The Approve / Reject buttons of a job awaiting approval."""
    decide = {"approve": approve_job, "reject": reject_job}.get(decision)
    if decide is None:
        return redirect(url_for("pages.job", job_id=job_id))
    back = url_for("pages.job", job_id=job_id)
    try:
        decide(job_id, request.form.get("reason"))
    except SignInAgain:
        return _sign_in_again(back)
    return redirect(back)


@bp.get("/access-requests")
@page
def access_requests() -> str:
    """Ask for a time-boxed role; see your requests and those you may decide."""
    return _requests_page()


def _requests_page(error: str | None = None, status: int = 200, **form: Any) -> Any:
    # No list of environments to pick from: that would show every name to anyone signed in.
    body = render_template("access_requests.html", requests=list_requests(), error=error, form=form)
    return (body, status) if status != 200 else body


@bp.post("/access-requests")
@page
def access_request_post() -> Any:
    """File an access request from the form."""
    f = request.form
    try:
        request_access(f.get("environment", ""), f.get("role", ""), f.get("duration", ""), f.get("reason", ""))
    except ValetKeyError as e:
        fields = e.extra.get("fields") or {}
        message = "; ".join(f"{k}: {' '.join(map(str, v))}" for k, v in fields.items()) or e.detail
        return _requests_page(message, e.status, **f.to_dict())
    return redirect(url_for("pages.access_requests"))


@bp.post("/access-requests/<int:request_no>/<decision>")
@page
def access_request_decision(request_no: int, decision: str) -> WResponse:
    """Approve or reject an access request."""
    if decision not in ("approve", "reject"):
        return redirect(url_for("pages.access_requests"))
    try:
        decide_request(request_no, decision == "approve", request.form.get("reason"))
    except SignInAgain:
        return _sign_in_again(url_for("pages.index"))
    back = "pages.index" if request.form.get("back") == "index" else "pages.access_requests"
    return redirect(url_for(back))
