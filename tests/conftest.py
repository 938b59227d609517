"""Test fixtures: real Redis, real SQLite and PostgreSQL, moto in server mode.

- ``db_url`` is parametrized: every test that touches the database runs on
  SQLite and on PostgreSQL (VALETKEY_TEST_POSTGRES_URL, default the local
  ``test`` database; each test session gets a schema of its own).
- Redis: a redis-server of the session's own on a free port (db 13 for Valet
  Key, db 14 the "target" Redis that flush tests clear), so that two runs on
  one machine never flush each other's data; VALETKEY_TEST_REDIS_URL and
  VALETKEY_TEST_TARGET_REDIS_URL point the tests at another server instead
  (without redis-server installed, db 13/14 of 127.0.0.1:6379).
- AWS: one moto server per session, reset before each test that asks for it.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import boto3
import pytest
import redis as redis_lib
import requests
from sqlalchemy import create_engine, text

from scope.db import make_engine
from scope.migrate import upgrade
from scope.settings import Settings
from wiring.runtime import Runtime

# Set by the session's redis_server fixture unless given; read at call time, never imported.
REDIS_URL = os.environ.get("VALETKEY_TEST_REDIS_URL", "")
TARGET_REDIS_URL = os.environ.get("VALETKEY_TEST_TARGET_REDIS_URL", "")
POSTGRES_URL = os.environ.get("VALETKEY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REGION = "us-east-1"
ACCOUNT = "123456789012"
PASSWORD = "a long enough test password"
SECRET_VALUE = "sk_live_TEST_SECRET_VALUE_9x"

BASE_TOML = """
[environments.staging]
class = "staging"
region = "us-east-1"
cluster = "stg"
run_tasks = ["staging-migrate"]
webhook_secret_env = "STAGING_WEBHOOK_SECRET"

[environments.staging.redis.cache]
url_env = "STAGING_CACHE_REDIS_URL"
max_keys = 100

[environments.qa]
region = "us-east-1"
cluster = "qa"

[environments.prod]
class = "prod"
region = "us-east-1"
cluster = "prod"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- AWS (moto server) ----------------------------------------------------------
@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    mp = pytest.MonkeyPatch()
    mp.setenv("AWS_ENDPOINT_URL", url)
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_DEFAULT_REGION", REGION)
    mp.setenv("MOTO_ECS_SERVICE_RUNNING", "2")
    yield url
    mp.undo()
    server.stop()


@pytest.fixture
def aws(moto_url: str) -> str:
    """A clean moto: every test starts from an empty account."""
    from cloud.ecs import EcsReader

    requests.post(f"{moto_url}/moto-api/reset", timeout=60)  # generous: a loaded machine is slow
    # Task definitions are cached per process as immutable, but each test's fresh moto reuses the
    # same ARNs (stg-web:1) for other definitions: a reset account empties the cache too.
    EcsReader._td_cache.clear()
    return moto_url


@pytest.fixture
def steady_tasks(aws: str) -> str:
    """Keep moto's tasks where they are: by default each DescribeTasks call advances a task
    one state (RUNNING -> DEACTIVATING -> ... -> STOPPED), which mimics one-off tasks but
    not a service's long-running ones."""
    requests.post(f"{aws}/moto-api/state-manager/set-transition", timeout=10, json={
        "model_name": "ecs::task", "transition": {"progression": "manual", "times": 1_000_000}})
    yield aws
    requests.post(f"{aws}/moto-api/state-manager/unset-transition", timeout=10, json={"model_name": "ecs::task"})


@pytest.fixture
def sim(aws: str) -> Iterator[Any]:
    """The session's moto with ecssim installed on a FakeClock (ECS as it really behaves; tests/sim/)."""
    import ecssim
    from cloud.ecs import EcsReader
    from ecssim import FakeClock, Simulator, Timings

    # Task definitions are cached per process as immutable, but every test's moto reuses the
    # same ARNs (stg-web:1) for different definitions.
    EcsReader._td_cache.clear()
    simulator = ecssim.install(Simulator(clock=FakeClock(), timings=Timings.fast(), seed=7))
    try:
        yield simulator
    finally:
        ecssim.uninstall()


