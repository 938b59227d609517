"""Redis flush by pattern: the pattern rules, the dry run, the job (SCAN + UNLINK, cap), refusals, secrecy."""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import redis as redis_lib
from redis.cluster import RedisCluster

from cloud.redis_targets import literal_prefix, pattern_problem
from scope.catalog import load_catalog
from tests import conftest
from tests.conftest import PASSWORD, audit_events, free_port, seed_cluster
from workers.runner import JobRunner

FLUSH_URL = "/api/v1/environments/{env}/redis/{target}/flush"
SECRET_PASSWORD = "s3cr3t-Redis-pw-77"

TOML = """
[environments.staging]
region = "us-east-1"
cluster = "stg"
run_tasks = ["staging-migrate"]

[environments.staging.redis.cache]
url_env = "STAGING_CACHE_REDIS_URL"
max_keys = 5

[environments.staging.redis.down]
url_env = "STAGING_DOWN_REDIS_URL"

[environments.staging.redis.badauth]
url_env = "STAGING_BADAUTH_REDIS_URL"

[environments.qa]
region = "us-east-1"
cluster = "qa"

[environments.qa.redis.cache]
url_env = "STAGING_CACHE_REDIS_URL"

[environments.prod]
class = "prod"
region = "us-east-1"
cluster = "prod"

[environments.prod.redis.cache]
url_env = "STAGING_CACHE_REDIS_URL"
"""


def closed_port() -> int:
    return free_port()  # bound, then released: nothing listens there


@pytest.fixture
def environ(environ: dict[str, str], config_file: Callable[[str], str]) -> dict[str, str]:
    return {**environ, "VALETKEY_ENVIRONMENTS": config_file(TOML),
            "STAGING_DOWN_REDIS_URL": f"redis://:{SECRET_PASSWORD}@127.0.0.1:{closed_port()}/3",
            # No such ACL user on the local server: AUTH is refused (WRONGPASS).
            "STAGING_BADAUTH_REDIS_URL": conftest.TARGET_REDIS_URL.replace(
                "redis://", f"redis://valetkey-nobody:{SECRET_PASSWORD}@")}


@pytest.fixture
def other_db() -> Iterator[redis_lib.Redis]:
    """Database 15 of the same server: a flush of db 14 must never reach it."""
    r = redis_lib.Redis.from_url(conftest.TARGET_REDIS_URL.rsplit("/", 1)[0] + "/15")
    r.flushdb()
    yield r
    r.flushdb()
    r.close()


@pytest.fixture
def dev(make_user: Callable[..., dict[str, str]]) -> dict[str, str]:
    return make_user("dev@acme.test", ("staging", "developer"), ("prod", "developer"))


def seed(r: redis_lib.Redis, *keys: str) -> None:
    for k in keys:
        r.set(k, "v")


def keys(r: redis_lib.Redis) -> set[str]:
    return {k.decode() for k in r.keys("*")}  # KEYS is fine in a test of a tiny database


def flush(client: Any, headers: dict[str, str], pattern: Any, dry_run: bool = False,
          env: str = "staging", target: str = "cache", **extra: Any) -> Any:
    return client.post(FLUSH_URL.format(env=env, target=target), headers=headers,
                       json={"pattern": pattern, "dry_run": dry_run, **extra})


def run_job(rt: Any, job_id: str, **kw: Any) -> str | None:
    return JobRunner(rt, sleep=lambda s: None).run(job_id, **kw)


def denied(rt: Any) -> list[dict[str, Any]]:
    return [e for e in audit_events(rt) if e["outcome"] == "denied" and e["action"] == "redis.flush"]


# ---- the pattern rules (pure) ------------------------------------------------------
@pytest.mark.parametrize("pattern, prefix", [
    ("session:*", "session:"), ("user\\*:*", "user*:"), ("a[bc]*", "a"), ("[ab]*", ""), ("*", ""),
    ("s?ssion", "s"), ("plain:key", "plain:key"), ("ab\\", "ab\\"), ("x\\?y*", "x?y"), ("\\*", "*"),
])
def test_literal_prefix(pattern: str, prefix: str) -> None:
    assert literal_prefix(pattern) == prefix


