"""``valetkey demo``: its seeding and log writer against moto with the ECS simulator (on a fake clock),
its one-click sign-in, and the whole command as a subprocess (ECS at real speed through the
simulator, its own Redis, start, sign in, restart, a crash loop explained, stop, nothing left behind)."""
from __future__ import annotations

import datetime as dt
import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import boto3
import pytest
import redis as redis_lib
import requests

from ecssim import Simulator
from scope.catalog import load_catalog
from scope.errors import ValetKeyError
from scope.schedule_windows import parse_schedule
from tests.conftest import free_port
from valetkey import demo, demo_seed

START_TIMEOUT = 120.0  # generous: a cold start imports moto, boto3, Flask and gunicorn
STOP_TIMEOUT = 25.0
UP_TIMEOUT = 120.0  # real seconds for the simulated services to run their tasks (Fargate-like: 10-30 s each)


# ---- helpers --------------------------------------------------------------------------------
def ecs(region: str = "us-east-1") -> Any:
    return boto3.client("ecs", region_name=region)


def tasks_of(cluster: str, region: str = "us-east-1", client: Any = None) -> list[dict[str, Any]]:
    c = client or ecs(region)
    arns = c.list_tasks(cluster=cluster)["taskArns"] + c.list_tasks(cluster=cluster, desiredStatus="STOPPED")["taskArns"]
    return c.describe_tasks(cluster=cluster, tasks=arns)["tasks"] if arns else []


def running(cluster: str, region: str = "us-east-1", client: Any = None) -> list[dict[str, Any]]:
    return [t for t in tasks_of(cluster, region, client) if t["lastStatus"] == "RUNNING"
            and t["desiredStatus"] == "RUNNING"]


def in_group(tasks: list[dict[str, Any]], service: str) -> list[str]:
    return sorted(t["taskArn"] for t in tasks if t["group"] == f"service:{service}")


def messages(group: str, region: str = "us-east-1", stream_prefix: str | None = None,
             endpoint: str | None = None) -> list[str]:
    kw = {"logStreamNamePrefix": stream_prefix} if stream_prefix else {}
    extra: dict[str, Any] = {"endpoint_url": endpoint, "aws_access_key_id": "demo",
                             "aws_secret_access_key": "demo"} if endpoint else {}
    events = boto3.client("logs", region_name=region, **extra).filter_log_events(logGroupName=group, **kw)["events"]
    return [e["message"] for e in events]


@pytest.fixture
def seeded(aws: str, sim: Simulator) -> list[demo_seed.SeededEnvironment]:
    return demo_seed.seed_aws(aws, sim)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- seeding ------------------------------------------------------------------------------
def test_seeded_services_get_their_tasks_from_the_simulated_scheduler(
        sim: Simulator, seeded: list[demo_seed.SeededEnvironment]) -> None:
    assert [s.spec.name for s in seeded] == ["staging", "qa-eu", "prod"]
    # CreateService only: nothing runs yet; the scheduler starts the tasks as time passes.
    assert running("staging") == []
    sim.advance(60)
    for s in seeded:
        c = ecs(s.spec.region)
        tasks = running(s.spec.cluster, s.spec.region)
        svcs = c.describe_services(cluster=s.spec.cluster, services=[v.name for v in s.spec.services])["services"]
        for svc, spec in zip(svcs, s.spec.services):
            td = c.describe_task_definition(taskDefinition=svc["taskDefinition"])["taskDefinition"]
            opts = td["containerDefinitions"][0]["logConfiguration"]
            assert (opts["logDriver"], opts["options"]["awslogs-group"]) == ("awslogs", f"/ecs/{s.spec.name}-{spec.name}")
            if spec.crash_after is not None:
                continue
            assert svc["desiredCount"] == spec.desired
            assert len(in_group(tasks, spec.name)) == spec.desired, spec.name
            assert svc["deployments"][0]["rolloutState"] == "COMPLETED"
        for fam in s.spec.run_task_families:
            assert c.describe_task_definition(taskDefinition=fam)["taskDefinition"]["family"] == fam


