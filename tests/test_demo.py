"""``valetkey demo``: its seeding and moto-animating parts against a moto server, and the whole
command as a subprocess (start, log in, act, stop on SIGINT/SIGTERM, nothing left behind)."""
from __future__ import annotations

import datetime as dt
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
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import boto3
import pytest
import redis as redis_lib
import requests

from scope.catalog import load_catalog
from scope.errors import ValetKeyError
from scope.schedule_windows import parse_schedule
from tests.conftest import free_port
from valetkey import demo, demo_seed

DEMO_REDIS_URL = "redis://127.0.0.1:6379/11"
START_TIMEOUT = 120.0  # generous: a cold start imports moto, boto3, Flask and gunicorn
STOP_TIMEOUT = 25.0


# ---- helpers --------------------------------------------------------------------------------
def ecs(region: str = "us-east-1") -> Any:
    return boto3.client("ecs", region_name=region)


def running(cluster: str, region: str = "us-east-1", client: Any = None) -> list[dict[str, Any]]:
    c = client or ecs(region)
    arns = c.list_tasks(cluster=cluster, desiredStatus="RUNNING")["taskArns"]
    if not arns:
        return []
    return [t for t in c.describe_tasks(cluster=cluster, tasks=arns)["tasks"] if t["lastStatus"] == "RUNNING"]


def in_group(tasks: list[dict[str, Any]], service: str) -> list[str]:
    return sorted(t["taskArn"] for t in tasks if t["group"] == f"service:{service}")


def messages(group: str, region: str = "us-east-1", stream_prefix: str | None = None) -> list[str]:
    kw = {"logStreamNamePrefix": stream_prefix} if stream_prefix else {}
    events = boto3.client("logs", region_name=region).filter_log_events(logGroupName=group, **kw)["events"]
    return [e["message"] for e in events]


@pytest.fixture
def pinned(aws: str) -> Iterator[str]:
    """moto with task states pinned as the demo pins them; unpinned afterwards (moto's state is global)."""
    demo_seed.keep_tasks_in_state(aws)
    yield aws
    req = urllib.request.Request(f"{aws}/moto-api/state-manager/unset-transition", method="POST",
                                 data=json.dumps({"model_name": "ecs::task"}).encode())
    urllib.request.urlopen(req, timeout=10).read()


@pytest.fixture
def seeded(pinned: str) -> list[demo_seed.SeededEnvironment]:
    return demo_seed.seed_aws(pinned)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- seeding ------------------------------------------------------------------------------
def test_seed_creates_services_with_running_tasks_and_awslogs(seeded: list[demo_seed.SeededEnvironment]) -> None:
    assert [s.spec.name for s in seeded] == ["staging", "qa-eu", "prod"]
    for s in seeded:
        c = ecs(s.spec.region)
        tasks = running(s.spec.cluster, s.spec.region)
        svcs = c.describe_services(cluster=s.spec.cluster, services=[v.name for v in s.spec.services])["services"]
        for svc, spec in zip(svcs, s.spec.services):
            # desired, moto's runningCount and the RUNNING tasks in the group all agree
            assert (svc["desiredCount"], svc["runningCount"]) == (spec.desired, spec.desired)
            assert len(in_group(tasks, spec.name)) == spec.desired
            td = c.describe_task_definition(taskDefinition=svc["taskDefinition"])["taskDefinition"]
            opts = td["containerDefinitions"][0]["logConfiguration"]
            assert opts["logDriver"] == "awslogs"
            assert opts["options"]["awslogs-group"] == f"/ecs/{s.spec.name}-{spec.name}"
        for fam in s.spec.run_task_families:
            assert c.describe_task_definition(taskDefinition=fam)["taskDefinition"]["family"] == fam


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


# ---- the animator -----------------------------------------------------------------------------
def test_pinned_tasks_stay_running_when_described(seeded: list[demo_seed.SeededEnvironment]) -> None:
    before = in_group(running("staging"), "orders-api")
    for _ in range(3):
        assert in_group(running("staging"), "orders-api") == before


def test_animator_replaces_stopped_service_tasks(aws: str, seeded: list[demo_seed.SeededEnvironment]) -> None:
    anim = demo_seed.MotoAnimator(aws, seeded[:1])
    anim.tick()  # first pass only learns the deployments
    old = in_group(running("staging"), "orders-api")
    ecs().stop_task(cluster="staging", task=old[0], reason="restart")
    assert len(in_group(running("staging"), "orders-api")) == 1
    anim.tick()
    now = in_group(running("staging"), "orders-api")
    assert len(now) == 2 and old[0] not in now and old[1] in now
    new = next(a for a in now if a not in old)
    started = messages("/ecs/staging-orders-api", stream_prefix=demo_seed.stream_of(new))
    assert any("listening" in m for m in started)  # a replacement logs its start-up