@pytest.mark.parametrize("pattern", ["*", "?*", "[a-z]*", "**", "", "   ", " *", "\t*", "[ab]*", "?",
                                     "valetkey:*", "valetkey:job:1:events", "dramatiq:*", "val*", "d*",
                                     "session:\n*", "x" * 513, None, 5, "\ud800", "session:\udfff*"])
def test_refused_patterns(pattern: Any) -> None:
    assert pattern_problem(pattern)


@pytest.mark.parametrize("pattern", ["session:*", "a[bc]*", "user\\*:*", "\\**", "cart:9", "valetkeys*",
                                     "dramatiq-jobs:*", "s?ssion:*"])
def test_allowed_patterns(pattern: str) -> None:
    assert pattern_problem(pattern) is None


# ---- dry run ---------------------------------------------------------------------
def test_dry_run_counts_and_deletes_nothing(client, dev, target_redis, rt) -> None:
    seed(target_redis, "session:1", "session:2", "session:3", "session:4", "user:1", "cart:9")
    r = flush(client, dev, "session:*", dry_run=True)
    assert r.status_code == 200, r.json
    assert r.json == {"target": "cache", "pattern": "session:*", "matched": 4, "capped": False, "max_keys": 5}
    assert len(keys(target_redis)) == 6
    # Not a job, and nothing to audit but refusals.
    assert not [e for e in audit_events(rt) if e["action"] == "redis.flush"]


def test_dry_run_is_the_default(client, dev, target_redis) -> None:
    seed(target_redis, "session:1")
    r = client.post(FLUSH_URL.format(env="staging", target="cache"), headers=dev, json={"pattern": "session:*"})
    assert r.status_code == 200 and r.json["matched"] == 1
    assert keys(target_redis) == {"session:1"}


def test_dry_run_stops_counting_past_the_cap(client, dev, target_redis) -> None:
    seed(target_redis, *[f"session:{i}" for i in range(20)])
    r = flush(client, dev, "session:*", dry_run=True)
    assert r.status_code == 200
    assert r.json["matched"] == 6 and r.json["capped"] is True and r.json["max_keys"] == 5


# ---- the flush job -----------------------------------------------------------------
def test_flush_deletes_exactly_the_matching_keys(client, dev, target_redis, other_db, rt) -> None:
    seed(target_redis, "session:1", "session:2", "session:3", "session:4", "user:1", "cart:9", "sessions")
    seed(other_db, "session:1", "session:x")
    r = flush(client, dev, "session:*")
    assert r.status_code == 202, r.json
    job = r.json
    assert r.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    assert (job["action"], job["environment"], job["target"], job["status"]) == (
        "redis.flush", "staging", "redis:cache", "queued")
    assert keys(target_redis) >= {"session:1"}  # queued, not run yet

    assert run_job(rt, job["id"]) == "succeeded"
    done = client.get(job["url"], headers=dev).json
    assert done["status"] == "succeeded"
    assert done["detail"] == "Pattern: session:* — 4 keys deleted"
    assert keys(target_redis) == {"user:1", "cart:9", "sessions"}
    assert keys(other_db) == {"session:1", "session:x"}

    types = [e["type"] for e in client.get(job["url"] + "/events", headers=dev).json["events"]]
    assert "count" in types and "progress" in types
    outcomes = [(e["outcome"], e["target"], e["detail"]) for e in audit_events(rt) if e["job_id"] == job["id"]]
    assert outcomes == [("requested", "redis:cache", "Pattern: session:*"),
                        ("succeeded", "redis:cache", "Pattern: session:* — 4 keys deleted")]


def test_flush_in_batches_reports_progress_per_batch(client, make_user, target_redis, rt, config_file,
                                                     environ) -> None:
    # 2500 keys -> three UNLINK batches of at most 1000 under a cap that allows them.
    body = TOML.replace("max_keys = 5", "max_keys = 3000")
    rt.catalog = load_catalog(config_file(body), environ, own_redis_url=rt.settings.redis_url)
    headers = make_user("batch@acme.test", ("staging", "developer"))
    pipe = target_redis.pipeline()
    for i in range(2500):
        pipe.set(f"bulk:{i}", "v")
    pipe.set("keep:1", "v")
    pipe.execute()
    job = flush(client, headers, "bulk:*").json
    assert run_job(rt, job["id"]) == "succeeded"
    events = client.get(job["url"] + "/events", headers=headers).json["events"]
    assert len([e for e in events if e["type"] == "progress"]) >= 3
    assert rt.jobs.get(job["id"]).detail == "Pattern: bulk:* — 2500 keys deleted"
    assert keys(target_redis) == {"keep:1"}


