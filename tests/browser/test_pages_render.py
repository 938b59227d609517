"""Every main page renders in Chromium without console errors (CSP violations show up there), at a
phone's width (390 px) and a laptop's (1280 px).

With VALETKEY_SCREENSHOTS_DIR set, the pages are also saved as PNGs (docs/screenshots/ is made so):
NAME.png at 1280 px and NAME-phone.png at 390 px.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import job_row, sign_in, start_services
from tests.test_logs import put

WIDTHS = {"": {"width": 1280, "height": 800}, "-phone": {"width": 390, "height": 844}}


def shoot(page: Any, name: str, tmp_path: Path, full_page: bool = True) -> None:
    out = Path(os.environ.get("VALETKEY_SCREENSHOTS_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out / f"{name}.png"), full_page=full_page)


@pytest.mark.parametrize("suffix", list(WIDTHS), ids=["desktop", "phone"])
def test_main_pages_render_cleanly(live, browser, make_user, rt, realtime_sim, tmp_path, suffix):
    start_services(realtime_sim, ["search-api", "billing-worker", "notifications-api", "inventory-sync-worker"])
    t = int(time.time() * 1000) - 20_000
    put("app/app/task-a", (t, "GET /orders 200 12ms"), (t + 1, "ERROR payment gateway timeout after 30000ms"),
        (t + 2, "WARN retrying payment 7f3a (attempt 2)"), (t + 3, "GET /health 200 1ms"))
    running = job_row(rt, target="payments-api", actor="dana@acme.test", events=(
        ("queued", "service.restart of payments-api requested by dana@acme.test"),
        ("state", "Before: 2/2 running, task definition staging-payments-api:1, image sha:9c0d11e"),
        ("plan", "Replacing 2 task(s), 1 at a time (minimumHealthyPercent 50)"),
        ("progress", "batch 1 of 2: stopping task 5e1c…; waiting for its replacement"),
        ("progress", "replacement 8a2f… RUNNING and healthy")))
    waiting = job_row(rt, target="search-api", status="awaiting_approval", actor="sam@acme.test", events=(
        ("queued", "service.restart of search-api requested by sam@acme.test"),))
    with rt.sessions.begin() as s:  # as the job service writes a request that waits for approval
        from scope.models import Job
        row = s.get(Job, waiting)
        row.finished_at, row.reason = None, "search results stale after the index rebuild"
    make_user("adm@acme.test", ("*", "admin"))
    context = browser.new_context(viewport=WIDTHS[suffix], timezone_id="Europe/Berlin", locale="en-GB")
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    # HTTP answers are checked on the pages themselves.
    page.on("console", lambda m: errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    page.goto(f"{live}/login")
    shoot(page, "sign-in" + suffix, tmp_path)
    sign_in(page, live, "adm@acme.test")
    shoot(page, "environments" + suffix, tmp_path)
    page.get_by_role("link", name="staging").first.click()
    expect(page.locator("li[data-service]")).to_have_count(6)
    expect(page.locator("#live-status")).to_contain_text("live")
    shoot(page, "environment" + suffix, tmp_path)

    page.goto(f"{live}/jobs/{running}")
    expect(page.locator("#job-events li")).to_have_count(5)
    expect(page.locator("#job-elapsed")).not_to_have_text("—")
    shoot(page, "job-running" + suffix, tmp_path)

    page.goto(f"{live}/jobs/{waiting}")
    expect(page.get_by_role("button", name="Approve")).to_be_visible()
    shoot(page, "job-awaiting" + suffix, tmp_path)

    page.goto(f"{live}/environments/staging")
    page.get_by_role("button", name="Restart orders-api").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Reason").fill("orders stuck since the 18:30 deploy")
    expect(dialog.locator("#confirm-plan")).not_to_contain_text("Checking")
    shoot(page, "confirm" + suffix, tmp_path, full_page=False)  # a modal covers the screen, not the page
    dialog.get_by_role("button", name="Restart orders-api").click()
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=30_000)
    shoot(page, "job-finished" + suffix, tmp_path)

    page.goto(f"{live}/environments/staging/services/orders-api/logs")
    expect(page.locator("#log-lines li")).to_have_count(4)
    shoot(page, "logs" + suffix, tmp_path)
    page.goto(f"{live}/audit")
    expect(page.get_by_role("link", name="Download CSV")).to_be_visible()
    shoot(page, "audit" + suffix, tmp_path)
    page.goto(f"{live}/admin/")
    expect(page.get_by_role("heading", name="Grants", exact=True)).to_be_visible()
    shoot(page, "admin" + suffix, tmp_path)
    assert page.evaluate("document.scrollingElement.scrollWidth <= innerWidth")
    context.close()
    assert errors == []