@pytest.fixture
def realtime_sim(aws: str) -> Iterator[Any]:
    """ECS as it behaves, in real time (fast timings), for workers in threads or other processes: they
    reach the moto server in this process, where the simulator runs with a ticker."""
    import ecssim
    from cloud.ecs import EcsReader
    from ecssim import RealClock, Simulator, Throttler, Timings

    EcsReader._td_cache.clear()
    simulator = ecssim.install(Simulator(clock=RealClock(), timings=Timings.fast(), seed=3,
                                         throttler=Throttler(enabled=False)))
    simulator.start_ticker(0.2)
    try:
        yield simulator
    finally:
        ecssim.uninstall()


def boto(service: str) -> Any:
    return boto3.client(service, region_name=REGION)


def seed_cluster(cluster: str, services: list[str], family_prefix: str | None = None,
                 running: int = 2, extra_families: tuple[str, ...] = ()) -> dict[str, Any]:
    """A cluster with services (each with RUNNING tasks in its group) in moto; returns ids."""
    ecs, ec2 = boto("ecs"), boto("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24")["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(GroupName=f"sg-{cluster}", Description="t", VpcId=vpc)["GroupId"]
    net = {"awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [sg]}}
    ecs.create_cluster(clusterName=cluster)
    prefix = family_prefix or cluster
    for fam in [f"{prefix}-{s}" for s in services] + list(extra_families):
        ecs.register_task_definition(
            family=fam, networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
            taskRoleArn=f"arn:aws:iam::{ACCOUNT}:role/{fam}-task",
            executionRoleArn=f"arn:aws:iam::{ACCOUNT}:role/ecsTaskExecutionRole",
            containerDefinitions=[{
                "name": "app", "essential": True, "memory": 512, "cpu": 256,
                "image": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{fam}:latest",
                "environment": [{"name": "API_KEY", "value": SECRET_VALUE}],
                "secrets": [{"name": "DB_PASSWORD", "valueFrom": "arn:aws:secretsmanager:us-east-1:1:secret:x"}],
                "logConfiguration": {"logDriver": "awslogs", "options": {
                    "awslogs-group": f"/ecs/{fam}", "awslogs-region": REGION, "awslogs-stream-prefix": "app"}},
            }])
    for svc in services:
        ecs.create_service(cluster=cluster, serviceName=svc, taskDefinition=f"{prefix}-{svc}", desiredCount=2,
                           launchType="FARGATE", networkConfiguration=net)
        if running:
            ecs.run_task(cluster=cluster, taskDefinition=f"{prefix}-{svc}", count=running, launchType="FARGATE",
                         networkConfiguration=net, group=f"service:{svc}", startedBy="ecs-svc/1")
    return {"subnet": subnet, "sg": sg, "vpc": vpc}


# ---- Redis ----------------------------------------------------------------------
@pytest.fixture(scope="session", autouse=True)
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Start this session's own redis-server unless both URLs were given."""
    global REDIS_URL, TARGET_REDIS_URL
    binary = shutil.which("redis-server")
    if (REDIS_URL and TARGET_REDIS_URL) or binary is None:
        REDIS_URL = REDIS_URL or "redis://127.0.0.1:6379/13"
        TARGET_REDIS_URL = TARGET_REDIS_URL or "redis://127.0.0.1:6379/14"
        yield
        return
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path_factory.mktemp("redis"))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"redis://127.0.0.1:{port}"
    probe = redis_lib.Redis.from_url(base)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                probe.ping()
                if proc.poll() is not None:  # it exited: whatever answers on that port is not ours
                    raise RuntimeError(f"the tests' redis-server exited; port {port} belongs to another server")
                break
            except redis_lib.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the tests' redis-server did not start on port {port}") from None
                time.sleep(0.05)
        REDIS_URL = REDIS_URL or f"{base}/13"
        TARGET_REDIS_URL = TARGET_REDIS_URL or f"{base}/14"
        yield
    finally:
        probe.close()
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def redis_url() -> str:
    r = redis_lib.Redis.from_url(REDIS_URL)
    r.flushdb()
    r.close()
    return REDIS_URL


@pytest.fixture
def target_redis() -> Iterator[redis_lib.Redis]:
    r = redis_lib.Redis.from_url(TARGET_REDIS_URL)
    r.flushdb()
    yield r
    r.flushdb()
    r.close()


# ---- database -------------------------------------------------------------------
@pytest.fixture(scope="session")
def pg_schema_url() -> Iterator[str]:
    """A fresh PostgreSQL schema for this test session, migrated to head."""
    schema = f"t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with admin.begin() as c:
            c.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {e}")
    sep = "&" if "?" in POSTGRES_URL else "?"
    url = f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    with admin.begin() as c:
        c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def _tables() -> list[str]:
    """Every table the models declare, children first, but the audit head (reset, not emptied):
    derived, so a new table cannot be forgotten and leak rows from one PostgreSQL test into the next."""
    from scope.models import Base

    return [t.name for t in reversed(Base.metadata.sorted_tables) if t.name != "audit_head"]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'valetkey.db'}"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
        return
    url = request.getfixturevalue("pg_schema_url")
    yield url
    engine = make_engine(url)
    with engine.begin() as c:
        for t in _tables():
            c.execute(text(f"DELETE FROM {t}"))
        c.execute(text("UPDATE audit_head SET last_id = 0, hash = :h"), {"h": "0" * 64})
    engine.dispose()