@pytest.mark.parametrize("pattern, seeded, gone", [
    ("user\\*:*", ["user*:1", "user*:2", "userX:1", "user:1"], {"user*:1", "user*:2"}),
    ("a[bc]*", ["ab1", "ac2", "ad3", "a"], {"ab1", "ac2"}),
    ("s?ss:*", ["sess:1", "siss:2", "sss:3"], {"sess:1", "siss:2"}),
])
def test_escapes_and_classes_behind_a_prefix(client, dev, target_redis, rt, pattern, seeded, gone) -> None:
    seed(target_redis, *seeded)
    job = flush(client, dev, pattern).json
    assert run_job(rt, job["id"]) == "succeeded"
    assert keys(target_redis) == set(seeded) - gone
    assert rt.jobs.get(job["id"]).detail == f"Pattern: {pattern} — {len(gone)} keys deleted"


def test_one_key_reads_well(client, dev, target_redis, rt) -> None:
    seed(target_redis, "cart:9", "cart:10")
    job = flush(client, dev, "cart:9").json
    assert run_job(rt, job["id"]) == "succeeded"
    assert rt.jobs.get(job["id"]).detail == "Pattern: cart:9 — 1 key deleted"
    assert keys(target_redis) == {"cart:10"}


def test_over_the_cap_deletes_nothing(client, dev, target_redis, rt) -> None:
    seed(target_redis, *[f"session:{i}" for i in range(6)])
    job = flush(client, dev, "session:*").json
    assert run_job(rt, job["id"]) == "failed"
    detail = rt.jobs.get(job["id"]).detail
    assert "more than 5 keys match session:*" in detail and "nothing was deleted" in detail
    assert len(keys(target_redis)) == 6
    assert [e["outcome"] for e in audit_events(rt) if e["job_id"] == job["id"]] == ["requested", "failed"]


def test_nothing_matching_succeeds_with_zero(client, dev, target_redis, rt) -> None:
    seed(target_redis, "user:1")
    job = flush(client, dev, "session:*").json
    assert run_job(rt, job["id"]) == "succeeded"
    assert rt.jobs.get(job["id"]).detail == "Pattern: session:* — 0 keys deleted"
    assert keys(target_redis) == {"user:1"}


def test_a_second_flush_of_the_target_while_one_is_queued_is_409(client, dev, target_redis) -> None:
    first = flush(client, dev, "session:*")
    assert first.status_code == 202
    second = flush(client, dev, "cart:*")
    assert second.status_code == 409
    assert first.json["id"] in second.json["detail"]


def test_redelivered_job_counts_what_is_left(client, dev, target_redis, rt) -> None:
    """At-least-once: a second run after a partial one finishes the work and keeps the total."""
    seed(target_redis, "session:1", "session:2", "user:1")
    job = flush(client, dev, "session:*").json
    claimed = rt.jobs.claim(job["id"])
    assert claimed is not None
    # As if a first worker had deleted one key, checkpointed, then died.
    target_redis.delete("session:1")
    rt.jobs.heartbeat(job["id"], params={**claimed.params, "deleted": 1})
    rt.jobs.release(job["id"])
    assert run_job(rt, job["id"]) == "succeeded"
    assert rt.jobs.get(job["id"]).detail == "Pattern: session:* — 2 keys deleted"
    assert keys(target_redis) == {"user:1"}


def test_job_params_hold_the_pattern_not_the_url(client, dev, target_redis, rt) -> None:
    job = flush(client, dev, "session:*").json
    params = rt.jobs.get(job["id"]).params
    assert params == {"redis_target": "cache", "pattern": "session:*"}


