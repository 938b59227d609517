"""Outages answer 503 with Retry-After, never 500 (issue 18, fault findings).

Real dependencies made unreachable: PostgreSQL behind a TCP proxy that is
stopped (open connections cut, new ones refused), and a private redis-server
killed (the app's Redis and the flush target), then brought back.
"""
from __future__ import annotations

import re
from typing import Any, Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from jobs.kinds import FLUSH
from scope.db import make_engine
from scope.settings import Settings
from tests import conftest
from tests.conftest import BASE_TOML, PASSWORD, POSTGRES_URL
from tests.outage import RedisServer, TcpProxy
from wiring.runtime import Runtime

FLUSH_URL = "/api/v1/environments/staging/redis/cache/flush"


def assert_outage(r: Any, html: bool = False, says: str = "cannot be reached") -> None:
    assert r.status_code == 503, r.get_data(as_text=True)[:500]
    assert r.headers["Retry-After"] == "5"
    text = r.get_data(as_text=True)
    assert "Traceback" not in text and "psycopg" not in text and "redis.exceptions" not in text
    if html:
        assert r.mimetype == "text/html" and "503 · Service Unavailable" in text
        assert 'rel="stylesheet"' in text  # the site's own error page (as signed out), not a bare one
    else:
        body = r.get_json()
        assert r.mimetype == "application/problem+json" and body["status"] == 503
        assert says in body["detail"] and "redis://" not in text and "127.0.0.1" not in text


def runtime_and_client(environ: dict[str, str]) -> tuple[Runtime, Any]:
    from web import create_app

    rt = Runtime.from_settings(Settings.from_env(environ))
    return rt, create_app({"TESTING": True}, runtime=rt).test_client()


def sign_in(client: Any, email: str) -> None:
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    r = client.post("/login", data={"email": email, "password": PASSWORD, "next": "/", "csrf_token": token})
    assert r.status_code == 302


# ---- the database --------------------------------------------------------------------
@pytest.fixture
def pg_proxy(pg_schema_url: str) -> Iterator[tuple[TcpProxy, str]]:
    u = make_url(POSTGRES_URL)
    proxy = TcpProxy((u.host or "127.0.0.1", u.port or 5432)).start()
    yield proxy, pg_schema_url.replace(f":{u.port or 5432}/", f":{proxy.port}/", 1)
    proxy.stop()


def test_database_unreachable_answers_503_on_actions_pages_and_reads(pg_proxy, pg_schema_url, redis_url,
                                                                     config_file):
    proxy, url = pg_proxy
    rt, client = runtime_and_client({"VALETKEY_DATABASE_URL": url, "VALETKEY_REDIS_URL": redis_url,
                                     "VALETKEY_ENVIRONMENTS": config_file(BASE_TOML),
                                     "VALETKEY_SECRET_KEY": "test-secret-key-0123456789",
                                     "STAGING_CACHE_REDIS_URL": conftest.TARGET_REDIS_URL})
    try:
        rt.users.add_user("dev@acme.test", "Dev", PASSWORD)
        rt.users.grant("dev@acme.test", "staging", "developer", rt.catalog)
        _, token = rt.users.create_token("dev@acme.test", "t")
        api = {"Authorization": f"Bearer {token}"}
        job = rt.jobs.create(action=FLUSH, environment="staging", target="redis/cache", actor="dev@acme.test",
                             source="api", params={"redis_target": "cache", "pattern": "session:*"})
        sign_in(client, "dev@acme.test")
        assert client.get(f"/api/v1/jobs/{job.id}", headers=api).status_code == 200

        proxy.stop()
        assert_outage(client.post(FLUSH_URL, headers=api, json={"pattern": "session:*", "dry_run": False}))
        assert_outage(client.get(f"/api/v1/jobs/{job.id}", headers=api))  # a read
        assert_outage(client.get("/api/v1/me", headers=api))
        assert_outage(client.get(f"/jobs/{job.id}", headers={"Accept": "text/html"}), html=True)  # a page
        assert_outage(client.get("/", headers={"Accept": "text/html"}), html=True)
        assert client.get("/healthz").status_code == 200  # liveness does not depend on the database
        assert client.get("/readyz").status_code == 503

        proxy.start()  # back: the pool reconnects on its own
        assert client.get(f"/api/v1/jobs/{job.id}", headers=api).status_code == 200
        assert client.get("/", headers={"Accept": "text/html"}).status_code == 200
    finally:
        proxy.stop()
        with make_engine(pg_schema_url).begin() as c:  # as the db_url fixture leaves the shared schema
            for t in conftest._tables():
                c.execute(text(f"DELETE FROM {t}"))
        rt.close()


