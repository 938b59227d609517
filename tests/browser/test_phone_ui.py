"""Issue 17: the pages at 390 px and 1280 px, live, with a confirmation before acting (real Chromium)."""
from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import job_row, sign_in, start_services, with_schedule
from tests.conftest import boto

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
MORE = ["search-api", "billing-worker", "notifications-api", "inventory-sync-worker"]
SIZES = pytest.mark.parametrize("size", [PHONE, DESKTOP], ids=["phone", "desktop"])


def _no_js_errors(page: Any) -> list[str]:
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    return problems


def _jobs(rt: Any) -> list[Any]:
    from scope.models import Job

    with rt.sessions() as s:
        return list(s.query(Job).order_by(Job.created_at))


@SIZES
def test_first_screen_shows_every_service_with_health_and_restart(live, page, make_user, rt, realtime_sim, size):
    start_services(realtime_sim, MORE)
    make_user("dev@acme.test", ("staging", "developer"))
    job_row(rt, target=MORE[-1])  # a card with its running job's link is taller: still on the first screen
    page.set_viewport_size(size)
    problems = _no_js_errors(page)
    sign_in(page, live, "dev@acme.test")
    page.goto(f"{live}/environments/staging")
    cards = page.locator("li[data-service]")
    expect(cards).to_have_count(6)
    for name in ["orders-api", "payments-api", *MORE]:
        card = page.locator(f"li[data-service='{name}']")
        for part in (card.locator(".svc-name"), card.locator("[data-field=status]"),
                     card.get_by_role("button", name=f"Restart {name}")):
            box = part.bounding_box()
            assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= size["height"], (name, box)
        expect(card.locator("[data-field=status]")).to_have_text("Healthy")  # health in words, not only colour
        expect(card.locator(".svc-count")).to_have_text(re.compile(r"Running 2 of 2"))
    # The image is shortened; the full value is one click away.
    orders = page.locator("li[data-service='orders-api']")
    expect(orders.locator("[data-field=image-short]")).to_have_text("staging-orders-api:latest")
    expect(orders.locator("[data-field=image]")).to_be_hidden()
    orders.locator(".svc-image summary").click()
    expect(orders.locator("[data-field=image]")).to_contain_text(".dkr.ecr.us-east-1.amazonaws.com/staging-orders-api:latest")
    assert page.evaluate("document.scrollingElement.scrollWidth <= innerWidth")
    assert problems == []


def test_environment_page_follows_a_running_job_without_reload(live, page, make_user, rt):
    make_user("dev@acme.test", ("staging", "developer"))
    job_id = job_row(rt, events=(("state", "Before: 2/2 running"),))
    sign_in(page, live, "dev@acme.test")
    page.goto(f"{live}/environments/staging")
    card = page.locator("li[data-service='orders-api']")
    expect(card.get_by_role("link", name="Restart running — view")).to_have_attribute("href", f"/jobs/{job_id}")
    page.evaluate("window.__marker = 1")  # gone if the page reloads
    # ECS changes under the page: someone scales the service up in the console.
    boto("ecs").update_service(cluster="stg", service="orders-api", desiredCount=3)
    expect(card.locator("[data-field=desired]")).to_have_text("3", timeout=15_000)
    expect(page.locator("#live-status")).to_contain_text("live, updated")
    # The job ends: its link leaves the card, still without a reload.
    from scope.models import Job

    with rt.sessions.begin() as s:
        s.get(Job, job_id).status, s.get(Job, job_id).active_key = "succeeded", None
    expect(card.get_by_role("link", name=re.compile("Restart"))).to_have_count(0, timeout=15_000)
    assert page.evaluate("window.__marker") == 1


def test_restart_asks_first_then_the_job_page_shows_the_timeline_and_outcome(live, page, make_user, rt):
    make_user("dev@acme.test", ("staging", "developer"))
    problems = _no_js_errors(page)
    sign_in(page, live, "dev@acme.test")
    page.goto(f"{live}/environments/staging")
    page.get_by_role("button", name="Restart orders-api").click()
    dialog = page.get_by_role("dialog", name="Restart orders-api in staging?")
    expect(dialog).to_be_visible()
    # The plan comes from the API's dry run, which itself starts nothing.
    expect(dialog.locator("#confirm-plan .plan-mechanism")).to_have_text(
        re.compile(r"^(A new ECS deployment|Tasks replaced)"))
    expect(dialog.locator("#confirm-plan .plan-steps li").first).to_be_visible()
    expect(dialog.get_by_role("button", name="Restart orders-api")).to_be_enabled()
    assert _jobs(rt) == []
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    assert _jobs(rt) == []
    page.get_by_role("button", name="Restart orders-api").click()
    dialog.get_by_label("Reason").fill("orders stuck after deploy")
    dialog.get_by_role("button", name="Restart orders-api").click()
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f]{32}$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Restart of orders-api in staging")
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=30_000)
    expect(page.locator("#job-outcome")).to_contain_text(re.compile(r"^Done: HEALTHY after"))
    expect(page.locator("#job-events .step-queued .step-type")).to_have_text("Requested")
    expect(page.locator("#job-events .step-succeeded")).to_have_count(1)
    expect(page.locator("#job-elapsed")).to_contain_text("took")
    expect(page.get_by_role("link", name="Logs of orders-api")).to_be_visible()
    expect(page.get_by_role("link", name="Back to staging")).to_be_visible()
    expect(page.locator("#job-next")).to_be_hidden()  # nothing to repair after a success
    [job] = _jobs(rt)
    assert job.reason == "orders stuck after deploy"
    assert problems == []