def test_animator_follows_desired_count_down_and_up(aws: str, seeded: list[demo_seed.SeededEnvironment]) -> None:
    anim = demo_seed.MotoAnimator(aws, seeded[:1])
    ecs().update_service(cluster="staging", service="payments-api", desiredCount=0)
    anim.tick()
    assert in_group(running("staging"), "payments-api") == []
    ecs().update_service(cluster="staging", service="payments-api", desiredCount=3)
    anim.tick()
    assert len(in_group(running("staging"), "payments-api")) == 3


def test_animator_rolls_tasks_on_a_new_deployment(aws: str, seeded: list[demo_seed.SeededEnvironment]) -> None:
    anim = demo_seed.MotoAnimator(aws, seeded[:1])
    anim.tick()
    old = in_group(running("staging"), "web-frontend")
    ecs().update_service(cluster="staging", service="web-frontend", forceNewDeployment=True)
    anim.tick()
    new = in_group(running("staging"), "web-frontend")
    assert len(new) == 2 and not set(new) & set(old)
    stopped = ecs().describe_tasks(cluster="staging", tasks=old)["tasks"]
    assert {t["lastStatus"] for t in stopped} == {"STOPPED"}
    assert all("replaced" in t["stoppedReason"] for t in stopped)


def test_animator_lets_one_off_tasks_exit_zero_after_a_while(aws: str, seeded: list[demo_seed.SeededEnvironment]) -> None:
    clock = FakeClock()
    anim = demo_seed.MotoAnimator(aws, seeded[:1], clock=clock, one_off_seconds=8)
    s = seeded[0]
    arn = ecs().run_task(cluster="staging", taskDefinition="staging-orders-migrate", launchType="FARGATE",
                         networkConfiguration=s.network, startedBy="valetkey/job1")["tasks"][0]["taskArn"]
    anim.tick()
    clock.now += 7
    anim.tick()
    task = ecs().describe_tasks(cluster="staging", tasks=[arn])["tasks"][0]
    assert task["lastStatus"] == "RUNNING"  # still "running" its migrations
    clock.now += 2
    anim.tick()
    task = ecs().describe_tasks(cluster="staging", tasks=[arn])["tasks"][0]
    assert task["lastStatus"] == "STOPPED"
    assert task["containers"][0]["exitCode"] == 0
    assert task["stoppedReason"] == "Essential container in task exited"
    lines = messages("/ecs/staging-orders-migrate", stream_prefix=demo_seed.stream_of(arn))
    assert lines[0] == "INFO  migrate: connecting to the database" and "applied" in lines[-1]
    # service tasks were left alone meanwhile
    assert len(in_group(running("staging"), "orders-api")) == 2


def test_animator_appends_fresh_log_lines(aws: str, seeded: list[demo_seed.SeededEnvironment]) -> None:
    clock = FakeClock()
    anim = demo_seed.MotoAnimator(aws, seeded[:2], clock=clock, log_every=3)
    since = int(time.time() * 1000)

    def fresh() -> int:
        n = 0
        for s in seeded[:2]:
            lg = boto3.client("logs", region_name=s.spec.region)
            for svc in s.spec.services:
                n += len(lg.filter_log_events(logGroupName=f"/ecs/{s.spec.name}-{svc.name}",
                                              startTime=since)["events"])
        return n

    anim.tick()
    first = fresh()
    assert first >= 1
    anim.tick()  # within log_every: nothing new
    assert fresh() == first
    clock.now += 3
    anim.tick()
    assert fresh() > first


def test_animator_survives_a_broken_endpoint() -> None:
    anim = demo_seed.MotoAnimator(f"http://127.0.0.1:{free_port()}", [], interval=0.01)
    anim.start()
    anim.stop()  # nothing to do, nothing raised, the thread ends
    assert anim._thread is not None and not anim._thread.is_alive()


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


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VALETKEY_", "AWS_"))}
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


@pytest.mark.skipif(not _redis_answers(DEMO_REDIS_URL) and not shutil.which("redis-server"),
                    reason="needs a Redis at 127.0.0.1:6379 or redis-server on PATH")
def test_demo_runs_the_whole_system_and_stops_on_sigint(demo_proc: Callable[..., DemoProcess]) -> None:
    if _redis_answers(DEMO_REDIS_URL):
        # Two demos on one Redis database take each other's job messages: a concurrent
        # run of this test (another checkout, another engineer) waits for this one.
        r = redis_lib.Redis.from_url(DEMO_REDIS_URL)
        lock = r.lock("test-demo:lock", timeout=START_TIMEOUT + 180, blocking_timeout=START_TIMEOUT + 240)
        assert lock.acquire(), "another run of this test held the demo's Redis database too long"
        d = demo_proc(VALETKEY_REDIS_URL=DEMO_REDIS_URL)
        try:
            _whole_system(d)
        finally:
            d.kill()  # before the next run may start
            lock.release()
    else:
        _whole_system(demo_proc(VALETKEY_REDIS_URL=DEMO_REDIS_URL))