# ---- Redis -----------------------------------------------------------------------------
@pytest.fixture
def own_redis(tmp_path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def test_redis_down_answers_503_on_job_events_flush_preview_and_actions(environ, own_redis):
    rt, client = runtime_and_client({**environ, "VALETKEY_REDIS_URL": own_redis.url,
                                     "STAGING_CACHE_REDIS_URL": own_redis.url[:-1] + "1"})
    try:
        rt.users.add_user("dev@acme.test", "Dev", PASSWORD)
        rt.users.grant("dev@acme.test", "staging", "developer", rt.catalog)
        _, token = rt.users.create_token("dev@acme.test", "t")
        api = {"Authorization": f"Bearer {token}"}
        job = client.post(FLUSH_URL, headers=api, json={"pattern": "session:*", "dry_run": False}).get_json()
        events = f"/api/v1/jobs/{job['id']}/events"
        assert client.get(events, headers=api).status_code == 200
        assert client.post(FLUSH_URL, headers=api, json={"pattern": "session:*", "dry_run": True}).status_code == 200

        own_redis.stop()
        assert_outage(client.get(events, headers=api))
        assert_outage(client.get(events + "?wait=5", headers=api))
        assert_outage(client.post(FLUSH_URL, headers=api, json={"pattern": "session:*", "dry_run": True}),
                      says="Redis target 'cache' failed while connecting")
        assert_outage(client.post(FLUSH_URL, headers=api, json={"pattern": "other:*", "dry_run": False}),
                      says="nothing was done")
        assert client.get(f"/api/v1/jobs/{job['id']}", headers=api).status_code == 200  # the database still answers

        own_redis.start()
        assert client.get(events, headers=api).status_code == 200
        assert client.post(FLUSH_URL, headers=api,
                           json={"pattern": "session:*", "dry_run": True}).status_code == 200
    finally:
        rt.close()


def test_a_refused_redis_command_is_not_an_outage():
    """A wrong password or a bad command is a bug or a misconfiguration, never dressed up as an outage."""
    import redis as redis_lib
    from sqlalchemy.exc import IntegrityError

    from cloud.errors import outage
    assert outage(redis_lib.ConnectionError("refused")) == "Redis"
    assert outage(redis_lib.TimeoutError("slow")) == "Redis"
    assert outage(redis_lib.AuthenticationError("bad password")) is None
    assert outage(redis_lib.ResponseError("WRONGTYPE")) is None
    assert outage(IntegrityError("insert", {}, Exception("duplicate"))) is None
    wrapped = RuntimeError("while appending")
    wrapped.__cause__ = redis_lib.ConnectionError("refused")
    assert outage(wrapped) == "Redis"


def test_a_job_whose_heartbeat_meets_a_database_outage_stops_unfailed(pg_proxy, pg_schema_url, redis_url,
                                                                      config_file):
    """Its attempt stops where it is (LeaseLost), the job stays running, and is taken over afterwards."""
    proxy, url = pg_proxy
    rt, _ = runtime_and_client({"VALETKEY_DATABASE_URL": url, "VALETKEY_REDIS_URL": redis_url,
                                "VALETKEY_ENVIRONMENTS": config_file(BASE_TOML),
                                "VALETKEY_SECRET_KEY": "test-secret-key-0123456789",
                                "STAGING_CACHE_REDIS_URL": conftest.TARGET_REDIS_URL})
    try:
        job = rt.jobs.create(action=FLUSH, environment="staging", target="redis:cache", actor="dev@acme.test",
                             source="api")
        claimed = rt.jobs.claim(job.id)
        assert claimed is not None and rt.jobs.heartbeat(job.id, attempt=claimed.attempts)
        proxy.stop()
        assert not rt.jobs.heartbeat(job.id, attempt=claimed.attempts)
        assert not rt.jobs.heartbeat(job.id, params={"step": 1}, attempt=claimed.attempts)
        assert job.id not in rt.jobs.held()  # its process stops renewing it
        proxy.start()
        assert rt.jobs.get(job.id).status == "running"  # not failed: resumed by a takeover
    finally:
        proxy.stop()
        with make_engine(pg_schema_url).begin() as c:
            for t in conftest._tables():
                c.execute(text(f"DELETE FROM {t}"))
        rt.close()