def test_pdf_renderer_crash_loops_with_exit_137(sim: Simulator, seeded: list[demo_seed.SeededEnvironment]) -> None:
    sim.advance(90)
    crashed = [t for t in tasks_of("staging") if t["group"] == "service:pdf-renderer" and t["lastStatus"] == "STOPPED"]
    assert len(crashed) >= 2
    assert {t["stoppedReason"] for t in crashed} == {"Essential container in task exited"}
    assert {t["containers"][0]["exitCode"] for t in crashed} == {137}
    # and the scheduler keeps replacing them: a crash loop
    assert len([t for t in tasks_of("staging") if t["group"] == "service:pdf-renderer"]) > 2


def test_web_frontend_has_an_autoscaling_target(seeded: list[demo_seed.SeededEnvironment]) -> None:
    targets = boto3.client("application-autoscaling", region_name="us-east-1").describe_scalable_targets(
        ServiceNamespace="ecs")["ScalableTargets"]
    assert [(t["ResourceId"], t["MinCapacity"]) for t in targets] == [("service/staging/web-frontend", 1)]


def test_seeded_images_are_in_ecr_with_digests(sim: Simulator, seeded: list[demo_seed.SeededEnvironment]) -> None:
    images = boto3.client("ecr", region_name="us-east-1").describe_images(
        repositoryName="orders-api", imageIds=[{"imageTag": "main"}])["imageDetails"]
    assert len(images) == 1 and images[0]["imageDigest"].startswith("sha256:")


def test_seeded_logs_have_realistic_lines_with_some_errors(seeded: list[demo_seed.SeededEnvironment]) -> None:
    lines = messages("/ecs/staging-orders-api")
    assert len(lines) > 100
    errors = [m for m in lines if m.startswith("ERROR")]
    assert 0 < len(errors) < len(lines) / 4
    assert any(m.startswith("INFO") and " 200 " in m for m in lines)
    # qa-eu lives in another region, with its own logs
    assert any(m.startswith("ERROR") for m in messages("/ecs/qa-eu-search-api", region="eu-west-1"))


def test_catalog_loads_and_describes_the_seeded_world(seeded: list[demo_seed.SeededEnvironment],
                                                      tmp_path: Path) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    path = tmp_path / "environments.toml"
    path.write_text(demo_seed.catalog_toml(seeded, demo_seed.schedule_windows(now)))
    environ = {"STAGING_CACHE_REDIS_URL": "redis://127.0.0.1:6379/1", "QA_EU_CACHE_REDIS_URL": "redis://127.0.0.1:6379/2"}
    cat = load_catalog(str(path), environ, own_redis_url="redis://127.0.0.1:6379/0")
    assert cat.names() == ["prod", "qa-eu", "staging"]
    prod, staging, qa = cat.get("prod"), cat.get("staging"), cat.get("qa-eu")
    assert prod is not None and staging is not None and qa is not None
    assert prod.is_prod and not prod.enabled and not prod.redis
    assert staging.enabled and qa.enabled and sorted(staging.redis) == ["cache"] and sorted(qa.redis) == ["cache"]
    assert staging.run_tasks == ("staging-orders-migrate", "staging-backfill-invoices")
    assert "staging-drop-tables" not in staging.run_tasks  # registered, deliberately not allow-listed
    assert staging.schedule is not None and staging.schedule.is_up(now)
    assert qa.schedule is None and qa.region == "eu-west-1"
    assert staging.network is not None and staging.network.subnets == tuple(seeded[0].subnets)


def test_catalog_refuses_a_target_in_valet_keys_own_database(seeded: list[demo_seed.SeededEnvironment],
                                                             tmp_path: Path) -> None:
    from scope.errors import ConfigError

    path = tmp_path / "environments.toml"
    path.write_text(demo_seed.catalog_toml(seeded, ["Mon-Sun 00:00-24:00"]))
    environ = {"STAGING_CACHE_REDIS_URL": "redis://127.0.0.1:6379/0", "QA_EU_CACHE_REDIS_URL": "redis://127.0.0.1:6379/2"}
    with pytest.raises(ConfigError, match="own Redis"):
        load_catalog(str(path), environ, own_redis_url="redis://localhost:6379/0")


