"""Issue 17, black-box in Chromium against the real worker and the real-time ECS simulator: a
one-off task's own output on its page, a required reason, a job that waits for approval."""
from __future__ import annotations

import re
import time
from typing import Any

import boto3
from playwright.sync_api import expect

from tests.browser.conftest import sign_in, with_staging
from tests.conftest import REGION


def _jobs(rt: Any) -> list[Any]:
    from scope.models import Job

    with rt.sessions() as s:
        return list(s.query(Job).order_by(Job.created_at))


def _one_off_family(family: str = "staging-migrate") -> None:
    """A one-off task definition that logs to awslogs, as a migration task would."""
    boto3.client("ecs", region_name=REGION).register_task_definition(
        family=family, networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
        containerDefinitions=[{"name": "app", "essential": True, "image": "busybox", "memory": 512,
                               "logConfiguration": {"logDriver": "awslogs", "options": {
                                   "awslogs-group": f"/ecs/{family}", "awslogs-region": REGION,
                                   "awslogs-stream-prefix": "run"}}}])
    boto3.client("logs", region_name=REGION).create_log_group(logGroupName=f"/ecs/{family}")


def _print_while_running(sim: Any, family: str, lines: list[str], timeout: float = 30) -> None:
    """Write ``lines`` to the log stream of the one-off task once it runs (what its container would print)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [t for t in sim.tasks("stg") if t.service is None and t.started_at is not None]
        if running:
            logs = boto3.client("logs", region_name=REGION)
            stream = f"run/app/{running[0].id}"
            logs.create_log_stream(logGroupName=f"/ecs/{family}", logStreamName=stream)
            now = int(time.time() * 1000)
            logs.put_log_events(logGroupName=f"/ecs/{family}", logStreamName=stream,
                                logEvents=[{"timestamp": now + i, "message": m} for i, m in enumerate(lines)])
            return
        time.sleep(0.1)
    raise AssertionError("the one-off task never started")


def test_a_one_off_tasks_own_output_appears_on_its_page(live, page, make_user, rt, realtime_sim):
    _one_off_family()
    realtime_sim.set_one_off("staging-migrate", duration=6, exit_code=1)
    make_user("dev@acme.test", ("staging", "developer"))
    sign_in(page, live, "dev@acme.test")
    page.goto(f"{live}/environments/staging#tasks")
    page.get_by_role("button", name="Run", exact=True).click()
    dialog = page.get_by_role("dialog", name="Run a one-off task in staging?")
    dialog.get_by_role("button", name="Run the task").click()
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f]{32}$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("One-off task of staging-migrate in staging")
    _print_while_running(realtime_sim, "staging-migrate", ["Applying migration 0042_orders_index",
                                                           'ERROR: relation "orders" does not exist'])
    expect(page.locator("#job-status")).to_have_text("failed", timeout=30_000)
    expect(page.locator("#job-outcome")).to_have_text(re.compile(r"^Failed: exit 1 after \d+s"))
    block = page.locator("#job-events pre.output")
    expect(block).to_have_text('Applying migration 0042_orders_index\nERROR: relation "orders" does not exist')
    diagnosis = page.get_by_role("region", name="Why it failed")
    expect(diagnosis.locator("pre.output")).to_contain_text('relation "orders" does not exist')
    expect(page.get_by_role("button", name="Run staging-migrate again")).to_be_visible()


def test_a_required_reason_cannot_be_left_empty(live, page, make_user, rt, config_file):
    with_staging(rt, config_file, "require_reason = true")
    make_user("dev@acme.test", ("staging", "developer"))
    sign_in(page, live, "dev@acme.test")
    page.goto(f"{live}/environments/staging")
    page.get_by_role("button", name="Restart orders-api").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.locator("#confirm-reason-need")).to_have_text(re.compile("required in this environment"))
    dialog.get_by_role("button", name="Restart orders-api").click()
    expect(dialog).to_be_visible()  # the browser refuses the empty required field; nothing was posted
    assert page.evaluate("document.activeElement.id") == "confirm-reason"
    assert _jobs(rt) == []
    dialog.get_by_label("Reason").fill("INC-4711 orders stuck")
    dialog.get_by_role("button", name="Restart orders-api").click()
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f]{32}$"))
    expect(page.locator("#job-reason")).to_have_text("INC-4711 orders stuck")
    assert [j.reason for j in _jobs(rt)] == ["INC-4711 orders stuck"]


def test_a_job_awaiting_approval_goes_on_live_once_approved(live, browser, page, make_user, rt, config_file):
    with_staging(rt, config_file, 'approval = "two-person"')
    make_user("dev@acme.test", ("staging", "developer"))
    make_user("op@acme.test", ("staging", "operator"))
    sign_in(page, live, "dev@acme.test")
    page.goto(f"{live}/environments/staging")
    page.get_by_role("button", name="Restart orders-api").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.locator("#confirm-explain")).to_contain_text("waits for a second person's approval")
    dialog.get_by_label("Reason").fill("stuck consumers")
    dialog.get_by_role("button", name="Restart orders-api").click()
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f]{32}$"))
    job_url = page.url
    expect(page.locator("#job-outcome")).to_have_text("Waiting for a second person's approval: nothing has run yet.")
    expect(page.locator("#job-status")).to_have_text("awaiting approval")
    expect(page.get_by_role("button", name="Approve")).to_have_count(0)  # not for the requester
    expect(page.locator("#job-elapsed")).to_contain_text("waiting for approval")

    op = browser.new_context().new_page()
    sign_in(op, live, "op@acme.test")
    op.goto(f"{live}/environments/staging")
    card = op.locator("li[data-service='orders-api']")
    expect(card.get_by_role("link", name="Restart awaiting approval — view")).to_be_visible()
    card.get_by_role("link", name="Restart awaiting approval — view").click()
    op.get_by_role("button", name="Approve").click()
    op.wait_for_url(job_url)
    op.context.close()

    # The requester's page follows without a reload: approved, run, verified.
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=45_000)
    expect(page.locator("#job-events .step-approved")).to_have_count(1)
    expect(page.locator("#job-approval")).to_be_hidden()
    expect(page.locator("#job-outcome")).to_contain_text(re.compile(r"^Done: "))