# ---- refusals ----------------------------------------------------------------------
@pytest.mark.parametrize("pattern", ["*", "?*", "[a-z]*", "**", "", "   ", "[ab]*", "valetkey:*", "dramatiq:*"])
@pytest.mark.parametrize("dry_run", [True, False])
def test_bad_patterns_are_400_naming_pattern(client, dev, target_redis, rt, pattern, dry_run) -> None:
    seed(target_redis, "session:1", "user:1")
    r = flush(client, dev, pattern, dry_run=dry_run)
    assert r.status_code == 400, r.json
    assert r.headers["Content-Type"].startswith("application/problem+json")
    assert "pattern" in r.json["errors"]
    assert keys(target_redis) == {"session:1", "user:1"}
    assert not rt.jobs.active_job("staging", "redis:cache")


@pytest.mark.parametrize("dry_run", ["true", "false"])
def test_lone_surrogate_pattern_is_400_naming_pattern(client, dev, target_redis, rt, dry_run) -> None:
    # JSON may spell a lone surrogate; it cannot be sent to Redis (was a 502 "target failed").
    seed(target_redis, "session:1")
    body = '{"pattern": "session:\\ud800*", "dry_run": %s}' % dry_run
    r = client.post("/api/v1/environments/staging/redis/cache/flush", data=body,
                    content_type="application/json", headers=dev)
    assert r.status_code == 400, r.json
    assert list(r.json["errors"]) == ["pattern"]
    assert keys(target_redis) == {"session:1"}


def test_refused_pattern_is_audited_denied(client, dev, rt) -> None:
    assert flush(client, dev, "*").status_code == 400
    [entry] = denied(rt)
    assert entry["target"] == "redis:cache" and "literal prefix" in entry["detail"]


@pytest.mark.parametrize("body", [
    {"pattern": "session:*", "dry_run": False, "url": "redis://elsewhere:6379/0"},
    {"pattern": "session:*", "dry_run": False, "max_keys": 1000000},
    {"dry_run": False},
    {"pattern": ["session:*"], "dry_run": False},
    {"pattern": "session:*", "dry_run": "sometimes"},
])
def test_malformed_bodies_are_400(client, dev, target_redis, rt, body) -> None:
    seed(target_redis, "session:1")
    r = client.post(FLUSH_URL.format(env="staging", target="cache"), headers=dev, json=body)
    assert r.status_code == 400, r.json
    assert r.json["errors"]
    assert keys(target_redis) == {"session:1"}


def test_viewer_is_403_and_audited(client, make_user, target_redis, rt) -> None:
    seed(target_redis, "session:1")
    viewer = make_user("view@acme.test", ("staging", "viewer"))
    for dry in (True, False):
        assert flush(client, viewer, "session:*", dry_run=dry).status_code == 403
    assert len(denied(rt)) == 2
    assert keys(target_redis) == {"session:1"}


def test_unknown_target_is_404_and_audited(client, dev, rt) -> None:
    r = flush(client, dev, "session:*", target="nope")
    assert r.status_code == 404
    [entry] = denied(rt)
    assert entry["target"] == "redis:nope"


def test_unassigned_environment_is_404(client, dev, target_redis) -> None:
    seed(target_redis, "session:1")
    assert flush(client, dev, "session:*", env="qa").status_code == 404
    assert keys(target_redis) == {"session:1"}


def test_prod_is_403(client, dev, target_redis, rt) -> None:
    seed(target_redis, "session:1")
    for dry in (True, False):
        r = flush(client, dev, "session:*", dry_run=dry, env="prod")
        assert r.status_code == 403
    assert keys(target_redis) == {"session:1"}
    assert all(e["environment"] == "prod" for e in denied(rt))


def test_unauthenticated_is_401(client, target_redis) -> None:
    seed(target_redis, "session:1")
    assert flush(client, {}, "session:*").status_code == 401
    assert keys(target_redis) == {"session:1"}


def test_revoked_grant_refuses_at_run_time(client, dev, target_redis, rt) -> None:
    seed(target_redis, "session:1")
    job = flush(client, dev, "session:*").json
    rt.users.revoke("dev@acme.test", "staging")
    assert run_job(rt, job["id"]) == "failed"
    assert rt.jobs.get(job["id"]).detail.startswith("Refused at run time")
    assert keys(target_redis) == {"session:1"}


