"""What people do in the browser, in a real Chromium."""
from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.browser.conftest import sign_in, with_schedule


def test_developer_restarts_a_service_and_watches_it_succeed(live, page, make_user):
    make_user("dev@acme.test", ("staging", "developer"))
    sign_in(page, live, "dev@acme.test")
    page.get_by_role("link", name="staging").click()
    card = page.locator("li[data-service='orders-api']")
    expect(card.get_by_text("Healthy")).to_be_visible()
    card.get_by_role("button", name=re.compile("^Restart")).click()
    page.get_by_role("dialog").get_by_role("button", name="Restart orders-api").click()
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=30_000)
    expect(page.locator("#job-detail")).to_contain_text("HEALTHY after")
    expect(page.locator("#job-events li").first).to_be_visible()


def test_viewer_sees_no_action_buttons_and_a_forged_post_is_refused(live, page, make_user, rt):
    make_user("vic@acme.test", ("staging", "viewer"))
    sign_in(page, live, "vic@acme.test")
    page.get_by_role("link", name="staging").click()
    expect(page.locator("li[data-service='orders-api']")).to_be_visible()
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


def test_operator_pauses_and_resumes_the_schedule(live, page, make_user, rt, config_file):
    with_schedule(rt, config_file)
    make_user("olga@acme.test", ("staging", "operator"))
    sign_in(page, live, "olga@acme.test")
    page.get_by_role("link", name="staging").click()
    expect(page.get_by_role("heading", name="Schedule")).to_be_visible()
    page.get_by_role("button", name="Pause schedule").click()
    page.get_by_role("dialog").get_by_role("button", name="Pause schedule").click()
    expect(page.get_by_role("status").filter(has_text="Paused by olga@acme.test")).to_be_visible()
    page.get_by_role("button", name="Resume schedule now").click()
    page.get_by_role("dialog").get_by_role("button", name="Resume schedule").click()
    expect(page.get_by_role("button", name="Pause schedule")).to_be_visible()


def test_auditor_filters_and_downloads_csv(live, browser, page, make_user, rt, tmp_path):
    make_user("audrey@acme.test", ("*", "auditor"))
    make_user("vic@acme.test", ("staging", "viewer"))
    vic = browser.new_context().new_page()
    sign_in(vic, live, "vic@acme.test")  # a login: an audit entry of its own
    vic.context.close()
    sign_in(page, live, "audrey@acme.test")
    page.goto(f"{live}/audit")
    page.get_by_label("Action").select_option("login")
    page.get_by_label("Actor").fill("vic@acme.test")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("cell", name="vic@acme.test").first).to_be_visible(timeout=20_000)
    with page.expect_download() as info:
        page.get_by_role("link", name="Download CSV").click()
    path = tmp_path / info.value.suggested_filename
    info.value.save_as(path)
    import csv

    rows = list(csv.reader(path.read_text().splitlines()))
    # The ten fixed columns, then reason and the hash chain (later columns only ever append).
    assert rows[0][:13] == ["id", "time", "actor", "source", "environment", "action", "target", "outcome",
                            "detail", "job_id", "reason", "prev_hash", "hash"]
    assert len(rows) >= 2 and all(r[2:6] == ["vic@acme.test", "web", "", "login"] for r in rows[1:])
    assert "actor-vic" in info.value.suggested_filename