def test_a_failed_one_off_task_shows_its_output_diagnosis_and_next_action(live, page, make_user, rt):
    make_user("dev@acme.test", ("staging", "developer"))
    job_id = job_row(rt, action="task.run", target="staging-migrate", status="failed",
                     detail="exit 1 after 12s: Essential container in task exited", events=(
                         ("started", "Started task 4f2a of staging-migrate:3"),
                         ("state", "Task 4f2a: STOPPED (exit code 1: Essential container in task exited)"),
                         ("output", "Last 2 line(s) of app's output:\nApplying migration 0042_orders_index\n"
                                    "ERROR: relation \"orders\" does not exist"),
                         ("failed", "exit 1 after 12s: Essential container in task exited")))
    sign_in(page, live, "dev@acme.test")
    page.goto(f"{live}/jobs/{job_id}")
    expect(page.get_by_role("heading", level=1)).to_have_text("One-off task of staging-migrate in staging")
    block = page.locator("#job-events pre.output")
    expect(block).to_have_count(1)  # a container's lines are one monospace block, under their heading
    expect(page.locator("#job-events .step-output .step-msg")).to_have_text("Last 2 line(s) of app's output:")
    expect(block).to_have_text('Applying migration 0042_orders_index\nERROR: relation "orders" does not exist')
    diagnosis = page.get_by_role("region", name="Why it failed")
    expect(diagnosis).to_contain_text("exit 1 after 12s")
    expect(diagnosis.locator("#diagnosis-facts")).to_contain_text("STOPPED (exit code 1")
    expect(diagnosis.locator("pre.output")).to_contain_text("does not exist")
    expect(page.get_by_role("button", name="Run staging-migrate again")).to_be_visible()
    expect(page.locator("#job-outcome")).to_have_text(re.compile(r"^Failed: exit 1 after 12s"))


def test_a_failed_restart_offers_redeploy_only_to_whom_may(live, browser, page, make_user, rt):
    make_user("dev@acme.test", ("staging", "developer"))
    make_user("vic@acme.test", ("staging", "viewer"))
    job_id = job_row(rt, status="failed", detail="Replacements keep stopping: CannotPullContainerError",
                     events=(("failed", "Replacements keep stopping: CannotPullContainerError"),))
    sign_in(page, live, "dev@acme.test")
    page.goto(f"{live}/jobs/{job_id}")
    expect(page.get_by_role("button", name="Redeploy orders-api")).to_be_visible()
    viewer = browser.new_context().new_page()
    sign_in(viewer, live, "vic@acme.test")
    viewer.goto(f"{live}/jobs/{job_id}")
    expect(viewer.get_by_role("region", name="Why it failed")).to_contain_text("CannotPullContainerError")
    expect(viewer.get_by_role("button", name=re.compile("Redeploy|Restart"))).to_have_count(0)
    viewer.context.close()


def test_a_second_click_shows_the_running_job_instead_of_an_error(live, page, make_user, rt):
    make_user("dev@acme.test", ("staging", "developer"))
    running = job_row(rt, actor="alice@acme.test")
    sign_in(page, live, "dev@acme.test")
    page.goto(f"{live}/environments/staging")
    page.get_by_role("button", name="Restart orders-api").click()
    page.get_by_role("dialog").get_by_role("button", name="Restart orders-api").click()
    page.wait_for_url(f"{live}/jobs/{running}")
    expect(page.get_by_role("status").filter(has_text="Nothing new was started")).to_contain_text(
        "Restart of orders-api in staging is already running (requested by alice@acme.test)")
    expect(page.locator("#job-status")).to_have_text("running")
    assert [j.id for j in _jobs(rt)] == [running]


def test_a_double_click_on_confirm_posts_once(live, page, make_user, rt):
    make_user("dev@acme.test", ("staging", "developer"))
    sign_in(page, live, "dev@acme.test")
    page.goto(f"{live}/environments/staging")
    page.get_by_role("button", name="Redeploy payments-api").click()
    page.get_by_role("dialog").get_by_role("button", name="Redeploy payments-api").dblclick()
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f]{32}$"))
    assert len(_jobs(rt)) == 1