@pytest.mark.parametrize("hour", [0, 9, 12, 13, 22, 23])
def test_schedule_window_starts_up_at_any_hour(hour: int) -> None:
    now = dt.datetime(2026, 3, 4, hour, 59, tzinfo=dt.timezone.utc)
    windows = demo_seed.schedule_windows(now)
    sched = parse_schedule({"timezone": "UTC", "up": windows})
    assert sched.is_up(now) and sched.is_up(now + dt.timedelta(hours=11))
    assert not sched.is_up(now + dt.timedelta(hours=12, minutes=30))


def test_seed_redis_writes_flushable_keys_idempotently(target_redis: redis_lib.Redis) -> None:
    n = demo_seed.seed_redis(target_redis, "staging")
    assert target_redis.dbsize() == n > 100
    assert len(list(target_redis.scan_iter("session:*"))) == 40
    assert demo_seed.seed_redis(target_redis, "staging") == n
    assert target_redis.dbsize() == n  # a second demo start rewrites the same keys


# ---- the log writer ------------------------------------------------------------------------------
def test_new_service_tasks_log_their_start_up(aws: str, sim: Simulator,
                                             seeded: list[demo_seed.SeededEnvironment]) -> None:
    logs = demo_seed.DemoLogs(aws, sim, seeded[:1], clock=FakeClock())
    sim.advance(60)
    logs.tick()
    old = in_group(running("staging"), "orders-api")
    assert len(old) == 2
    for arn in old:
        assert any("listening" in m for m in messages("/ecs/staging-orders-api", stream_prefix=demo_seed.stream_of(arn)))
    ecs().stop_task(cluster="staging", task=old[0], reason="restart")
    sim.advance(60)  # the scheduler replaces it once it is STOPPED
    logs.tick()
    now = in_group(running("staging"), "orders-api")
    new = [a for a in now if a not in old]
    assert len(now) == 2 and len(new) == 1
    assert any("listening" in m for m in messages("/ecs/staging-orders-api", stream_prefix=demo_seed.stream_of(new[0])))
    stopped = messages("/ecs/staging-orders-api", stream_prefix=demo_seed.stream_of(old[0]))
    assert any("SIGTERM" in m for m in stopped)


def test_crashing_tasks_log_why_they_died(aws: str, sim: Simulator,
                                         seeded: list[demo_seed.SeededEnvironment]) -> None:
    logs = demo_seed.DemoLogs(aws, sim, seeded[:1], clock=FakeClock())
    for _ in range(60):
        sim.advance(1)
        logs.tick()
    lines = messages("/ecs/staging-pdf-renderer")
    assert any("OutOfMemoryError" in m for m in lines)
    assert any("exit code 137" in m for m in lines)


@pytest.mark.parametrize(("family", "first", "last"), [
    ("staging-orders-migrate", "INFO  migrate: connecting to the database", "migration(s) applied"),
    ("staging-backfill-invoices", "INFO  staging-backfill-invoices: started", "exiting with code 2"),
])
def test_one_off_tasks_write_output_and_exit_as_set(aws: str, sim: Simulator,
                                                    seeded: list[demo_seed.SeededEnvironment],
                                                    family: str, first: str, last: str) -> None:
    logs = demo_seed.DemoLogs(aws, sim, seeded[:1], clock=FakeClock())
    arn = ecs().run_task(cluster="staging", taskDefinition=family, launchType="FARGATE",
                         networkConfiguration=seeded[0].network, startedBy="valetkey/job1")["tasks"][0]["taskArn"]
    for _ in range(60):
        sim.advance(1)
        logs.tick()
    task = ecs().describe_tasks(cluster="staging", tasks=[arn])["tasks"][0]
    assert task["lastStatus"] == "STOPPED"
    assert task["containers"][0]["exitCode"] == (2 if "backfill" in family else 0)
    lines = messages(f"/ecs/{family}", stream_prefix=demo_seed.stream_of(arn))
    assert lines[0] == first and last in lines[-1]