def _whole_system(d: DemoProcess) -> None:
    out = d.wait_ready()
    assert f"Valet Key demo is ready: {d.base}" in out
    pw = d.passwords()
    assert set(pw) == {"dev@demo.test", "ops@demo.test", "viewer@demo.test", "auditor@demo.test", "admin@demo.test"}
    assert all(len(p) >= 12 for p in pw.values())
    workdir = Path(grab(r"^Files \(environments.toml, demo.db, \*\.log\): (\S+)$", out))
    assert (workdir / "demo.db").exists() and (workdir / "environments.toml").exists()
    assert requests.get(f"{d.base}/healthz", timeout=5).status_code == 200

    # a wrong password is refused; the right one signs in
    _, bad = login(d.base, "dev@demo.test", "not-the-password")
    assert bad.status_code == 401
    dev, r = login(d.base, "dev@demo.test", pw["dev@demo.test"])
    assert r.status_code in (302, 303), r.text[:300]
    envs = dev.get(f"{d.base}/api/v1/environments", timeout=10).json()["environments"]
    assert sorted(e["name"] for e in envs) == ["qa-eu", "staging"]  # prod does not exist for a developer
    admin, _ = login(d.base, "admin@demo.test", pw["admin@demo.test"])
    prod = [e for e in admin.get(f"{d.base}/api/v1/environments", timeout=10).json()["environments"]
            if e["name"] == "prod"]
    assert len(prod) == 1 and prod[0]["enabled"] is False
    staging = dev.get(f"{d.base}/api/v1/environments/staging", timeout=10).json()
    assert {s["name"] for s in staging["services"]} >= {"orders-api", "payments-api"}

    # a restart goes through web -> worker -> moto, and the demo brings the tasks back afterwards
    token = grab(r"^\s+dev@demo\.test\s+(vk_\S+)$", out)
    moto_url = grab(r"AWS stand-in \(moto\): (\S+)", out)
    moto_ecs = boto3.client("ecs", endpoint_url=moto_url, region_name="us-east-1",
                            aws_access_key_id="demo", aws_secret_access_key="demo")
    before = in_group(running("staging", client=moto_ecs), "orders-api")
    assert len(before) == 2
    job = requests.post(f"{d.base}/api/v1/environments/staging/services/orders-api/restart",
                        headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert job.status_code == 202, job.text
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = requests.get(f"{d.base}{job.json()['url']}", headers={"Authorization": f"Bearer {token}"},
                            timeout=10).json()
        if body["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.5)
    assert body["status"] == "succeeded", body
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        after = in_group(running("staging", client=moto_ecs), "orders-api")
        if len(after) == 2:
            break
        time.sleep(0.5)
    assert len(after) == 2 and not set(after) & set(before)

    rc, left = d.stop(signal.SIGINT)
    assert rc == 0, d.err.read_text(errors="replace")[-2000:]
    assert left == []
    assert "Traceback" not in d.err.read_text(errors="replace")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{d.base}/healthz", timeout=2)
    assert not workdir.exists()


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server on PATH")
def test_demo_starts_its_own_redis_when_none_answers_and_stops_it_on_sigterm(
        demo_proc: Callable[..., DemoProcess]) -> None:
    d = demo_proc(VALETKEY_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    out = d.wait_ready()
    port = int(grab(r"started redis-server on 127\.0\.0\.1:(\d+)", out))
    own, target = f"redis://127.0.0.1:{port}/0", redis_lib.Redis(port=port, db=1)
    assert len(list(target.scan_iter("session:*"))) == 40  # the staging target holds demo keys
    assert requests.get(f"{d.base}/readyz", timeout=5).status_code == 200
    rc, left = d.stop(signal.SIGTERM)
    assert rc == 0
    assert left == []
    assert not _redis_answers(own)


def test_demo_refuses_a_taken_port_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "valetkey.cli", "demo", "--port", str(port)], cwd=tmp_path,
                           env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip() == f"valetkey: port {port} is already in use; choose another with --port"


def test_demo_without_any_redis_says_how_to_install_one(tmp_path: Path) -> None:
    workdirs = set(Path(tempfile.gettempdir()).glob("valetkey-demo-*"))
    empty = tmp_path / "bin"
    empty.mkdir()
    r = subprocess.run([sys.executable, "-m", "valetkey.cli", "demo", "--port", str(free_port())], cwd=tmp_path,
                       env=_clean_env(PATH=str(empty), VALETKEY_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "apt-get install redis-server" in lines[0] and "brew install redis" in lines[0]
    assert set(Path(tempfile.gettempdir()).glob("valetkey-demo-*")) <= workdirs  # nothing left behind