def test_keyboard_only_restart(live, page, make_user, rt):
    make_user("dev@acme.test", ("staging", "developer"))
    sign_in(page, live, "dev@acme.test")
    page.goto(f"{live}/environments/staging")
    for _ in range(60):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.getAttribute('aria-label')") == "Restart payments-api":
            break
    else:
        pytest.fail("Tab never reached the Restart button of payments-api")
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog")).to_be_visible()
    assert page.evaluate("document.activeElement.id") == "confirm-reason"  # the dialog took the focus
    page.keyboard.type("keyboard only")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "confirm-ok"
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f]{32}$"))
    assert [(j.action, j.target) for j in _jobs(rt)] == [("service.restart", "payments-api")]


def test_escape_cancels_the_dialog_and_returns_focus(live, page, make_user, rt):
    make_user("dev@acme.test", ("staging", "developer"))
    sign_in(page, live, "dev@acme.test")
    page.goto(f"{live}/environments/staging")
    page.get_by_role("button", name="Restart orders-api").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_be_hidden()
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Restart orders-api"
    assert _jobs(rt) == []


def _wait_for_audit_rows(rt: Any, action: str, n: int) -> None:
    """The exporter writes audit rows a moment after the event; wait for them."""
    import time

    from scope.models import AuditEntry

    for _ in range(100):
        with rt.sessions() as s:
            if s.query(AuditEntry).filter(AuditEntry.action == action).count() >= n:
                return
        time.sleep(0.2)
    pytest.fail(f"the exporter did not write {n} {action} rows")


@SIZES
def test_audit_page_fits_without_horizontal_scroll(live, page, make_user, rt, size):
    from jobs.audit_stream import AuditEvent

    make_user("audrey@acme.test", ("*", "auditor"))
    long = "Replacements keep stopping: CannotPullContainerError: pull image manifest has been retried 5 time(s): " \
           "failed to resolve ref 123456789012.dkr.ecr.us-east-1.amazonaws.com/staging-orders-api@sha256:" + "a" * 64
    for i in range(3):
        rt.audit.record(AuditEvent(actor="someone.with.a.long.address@subsidiary.acme-corporation.test", source="web",
                                   action="service.restart", outcome="failed", environment="staging",
                                   target=f"inventory-synchronisation-worker-{i}", detail=long, job_id="f" * 32))
    _wait_for_audit_rows(rt, "service.restart", 3)
    page.set_viewport_size(size)
    sign_in(page, live, "audrey@acme.test")
    page.goto(f"{live}/audit?action=service.restart")
    expect(page.locator("table.audit tbody tr")).to_have_count(3, timeout=20_000)
    assert page.evaluate("document.scrollingElement.scrollWidth <= innerWidth"), \
        page.evaluate("[document.scrollingElement.scrollWidth, innerWidth]")
    detail = page.locator("table.audit tbody tr").first.locator("td.detail")
    box = detail.bounding_box()
    assert box is not None and box["x"] + box["width"] <= size["width"]  # Detail is not cut off
    expect(page.locator("table.audit time").first).to_have_attribute("title", re.compile(r"UTC$"))


def test_pause_until_is_chosen_in_the_viewers_zone_and_sent_as_utc(live, browser, make_user, rt, config_file):
    import datetime as dt
    from zoneinfo import ZoneInfo

    from scope.models import SchedulePause

    with_schedule(rt, config_file)
    make_user("olga@acme.test", ("staging", "operator"))
    context = browser.new_context(timezone_id="America/New_York", viewport=PHONE)
    page = context.new_page()
    sign_in(page, live, "olga@acme.test")
    page.goto(f"{live}/environments/staging#schedule")
    zone = ZoneInfo("America/New_York")
    local = (dt.datetime.now(zone) + dt.timedelta(days=2)).replace(hour=18, minute=0, second=0, microsecond=0)
    utc = local.astimezone(dt.timezone.utc)
    field = page.get_by_label(re.compile(r"Pause until \(your time, E[SD]T"))
    field.fill(local.strftime("%Y-%m-%dT%H:%M"))
    expect(page.locator("#schedule-until-utc")).to_have_text(f"= {utc:%Y-%m-%d %H:%M:%S} UTC")
    page.get_by_role("button", name="Pause schedule").click()
    page.get_by_role("dialog").get_by_role("button", name="Pause schedule").click()
    expect(page.get_by_role("status").filter(has_text="Paused by olga@acme.test")).to_be_visible()
    with rt.sessions() as s:
        assert s.get(SchedulePause, "staging").until.replace(tzinfo=dt.timezone.utc) == utc
    # Shown back in the viewer's zone, with its abbreviation, UTC in the title.
    shown = page.locator("#section-schedule time:not([data-relative])").first
    expect(shown).to_have_attribute("title", f"{utc:%Y-%m-%d %H:%M:%S} UTC")
    expect(shown).to_contain_text(re.compile(r"E[SD]T"))
    # When it was paused stays relative ("just now"), with the exact time in both zones on hover.
    age = page.locator("#section-schedule time.pause-age")
    expect(age).to_have_text("just now")
    expect(age).to_have_attribute("title", re.compile(r"E[SD]T \(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)$"))
    context.close()