# ---- secrecy: the URL (with its password) appears nowhere ----------------------------
def _no_secret(*texts: str) -> None:
    for t in texts:
        assert SECRET_PASSWORD not in t
        assert "127.0.0.1" not in t and "redis://" not in t


def test_unreachable_target_fails_safely(client, dev, rt, caplog) -> None:
    r = flush(client, dev, "session:*", dry_run=True, target="down")
    assert (r.status_code, r.headers["Retry-After"]) == (503, "5")  # unreachable for now: come back later
    assert "down" in r.json["detail"]
    job = flush(client, dev, "session:*", target="down").json
    # A connection failure is transient: the job is suspended and tried again later, then given up.
    runner = JobRunner(rt)  # a worker's runner: it suspends the job between tries
    assert runner.run(job["id"]) == "running"
    assert [runner.run(job["id"], attempt=1) for _ in range(3)] == ["running", "running", "failed"]
    detail = rt.jobs.get(job["id"]).detail
    assert "Redis target 'down' failed" in detail
    events = client.get(job["url"] + "/events", headers=dev).json["events"]
    _no_secret(r.get_data(as_text=True), detail, str(events), str(audit_events(rt)), caplog.text,
               client.get(job["url"], headers=dev).get_data(as_text=True))


def test_refused_password_fails_safely(client, dev, rt, target_redis, caplog) -> None:
    seed(target_redis, "session:1")
    r = flush(client, dev, "session:*", dry_run=True, target="badauth")
    assert r.status_code == 502
    job = flush(client, dev, "session:*", target="badauth").json
    assert run_job(rt, job["id"]) == "failed"  # not transient: no retry
    detail = rt.jobs.get(job["id"]).detail
    _no_secret(r.get_data(as_text=True), detail, str(audit_events(rt)), caplog.text)
    assert keys(target_redis) == {"session:1"}


def test_environment_api_lists_target_names_only(client, dev, aws) -> None:
    seed_cluster("stg", ["orders-api"], family_prefix="staging")
    body = client.get("/api/v1/environments/staging", headers=dev).get_data(as_text=True)
    assert '"cache"' in body
    _no_secret(body)


def test_openapi_documents_the_flush(client) -> None:
    spec = client.get("/api/v1/openapi.json").json
    op = spec["paths"]["/api/v1/environments/{env}/redis/{target}/flush"]["post"]
    assert {"200", "202"} <= set(op["responses"])


# ---- the page: preview, then an explicit confirm ------------------------------------
def _login(client: Any, email: str) -> None:
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    r = client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token, "next": "/"})
    assert r.status_code == 302


def test_page_preview_then_confirm(client, dev, target_redis, other_db, rt, aws) -> None:
    seed_cluster("stg", ["orders-api"], family_prefix="staging")
    seed(target_redis, "session:1", "session:2", "user:1")
    _login(client, "dev@acme.test")
    env_page = client.get("/environments/staging").get_data(as_text=True)
    assert 'name="pattern"' in env_page and "/environments/staging/redis/cache/flush" in env_page

    page = client.get("/environments/staging/redis/cache/flush?pattern=session:*")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "<strong>2</strong> keys match" in html
    assert keys(target_redis) == {"session:1", "session:2", "user:1"}  # the preview changed nothing
    form = re.search(r'<form method="post" action="/environments/staging/redis/cache/flush"[^>]*>(.*?)</form>',
                     html, re.S).group(1)
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    assert 'name="pattern" value="session:*"' in form

    # Without the CSRF token the confirm is refused.
    assert client.post("/environments/staging/redis/cache/flush", data={"pattern": "session:*"}).status_code == 400
    r = client.post("/environments/staging/redis/cache/flush", data={"pattern": "session:*", "csrf_token": token})
    assert r.status_code == 302
    job_id = r.headers["Location"].rsplit("/", 1)[-1]
    assert run_job(rt, job_id) == "succeeded"
    assert keys(target_redis) == {"user:1"}
    assert [e["source"] for e in audit_events(rt) if e["job_id"] == job_id] == ["web", "web"]


