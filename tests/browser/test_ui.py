"""What people do in the browser, in a real Chromium."""
from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.browser.conftest import sign_in


def test_developer_restarts_a_service_and_watches_it_succeed(live, page, make_user):
    make_user("dev@acme.test", ("staging", "developer"))
    sign_in(page, live, "dev@acme.test")
    page.get_by_role("link", name="staging").click()
    row = page.get_by_role("row").filter(has_text="orders-api")
    expect(row.get_by_text("HEALTHY")).to_be_visible()
    row.get_by_role("button", name=re.compile("^Restart")).click()
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=30_000)
    expect(page.locator("#job-detail")).to_contain_text("HEALTHY after")
    expect(page.locator("#job-events li").first).to_be_visible()


def test_viewer_sees_no_action_buttons_and_a_forged_post_is_refused(live, page, make_user, rt):
    make_user("vic@acme.test", ("staging", "viewer"))
    sign_in(page, live, "vic@acme.test")
    page.get_by_role("link", name="staging").click()
    expect(page.get_by_role("row").filter(has_text="orders-api")).to_be_visible()
    for name in ("Restart", "Redeploy", "Flush"):
        expect(page.get_by_role("button", name=re.compile(name))).to_have_count(0)
    # A forged form post with the viewer's own session and a valid CSRF token: the server refuses.
    token = page.evaluate("document.querySelector('input[name=csrf_token]').value")
    status = page.evaluate("""async (token) => {
        const body = new URLSearchParams({csrf_token: token});
        const r = await fetch('/environments/staging/services/orders-api/restart', {method: 'POST', body});
        return r.status; }""", token)
    assert status == 403
    with rt.sessions() as s:
        from scope.models import Job
        assert s.query(Job).count() == 0