def test_running_services_get_fresh_lines(aws: str, sim: Simulator,
                                         seeded: list[demo_seed.SeededEnvironment]) -> None:
    clock = FakeClock()
    sim.advance(60)
    logs = demo_seed.DemoLogs(aws, sim, seeded[:2], clock=clock, log_every=3)
    logs.tick()  # start-up lines of every task, and a first burst
    since = int(time.time() * 1000)

    def fresh() -> int:
        n = 0
        for s in seeded[:2]:
            lg = boto3.client("logs", region_name=s.spec.region)
            for svc in s.spec.services:
                n += len(lg.filter_log_events(logGroupName=f"/ecs/{s.spec.name}-{svc.name}",
                                              startTime=since)["events"])
        return n

    first = fresh()
    logs.tick()  # within log_every: nothing new
    assert fresh() == first
    clock.now += 3
    logs.tick()
    assert fresh() > first


def test_log_writer_survives_a_broken_endpoint(sim: Simulator) -> None:
    logs = demo_seed.DemoLogs(f"http://127.0.0.1:{free_port()}", sim, [], interval=0.01)
    logs.start()
    logs.stop()  # nothing to do, nothing raised, the thread ends
    assert logs._thread is not None and not logs._thread.is_alive()


# ---- one-click sign-in ------------------------------------------------------------------------------
DEMO_ACCOUNTS = [{"email": "dev@acme.test", "password": "correct-horse-battery", "name": "Dana Developer",
                  "roles": "developer in staging"}]


def _buttons(page: str) -> list[dict[str, str]]:
    forms = re.findall(r'<form method="post" action="/login">(.*?)</form>', page, re.S)
    out = []
    for f in forms:
        fields = {k: html.unescape(v) for k, v in re.findall(r'name="([a-z_]+)" value="([^"]*)"', f)}
        if "password" in fields:
            out.append(fields)
    return out


def test_login_page_has_no_demo_buttons_outside_the_demo(client: Any) -> None:
    page = client.get("/login").get_data(as_text=True)
    assert "one click" not in page and _buttons(page) == []


@pytest.fixture
def demo_environ(environ: dict[str, str]) -> dict[str, str]:
    return {**environ, "VALETKEY_DEMO_LOGINS": json.dumps(DEMO_ACCOUNTS)}


def test_demo_buttons_post_the_demo_credentials_with_csrf(demo_environ: dict[str, str]) -> None:
    from scope.settings import Settings
    from web import create_app
    from wiring.runtime import Runtime

    rt = Runtime.from_settings(Settings.from_env(demo_environ))
    try:
        rt.users.add_user("dev@acme.test", "Dana", "correct-horse-battery")
        client = create_app({"TESTING": True}, runtime=rt).test_client()
        page = client.get("/login").get_data(as_text=True)
        [button] = _buttons(page)
        assert "Dana Developer" in page and "developer in staging" in page
        assert button["email"] == "dev@acme.test" and button["csrf_token"]
        r = client.post("/login", data=button)
        assert r.status_code == 302
        assert client.get("/api/v1/environments").status_code == 200
        # The button is the ordinary login form: without its CSRF token it is refused.
        other = create_app({"TESTING": True}, runtime=rt).test_client()
        other.get("/login")
        refused = other.post("/login", data={k: v for k, v in button.items() if k != "csrf_token"})
        assert refused.status_code in (400, 403)
    finally:
        rt.close()


def test_demo_logins_are_what_the_demo_prints() -> None:
    rows = json.loads(demo.demo_logins({a.email: f"pw-{a.email}" for a in demo.ACCOUNTS}))
    assert [r["email"] for r in rows] == [a.email for a in demo.ACCOUNTS]
    assert all(r["password"] == f"pw-{r['email']}" for r in rows)


# ---- small helpers of the command ---------------------------------------------------------------
def test_redis_url_helpers_keep_credentials_but_never_print_them() -> None:
    url = "redis://:s3cret-pass@cache.internal:6380/3"
    assert demo.redis_db(url) == 3 and demo.redis_db("redis://localhost") == 0
    assert demo.with_db(url, 5) == "redis://:s3cret-pass@cache.internal:6380/5"
    assert demo.where(url) == "cache.internal:6380 db 3"
    assert "s3cret" not in demo.where(url)
    assert demo.redis_db(demo.with_db("unix:///run/redis.sock?db=2", 4)) == 4