# ---- runtime, app, client -----------------------------------------------------------
@pytest.fixture
def config_file(tmp_path: Path) -> Callable[[str], str]:
    def write(body: str = BASE_TOML) -> str:
        p = tmp_path / "environments.toml"
        p.write_text(body)
        return str(p)
    return write


@pytest.fixture
def environ(db_url: str, redis_url: str, config_file: Callable[[str], str]) -> dict[str, str]:
    return {
        "VALETKEY_DATABASE_URL": db_url,
        "VALETKEY_REDIS_URL": redis_url,
        "VALETKEY_ENVIRONMENTS": config_file(BASE_TOML),
        "VALETKEY_SECRET_KEY": "test-secret-key-0123456789",
        "VALETKEY_POLL_INTERVAL": "0.05",
        "VALETKEY_STABILITY_TIMEOUT": "5",
        "STAGING_CACHE_REDIS_URL": TARGET_REDIS_URL,
        "STAGING_WEBHOOK_SECRET": "whsec-test",
    }


@pytest.fixture
def rt(environ: dict[str, str]) -> Iterator[Runtime]:
    runtime = Runtime.from_settings(Settings.from_env(environ))
    yield runtime
    runtime.close()


@pytest.fixture
def app(rt: Runtime) -> Any:
    from web import create_app

    application = create_app({"TESTING": True}, runtime=rt)
    return application


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def make_user(rt: Runtime) -> Callable[..., dict[str, str]]:
    """make_user("a@x.test", ("staging", "developer"), ...) -> {"Authorization": "Bearer ..."}."""
    def make(email: str, *grants: tuple[str, str], password: str = PASSWORD) -> dict[str, str]:
        rt.users.add_user(email, email.split("@")[0].title(), password)
        for env, role in grants:
            rt.users.grant(email, env, role, rt.catalog)
        _, token = rt.users.create_token(email, "test")
        return {"Authorization": f"Bearer {token}"}
    return make


def audit_events(rt: Runtime) -> list[dict[str, Any]]:
    """Audit events appended to the stream so far (the exporter is not running in unit tests)."""
    from jobs.audit_stream import STREAM, AuditEvent

    return [AuditEvent.decode(f).__dict__ for _, f in rt.redis.xrange(STREAM)]
