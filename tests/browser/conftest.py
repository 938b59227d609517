"""Browser tests: the real app on a live port, a real worker thread, Debian's Chromium via Playwright."""
from __future__ import annotations

import os
import shutil
import threading
from typing import Any, Iterator

import pytest
from werkzeug.serving import make_server

from tests.conftest import PASSWORD, free_port, seed_cluster

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
def live(app, rt, steady_tasks) -> Iterator[str]:
    """The app on a free port plus an in-process worker, with staging seeded in moto."""
    from dramatiq import Worker

    from workers.actors import declare
    from workers.runner import JobRunner

    seed_cluster("stg", ["orders-api", "payments-api"], family_prefix="staging")
    declare(rt.broker, JobRunner(rt), max_age_ms=600_000)
    worker = Worker(rt.broker, worker_threads=2, worker_timeout=100)
    worker.start()
    from audit.exporter import Exporter

    stop = threading.Event()
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


@pytest.fixture
def page(browser) -> Iterator[Any]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 800})
    pg = context.new_page()
    pg.set_default_timeout(15_000)
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
    from scope.catalog import load_catalog
    from tests.conftest import BASE_TOML

    body = BASE_TOML.replace('webhook_secret_env = "STAGING_WEBHOOK_SECRET"\n',
                             'webhook_secret_env = "STAGING_WEBHOOK_SECRET"\n'
                             'schedule = { timezone = "Europe/Berlin", up = "Mon-Fri 07:00-20:00" }\n')
    rt.catalog = load_catalog(config_file(body), rt.settings.environ, own_redis_url=rt.settings.redis_url)
