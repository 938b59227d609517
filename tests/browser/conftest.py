"""Browser tests: the real app on a live port, a real worker thread, Debian's Chromium via Playwright."""
from __future__ import annotations

import os
import shutil
import threading
from typing import Any, Iterator

import boto3
import pytest
from playwright.sync_api import expect
from werkzeug.serving import make_server

from tests.conftest import PASSWORD, REGION, free_port, seed_cluster

CHROMIUM = os.environ.get("VALETKEY_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")


@pytest.fixture(params=["sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """Browser tests exercise the pages, not the database: SQLite only."""
    from scope.db import make_engine
    from scope.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'valetkey.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


@pytest.fixture
def environ(environ):
    # Real time against the simulator: a restart takes seconds, not the unit tests' instant.
    return {**environ, "VALETKEY_POLL_INTERVAL": "0.5", "VALETKEY_STABILITY_TIMEOUT": "60"}


@pytest.fixture
def live(app, rt, realtime_sim) -> Iterator[str]:
    """The app on a free port plus an in-process worker, with staging in the ECS simulator (real time)."""
    from dramatiq import Worker

    from workers.actors import declare
    from workers.runner import JobRunner

    start_services(realtime_sim, ["orders-api", "payments-api"])
    runner = JobRunner(rt)
    declare(rt.broker, runner, max_age_ms=600_000)
    worker = Worker(rt.broker, worker_threads=2, worker_timeout=100)
    worker.start()
    from audit.exporter import Exporter
    from jobs.suspended import run_ticker

    stop = threading.Event()
    run_ticker(runner.suspended, rt.broker, stop)  # as valetkey worker does: sends the steps of suspended jobs
    exporter = threading.Thread(target=Exporter(rt.redis, rt.sessions, block_ms=200).run, args=(stop,), daemon=True)
    exporter.start()
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    stop.set()
    worker.stop(timeout=5_000)
    exporter.join(10)


def start_services(sim: Any, services: list[str]) -> None:
    """Services of staging in the real-time simulator, started by its service scheduler, returned
    once steady: what the environment page will show as HEALTHY (counts lag on ECS)."""
    for svc in services:  # the images the task definitions name, in the simulator's ECR
        sim.push_image(f"staging-{svc}", "latest")
    seed_cluster("stg", services, family_prefix="staging", running=0)
    ecs = boto3.client("ecs", region_name=REGION)

    def steady() -> bool:
        found = ecs.describe_services(cluster="stg", services=services)["services"]
        return all(s["runningCount"] == s["desiredCount"] == 2 and len(s["deployments"]) == 1
                   and s["deployments"][0].get("rolloutState") == "COMPLETED" for s in found)
    wait_until(steady)


def wait_until(predicate: Any, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("the simulated services did not start in time")
        time.sleep(0.2)


@pytest.fixture
def page(browser) -> Iterator[Any]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 800})
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    # Assertions wait as long as actions do: on a loaded CI machine a live page can take more than
    # playwright's default 5 s to show what the server already did (it still fails if it never does).
    expect.set_options(timeout=15_000)
    yield pg
    context.close()


def sign_in(page: Any, base: str, email: str, password: str = PASSWORD) -> None:
    page.goto(f"{base}/login")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/login" not in url)


def job_row(rt: Any, *, action: str = "service.restart", target: str = "orders-api", status: str = "running",
            detail: str = "", actor: str = "dev@acme.test", events: tuple[tuple[str, str], ...] = ()) -> str:
    """A job in the state a test needs, written as the job service writes it (row and progress
    events), without a worker picking it up: the state a page must show, held still."""
    import datetime as dt
    import uuid

    from scope.models import Job

    now = dt.datetime.now(dt.timezone.utc)
    active = status in ("queued", "running")
    job = Job(id=uuid.uuid4().hex, action=action, environment="staging", target=target, status=status, detail=detail,
              actor=actor, source="web", request_id="", params={}, attempts=1,
              active_key=f"staging/{target}" if active else None, created_at=now - dt.timedelta(seconds=40),
              started_at=now - dt.timedelta(seconds=38), finished_at=None if active else now)
    with rt.sessions.begin() as s:
        s.add(job)
    for type_, message in events:
        rt.events.append(job.id, type_, message)
    return job.id


def with_schedule(rt: Any, config_file: Any) -> None:
    """Give staging an on/off schedule (Europe/Berlin, weekdays 07:00-20:00) in the running app."""
    with_staging(rt, config_file, 'schedule = { timezone = "Europe/Berlin", up = "Mon-Fri 07:00-20:00" }')


def with_staging(rt: Any, config_file: Any, *lines: str) -> None:
    """Add configuration lines to staging (e.g. ``require_reason = true``) in the running app."""
    from scope.catalog import load_catalog
    from tests.conftest import BASE_TOML

    body = BASE_TOML.replace('webhook_secret_env = "STAGING_WEBHOOK_SECRET"\n',
                             'webhook_secret_env = "STAGING_WEBHOOK_SECRET"\n' + "".join(f"{x}\n" for x in lines))
    rt.catalog = load_catalog(config_file(body), rt.settings.environ, own_redis_url=rt.settings.redis_url)