def test_check_port_refuses_a_taken_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(ValetKeyError, match="already in use"):
            demo.check_port(s.getsockname()[1])
    with pytest.raises(ValetKeyError, match="between 1 and 65535"):
        demo.check_port(70000)


# ---- the whole command ------------------------------------------------------------------------
def _redis_answers(url: str) -> bool:
    try:
        return bool(redis_lib.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis_lib.RedisError:
        return False


ROOT = Path(__file__).resolve().parent.parent


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VALETKEY_", "AWS_"))}
    # The code under test, not whatever checkout the interpreter has installed: the demo runs in tmp_path.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class DemoProcess:
    def __init__(self, tmp: Path, env: dict[str, str], port: int) -> None:
        self.port, self.base = port, f"http://127.0.0.1:{port}"
        self.out, self.err = tmp / "demo.out", tmp / "demo.err"
        self.proc = subprocess.Popen([sys.executable, "-m", "valetkey.cli", "demo", "--port", str(port)],
                                     cwd=tmp, env=env, stdout=self.out.open("wb"), stderr=self.err.open("wb"),
                                     stdin=subprocess.DEVNULL)

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_ready(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if "Press Ctrl-C to stop." in self.text():
                return self.text()
            if self.proc.poll() is not None:
                pytest.fail(f"demo exited with {self.proc.returncode} before it was ready:\n{self.text()}\n"
                            f"{self.err.read_text(errors='replace')[-3000:]}")
            time.sleep(0.25)
        pytest.fail(f"demo not ready within {START_TIMEOUT}s:\n{self.text()}")

    def passwords(self) -> dict[str, str]:
        return dict(re.findall(r"^\s+(\S+@demo\.test)\s+(demo-\S+)\s", self.text(), re.M))

    def stop(self, sig: int) -> tuple[int, list[int]]:
        """Send sig; returns the exit code and the descendants still alive afterwards."""
        kids = _descendants(self.proc.pid) if Path("/proc").is_dir() else []
        assert kids, "the demo should have child processes"
        self.proc.send_signal(sig)
        rc = self.proc.wait(STOP_TIMEOUT)
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in kids) and time.monotonic() < deadline:
            time.sleep(0.1)
        return rc, [p for p in kids if _alive(p)]

    def kill(self) -> None:
        """After a failed test: a clean stop if the demo still manages one, else SIGKILL for all of it."""
        if self.proc.poll() is not None:
            return
        kids = _descendants(self.proc.pid) if Path("/proc").is_dir() else []
        self.proc.terminate()
        try:
            self.proc.wait(STOP_TIMEOUT)
            return
        except subprocess.TimeoutExpired:
            pass
        for p in kids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def demo_proc(tmp_path: Path) -> Iterator[Callable[..., DemoProcess]]:
    started: list[DemoProcess] = []

    def start(**env: str) -> DemoProcess:
        d = DemoProcess(tmp_path, _clean_env(**env), free_port())
        started.append(d)
        return d

    yield start
    for d in started:
        d.kill()


def grab(pattern: str, text: str) -> str:
    m = re.search(pattern, text, re.M)
    assert m, f"{pattern!r} not in the demo's output:\n{text}"
    return m.group(1)


def login(base: str, email: str, password: str) -> tuple[requests.Session, requests.Response]:
    s = requests.Session()
    page = s.get(f"{base}/login", timeout=10)
    token = re.search(r'name="csrf_token"\s+value="([^"]+)"', page.text)
    assert token, page.text[:500]
    r = s.post(f"{base}/login", data={"email": email, "password": password, "next": "/",
                                      "csrf_token": token.group(1)}, allow_redirects=False, timeout=10)
    return s, r


def wait_job(base: str, url: str, token: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = requests.get(f"{base}{url}", headers={"Authorization": f"Bearer {token}"},
                                            timeout=10).json()
        if body["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return body
        time.sleep(1)


@pytest.fixture
def sentinel_redis(tmp_path: Path) -> Iterator[str]:
    """A Redis that belongs to "the user": the demo is pointed at it and must not write a key into it."""
    exe = shutil.which("redis-server")
    assert exe
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not _redis_answers(url):
        assert time.monotonic() < deadline, "the sentinel redis-server did not start"
        time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(10)


def _keys_everywhere(url: str) -> dict[str, int]:
    info = redis_lib.Redis.from_url(url).info("keyspace")
    return {db: int(v["keys"]) for db, v in info.items()}


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server on PATH")
def test_demo_runs_the_whole_system_and_stops_on_sigint(demo_proc: Callable[..., DemoProcess],
                                                        sentinel_redis: str) -> None:
    d = demo_proc(VALETKEY_REDIS_URL=sentinel_redis)
    out = d.wait_ready()
    assert f"Valet Key demo is ready: {d.base}" in out
    pw = d.passwords()
    assert set(pw) == {"dev@demo.test", "ops@demo.test", "viewer@demo.test", "auditor@demo.test", "admin@demo.test"}
    assert all(len(p) >= 12 for p in pw.values())
    workdir = Path(grab(r"^Files \(environments.toml, demo.db, \*\.log\): (\S+)$", out))
    assert (workdir / "demo.db").exists() and (workdir / "environments.toml").exists()
    assert requests.get(f"{d.base}/healthz", timeout=5).status_code == 200

    # Its own Redis: a private redis-server on another port holds the demo's keys.
    own_port = int(grab(r"started redis-server on 127\.0\.0\.1:(\d+)", out))
    assert own_port not in (6379, int(sentinel_redis.rsplit(":", 1)[1].split("/")[0]))
    own = f"redis://127.0.0.1:{own_port}/0"
    assert len(list(redis_lib.Redis(port=own_port, db=1).scan_iter("session:*"))) == 40  # staging's target
    assert requests.get(f"{d.base}/readyz", timeout=5).status_code == 200

    # One-click sign-in: the login page's buttons post the demo credentials through the real form.
    s = requests.Session()
    page = s.get(f"{d.base}/login", timeout=10).text
    buttons = {b["email"]: b for b in _buttons(page)}
    assert set(buttons) == set(pw) and buttons["ops@demo.test"]["password"] == pw["ops@demo.test"]
    r = s.post(f"{d.base}/login", data=buttons["ops@demo.test"], allow_redirects=False, timeout=10)
    assert r.status_code in (302, 303), r.text[:300]
    assert [e["name"] for e in s.get(f"{d.base}/api/v1/environments", timeout=10).json()["environments"]] == ["staging"]

    # A wrong password is refused; the right one signs in; prod does not exist for a developer.
    _, bad = login(d.base, "dev@demo.test", "not-the-password")
    assert bad.status_code == 401
    dev, r = login(d.base, "dev@demo.test", pw["dev@demo.test"])
    assert r.status_code in (302, 303), r.text[:300]
    envs = dev.get(f"{d.base}/api/v1/environments", timeout=10).json()["environments"]
    assert sorted(e["name"] for e in envs) == ["qa-eu", "staging"]
    admin, _ = login(d.base, "admin@demo.test", pw["admin@demo.test"])
    prod = [e for e in admin.get(f"{d.base}/api/v1/environments", timeout=10).json()["environments"]
            if e["name"] == "prod"]
    assert len(prod) == 1 and prod[0]["enabled"] is False

    token = grab(r"^\s+dev@demo\.test\s+(vk_\S+)$", out)
    auth = {"Authorization": f"Bearer {token}"}
    moto_url = grab(r"AWS stand-in \(moto\): (\S+)", out)
    moto_ecs = boto3.client("ecs", endpoint_url=moto_url, region_name="us-east-1",
                            aws_access_key_id="demo", aws_secret_access_key="demo")

    # The simulated scheduler brings the services up in real seconds, not at once.
    deadline = time.monotonic() + UP_TIMEOUT
    while len(before := in_group(running("staging", client=moto_ecs), "orders-api")) < 2:
        assert time.monotonic() < deadline, "orders-api never ran its 2 tasks"
        time.sleep(1)

    # The crash-looping service: a redeploy fails, and says why.
    crash = requests.post(f"{d.base}/api/v1/environments/staging/services/pdf-renderer/redeploy",
                          headers=auth, timeout=10)
    assert crash.status_code == 202, crash.text
    # A one-off task that exits 2: the job fails with the exit code and the reason.
    task = requests.post(f"{d.base}/api/v1/environments/staging/tasks", headers=auth,
                         json={"task_definition": "staging-backfill-invoices"}, timeout=10)
    assert task.status_code == 202, task.text

    # Until the first deployment is COMPLETED a restart is refused ("a deployment is in progress"):
    # wait for the dry run's plan to have nothing blocking it, as a person would.
    plan_url = f"{d.base}/api/v1/environments/staging/services/orders-api/restart"
    while (plan := requests.post(plan_url, headers=auth, json={"dry_run": True}, timeout=10).json())["blocked"]:
        assert time.monotonic() < deadline, f"orders-api never became restartable: {plan['blocked']}"
        time.sleep(1)

    # A restart goes web -> worker -> simulated ECS; replacements take real seconds to come up.
    t0 = time.monotonic()
    job = requests.post(f"{d.base}/api/v1/environments/staging/services/orders-api/restart", headers=auth, timeout=10)
    assert job.status_code == 202, job.text
    body = wait_job(d.base, job.json()["url"], token, 240)
    assert body["status"] == "succeeded", body["detail"]
    assert "HEALTHY after" in body["detail"], body
    deadline = time.monotonic() + 90
    while True:
        after = in_group(running("staging", client=moto_ecs), "orders-api")
        if len(after) == 2 and not set(after) & set(before):
            break
        assert time.monotonic() < deadline, (before, after)
        time.sleep(1)
    assert time.monotonic() - t0 >= 10  # tens of seconds, as on Fargate; never instant
    # ... and the new tasks' CloudWatch streams got their lines (Logs works for them).
    deadline = time.monotonic() + 15
    while not all(messages("/ecs/staging-orders-api", stream_prefix=demo_seed.stream_of(a), endpoint=moto_url)
                  for a in after):
        assert time.monotonic() < deadline, "no log lines for the replacement tasks"
        time.sleep(1)

    tbody = wait_job(d.base, task.json()["url"], token, 120)
    assert tbody["status"] == "failed" and "exit 2" in tbody["detail"], tbody
    cbody = wait_job(d.base, crash.json()["url"], token, 300)
    assert cbody["status"] == "failed", cbody
    # Explained either way: rolled back by the circuit breaker, or (while its first deployment is
    # still failing to start tasks) refused with nothing changed because that deployment is in progress.
    assert "circuit breaker" in cbody["detail"] or "is in progress" in cbody["detail"], cbody["detail"]

    kids = _descendants(d.proc.pid)
    rc, left = d.stop(signal.SIGINT)
    assert rc == 0, d.err.read_text(errors="replace")[-2000:]
    assert left == []
    assert "Traceback" not in d.err.read_text(errors="replace")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{d.base}/healthz", timeout=2)
    assert not workdir.exists()
    assert not _redis_answers(own)  # its own Redis stopped with it
    assert kids
    # The Redis it was pointed at (VALETKEY_REDIS_URL) was never written to.
    assert _keys_everywhere(sentinel_redis) == {}


def test_demo_refuses_a_taken_port_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "valetkey.cli", "demo", "--port", str(port)], cwd=tmp_path,
                           env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip() == f"valetkey: port {port} is already in use; choose another with --port"


def test_demo_without_redis_server_says_how_to_install_it(tmp_path: Path) -> None:
    workdirs = set(Path(tempfile.gettempdir()).glob("valetkey-demo-*"))
    empty = tmp_path / "bin"
    empty.mkdir()
    # Even with a Redis answering at VALETKEY_REDIS_URL the demo wants its own.
    r = subprocess.run([sys.executable, "-m", "valetkey.cli", "demo", "--port", str(free_port())], cwd=tmp_path,
                       env=_clean_env(PATH=str(empty), VALETKEY_REDIS_URL="redis://127.0.0.1:6379/0"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "redis-server is not on PATH" in lines[0]
    assert "apt-get install redis-server" in lines[0] and "brew install redis" in lines[0]
    assert set(Path(tempfile.gettempdir()).glob("valetkey-demo-*")) <= workdirs  # nothing left behind
