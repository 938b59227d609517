"""The logs page in a real Chromium: history, filter, and the follow toggle tailing new lines."""
from __future__ import annotations

import re
import time

from playwright.sync_api import expect

from tests.browser.conftest import sign_in
from tests.test_logs import put


def test_viewer_reads_filters_and_tails_logs(live, page, make_user):
    t = int(time.time() * 1000) - 20_000
    put("app/app/task-a", (t, "GET /orders 200"), (t + 1, "ERROR payment gateway timeout"), (t + 2, "GET /health 200"))
    make_user("vic@acme.test", ("staging", "viewer"))
    problems: list[str] = []
    # JavaScript errors and CSP refusals ("Refused to ..."); HTTP answers are checked on the page itself.
    page.on("console", lambda m: problems.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    sign_in(page, live, "vic@acme.test")
    page.get_by_role("link", name="staging").click()
    page.get_by_role("link", name="Logs of orders-api").click()

    lines = page.locator("#log-lines li .log-msg")
    expect(lines).to_have_text(["GET /orders 200", "ERROR payment gateway timeout", "GET /health 200"])
    expect(page.locator("#log-status")).to_contain_text("following")

    # Follow is on: a new line shows up without reloading, once.
    put("app/app/task-a", (int(time.time() * 1000), "POST /orders 201"))
    expect(lines.last).to_have_text("POST /orders 201", timeout=15_000)
    expect(page.locator("#log-lines li", has_text="POST /orders 201")).to_have_count(1)

    # ERROR lines stand out (a class, plus the word itself).
    expect(page.locator("#log-lines li.log-error .log-msg")).to_have_text(["ERROR payment gateway timeout"])

    page.get_by_label("Filter pattern").fill("ERROR")
    page.get_by_label("Time range").select_option("1h")
    page.get_by_role("button", name="Show").click()
    expect(lines).to_have_text(["ERROR payment gateway timeout"])
    # The view is shareable: its filter and range are in the address, and the address restores them.
    expect(page).to_have_url(re.compile(r"\?filter=ERROR&range=1h$"))
    shared = page.url
    other = page.context.new_page()
    other.goto(shared)
    expect(other.get_by_label("Filter pattern")).to_have_value("ERROR")
    expect(other.get_by_label("Time range")).to_have_value("1h")
    expect(other.locator("#log-lines li .log-msg")).to_have_text(["ERROR payment gateway timeout"])
    other.close()

    # A pattern CloudWatch cannot take is explained, not an error page.
    page.evaluate("document.getElementById('log-filter').value = 'x'.repeat(1025)")  # past maxlength
    page.get_by_role("button", name="Show").click()
    expect(page.locator("#log-status")).to_contain_text("filter")
    assert problems == []