def test_page_preview_shows_refusals_inline(client, dev, target_redis, aws) -> None:
    seed_cluster("stg", ["orders-api"], family_prefix="staging")
    seed(target_redis, *[f"session:{i}" for i in range(9)])
    _login(client, "dev@acme.test")
    bare = client.get("/environments/staging/redis/cache/flush?pattern=*").get_data(as_text=True)
    assert "literal prefix" in bare and "Delete the keys" not in bare
    capped = client.get("/environments/staging/redis/cache/flush?pattern=session:*").get_data(as_text=True)
    assert "More than 5 keys match" in capped and "Delete the keys" not in capped


def test_viewer_page_has_no_flush_form(client, make_user, aws) -> None:
    seed_cluster("stg", ["orders-api"], family_prefix="staging")
    make_user("view@acme.test", ("staging", "viewer"))
    _login(client, "view@acme.test")
    html = client.get("/environments/staging").get_data(as_text=True)
    assert "cache" in html and 'name="pattern"' not in html
    assert client.get("/environments/staging/redis/cache/flush?pattern=session:*").status_code == 403


# ---- cluster mode: every primary scanned, UNLINK per slot ----------------------------
@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Three primaries on local ports with the 16384 slots split between them."""
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    base = tmp_path_factory.mktemp("cluster")
    ports = [free_port() for _ in range(3)]
    # Bus ports are chosen too: the default (port + 10000) may be taken or past 65535.
    bus = [free_port() for _ in range(3)]
    procs = []
    for p, b in zip(ports, bus):
        d = Path(base) / str(p)
        d.mkdir()
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(p), "--cluster-port", str(b), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-config-file", str(d / "nodes.conf"), "--dir", str(d),
             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        nodes = [redis_lib.Redis(port=p) for p in ports]
        _wait(lambda: all(_pings(n) for n in nodes))
        ranges = [(0, 5460), (5461, 10922), (10923, 16383)]
        for n, (lo, hi) in zip(nodes, ranges):
            n.execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
        for p, b in zip(ports[1:], bus[1:]):
            nodes[0].execute_command("CLUSTER", "MEET", "127.0.0.1", p, b)
        _wait(lambda: all(n.info("cluster")["cluster_enabled"] == 1
                          and n.execute_command("CLUSTER", "INFO").decode().find("cluster_state:ok") >= 0
                          for n in nodes))
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def _pings(n: redis_lib.Redis) -> bool:
    try:
        return bool(n.ping())
    except redis_lib.ConnectionError:
        return False


def _wait(cond: Callable[[], bool], timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError("redis cluster did not come up")


def test_cluster_target_flushes_every_primary(client, make_user, rt, config_file, environ, redis_cluster) -> None:
    body = TOML + '\n[environments.staging.redis.shards]\nurl_env = "STAGING_SHARDS_REDIS_URL"\nmax_keys = 500\n'
    env = {**environ, "STAGING_SHARDS_REDIS_URL": redis_cluster}
    rt.catalog = load_catalog(config_file(body), env, own_redis_url=rt.settings.redis_url)
    rt.settings = type(rt.settings).from_env(env)
    headers = make_user("ops@acme.test", ("staging", "developer"))
    rc = RedisCluster.from_url(redis_cluster)
    try:
        rc.flushall()
        for i in range(200):
            rc.set(f"session:{i}", "v")
            rc.set(f"keep:{i}", "v")
        # The keys really are spread over every primary.
        assert all(n.dbsize() > 0 for n in (redis_lib.Redis(host=x.host, port=x.port)
                                            for x in rc.get_primaries()))
        dry = flush(client, headers, "session:*", dry_run=True, target="shards")
        assert dry.status_code == 200 and dry.json["matched"] == 200
        job = flush(client, headers, "session:*", target="shards").json
        assert run_job(rt, job["id"]) == "succeeded", rt.jobs.get(job["id"]).detail
        assert rt.jobs.get(job["id"]).detail == "Pattern: session:* — 200 keys deleted"
        events = client.get(job["url"] + "/events", headers=headers).json["events"]
        assert any("every primary scanned" in e["message"] for e in events)
        left = set(rc.scan_iter(match="*", count=1000))
        assert left == {f"keep:{i}".encode() for i in range(200)}
    finally:
        rc.flushall()
        rc.close()

