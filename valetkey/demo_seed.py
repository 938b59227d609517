"""What ``valetkey demo`` puts into its stand-ins, and the thread that writes the services' log lines.

- the local AWS (moto with the ECS simulator ``ecssim`` installed): ECR images,
  clusters, task definitions with an ``awslogs`` configuration and a health
  check, services created with CreateService (the simulator's service
  scheduler starts and replaces their tasks, at Fargate-like speed), a target
  group, an Application Auto Scaling target, one-off task families, log groups
  with a few hours of realistic lines;
- the target Redis databases: keys a developer might want to flush;
- ``environments.toml`` describing all of it.

One staging service, ``pdf-renderer``, crash-loops on purpose: its image is
killed (exit 137) seconds after it starts, so the demo can show how a failure
is explained. ``staging-backfill-invoices`` exits 2.

The simulator plays ECS; nothing in it writes application output, so
``DemoLogs`` does: start-up lines when a task reaches RUNNING, steady traffic
on running service tasks, a crash or a one-off task's last lines when it
stops. This lives here only: the product code never special-cases the demo.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

import boto3
import redis
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from ecssim import Simulator

log = logging.getLogger("valetkey.demo")

ACCOUNT = "123456789012"  # moto's default account
CONTAINER = "app"
STREAM_PREFIX = "app"
CONTAINER_PORT = 8080
FAKE_CREDENTIALS = {"aws_access_key_id": "demo", "aws_secret_access_key": "demo"}
# Seeding and the log writer talk to a local moto: short timeouts, no long retry storms.
_CLIENT_CONFIG = Config(connect_timeout=3, read_timeout=15, retries={"max_attempts": 3, "mode": "standard"})


# ---- the demo's world --------------------------------------------------------------
@dataclass(frozen=True)
class DemoService:
    name: str
    desired: int = 2
    load_balancer: bool = False  # behind a target group: a replacement counts once its target is healthy
    crash_after: float | None = None  # the image is killed this long after RUNNING (a crash loop)
    exit_code: int = 137
    min_capacity: int | None = None  # an Application Auto Scaling target [min, max] when set
    max_capacity: int | None = None


@dataclass(frozen=True)
class OneOff:
    """How a one-off family behaves in the demo: it runs ``seconds`` and exits ``exit_code``."""

    seconds: float = 15.0
    exit_code: int = 0


@dataclass(frozen=True)
class DemoEnvironment:
    name: str
    cls: str
    enabled: bool
    region: str
    cluster: str
    cidr: str
    services: tuple[DemoService, ...]
    run_tasks: tuple[str, ...]  # allow-listed one-off families (without the environment prefix)
    other_families: tuple[str, ...] = ()  # registered but deliberately NOT allow-listed
    redis_env: str | None = None  # env var naming the target Redis URL (non-prod only)
    webhook_secret_env: str | None = None
    scheduled: bool = False
    description: str = ""
    one_offs: tuple[tuple[str, OneOff], ...] = ()  # behaviour per short family name (default: OneOff())

    def family(self, short: str) -> str:
        return f"{self.name}-{short}"

    @property
    def run_task_families(self) -> list[str]:
        return [self.family(t) for t in self.run_tasks]

    def one_off(self, short: str) -> OneOff:
        return dict(self.one_offs).get(short, OneOff())


ENVIRONMENTS: tuple[DemoEnvironment, ...] = (
    DemoEnvironment(
        name="staging", cls="staging", enabled=True, region="us-east-1", cluster="staging", cidr="10.10",
        services=(DemoService("orders-api", load_balancer=True), DemoService("payments-api"),
                  DemoService("web-frontend", min_capacity=1, max_capacity=4), DemoService("email-worker", 1),
                  DemoService("pdf-renderer", 2, crash_after=6.0)),
        run_tasks=("orders-migrate", "backfill-invoices"), other_families=("drop-tables",),
        redis_env="STAGING_CACHE_REDIS_URL", webhook_secret_env="STAGING_WEBHOOK_SECRET", scheduled=True,
        description="Shared staging of the shop (orders, payments, storefront)",
        one_offs=(("orders-migrate", OneOff(15, 0)), ("backfill-invoices", OneOff(12, 2)))),
    DemoEnvironment(
        name="qa-eu", cls="staging", enabled=True, region="eu-west-1", cluster="qa-eu", cidr="10.20",
        services=(DemoService("orders-api", 1), DemoService("search-api")),
        run_tasks=("orders-migrate", "reindex-search"),
        redis_env="QA_EU_CACHE_REDIS_URL", description="QA environment in Ireland",
        one_offs=(("reindex-search", OneOff(20, 0)),)),
    DemoEnvironment(
        name="prod", cls="prod", enabled=False, region="us-east-1", cluster="prod", cidr="10.30",
        services=(DemoService("orders-api", 3), DemoService("payments-api", 3)),
        run_tasks=("orders-migrate",), description="Production: visible to admins, every action refused"),
)


@dataclass
class SeededEnvironment:
    spec: DemoEnvironment
    subnets: list[str]
    security_groups: list[str]

    @property
    def network(self) -> dict[str, Any]:
        return {"awsvpcConfiguration": {"subnets": self.subnets, "securityGroups": self.security_groups,
                                        "assignPublicIp": "DISABLED"}}


def aws_client(endpoint: str, service: str, region: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint, region_name=region, config=_CLIENT_CONFIG,
                        **FAKE_CREDENTIALS)


def log_group(family: str) -> str:
    return f"/ecs/{family}"


def family_of(task_definition_arn: str) -> str:
    """arn:aws:ecs:...:task-definition/staging-orders-api:3 -> staging-orders-api"""
    return task_definition_arn.rsplit("/", 1)[-1].split(":", 1)[0]


def stream_of(task_arn: str) -> str:
    """The awslogs stream of a task: PREFIX/CONTAINER/TASK-ID."""
    return f"{STREAM_PREFIX}/{CONTAINER}/{task_arn.rsplit('/', 1)[-1]}"


def service_of(family: str, env: DemoEnvironment) -> str:
    return family[len(env.name) + 1:] if family.startswith(env.name + "-") else family


# ---- log lines -------------------------------------------------------------------------
_PATHS = {
    "orders-api": ["GET /api/orders/{order}", "POST /api/orders", "GET /api/orders?customer={cust}",
                   "PATCH /api/orders/{order}/status"],
    "payments-api": ["POST /v1/charges", "GET /v1/charges/ch_{hex}", "POST /v1/refunds",
                     "POST /v1/webhooks/psp"],
    "web-frontend": ["GET /", "GET /products/{sku}", "GET /cart", "GET /static/app.{hex}.js",
                     "POST /checkout"],
    "search-api": ["GET /search?q=shoes", "GET /search?q=red+jacket&page=2", "GET /suggest?q=bo",
                   "POST /index/products/{sku}"],
}
_WARNINGS = [
    "slow query {ms}ms: SELECT * FROM orders WHERE customer_id = $1 ORDER BY created_at DESC",
    "retrying upstream call (attempt 2 of 3) after 503",
    "connection pool at 90% (18/20 in use)",
    "request took {ms}ms, over the 1000ms budget",
]
_ERRORS = {
    "orders-api": ["payment gateway timeout after 5000ms order={order}",
                   "unhandled exception in POST /api/orders: KeyError: 'currency' order={order}",
                   "could not reserve stock for sku={sku}: deadlock detected"],
    "payments-api": ["upstream 502 from acquirer while capturing ch_{hex}",
                     "webhook signature mismatch from psp (delivery {hex})"],
    "web-frontend": ["render failed for /products/{sku}: 'price' is undefined",
                     "GET /api/orders/{order} returned 500 (upstream orders-api)"],
    "email-worker": ["SMTP 421 4.7.0 try again later; message {hex} will be retried",
                     "template order-shipped missing variable 'tracking_url'"],
    "search-api": ["search backend: circuit_breaking_exception [parent] data too large",
                   "reindex of sku={sku} failed: version conflict"],
}
_WORKER_INFO = ["sent order-confirmation ({hex}) in {ms}ms", "picked job send-receipt id={hex}",
                "queue depth 3, 2 workers busy", "sent password-reset ({hex}) in {ms}ms"]


def _fill(template: str, rng: random.Random) -> str:
    return template.format(order=f"A-{rng.randint(1000, 9999)}", cust=rng.randint(100, 999),
                           sku=f"SKU-{rng.randint(10000, 99999)}", hex=f"{rng.getrandbits(32):08x}",
                           ms=rng.randint(1100, 4800))


def log_line(service: str, rng: random.Random, error_rate: float = 0.04) -> str:
    """One plausible application log line; about ``error_rate`` of them are ERROR lines."""
    rid = f"{rng.getrandbits(32):08x}"
    roll = rng.random()
    if roll < error_rate:
        errors = _ERRORS.get(service, ["unhandled exception: ConnectionResetError: [Errno 104]"])
        return f"ERROR {service}: {_fill(rng.choice(errors), rng)} request_id={rid}"
    if roll < error_rate + 0.06:
        return f"WARN  {service}: {_fill(rng.choice(_WARNINGS), rng)} request_id={rid}"
    if service not in _PATHS:
        return f"INFO  {service}: {_fill(rng.choice(_WORKER_INFO), rng)}"
    status = rng.choices([200, 201, 204, 304, 404], weights=[70, 8, 4, 10, 8])[0]
    return f"INFO  {service}: {_fill(rng.choice(_PATHS[service]), rng)} {status} {rng.randint(2, 240)}ms " \
           f"request_id={rid}"


def startup_lines(service: str, image: str) -> list[str]:
    return [f"INFO  {service}: starting (image {image})",
            f"INFO  {service}: connected to database and cache",
            f"INFO  {service}: listening on 0.0.0.0:8080"]


def crash_lines(service: str, exit_code: int) -> list[str]:
    """What a crash-looping service prints before it dies."""
    if exit_code == 137:
        return [f"WARN  {service}: rendering batch of 40 invoices (heap 1890MiB of 2048MiB)",
                f"ERROR {service}: java.lang.OutOfMemoryError: Java heap space at PdfWriter.flush",
                f"ERROR {service}: container killed: exit code 137 (out of memory)"]
    return [f"ERROR {service}: fatal error at start-up; exiting with code {exit_code}"]


def one_off_lines(family: str, rng: random.Random, exit_code: int = 0) -> tuple[list[str], list[str]]:
    """(lines at start, lines at exit) of a one-off task that exits with ``exit_code``."""
    if exit_code != 0:
        return [f"INFO  {family}: started", f"INFO  {family}: processing invoices 2026-10-01..2026-10-31"], [
            f"ERROR {family}: invoice INV-{rng.randint(10000, 99999)} has no customer; aborting",
            f"ERROR {family}: exiting with code {exit_code}"]
    if "migrate" in family:
        n = rng.randint(1, 4)
        body = [f"INFO  migrate: applying 00{40 + i}_orders_{['index', 'currency', 'status', 'notes'][i]}"
                for i in range(n)]
        return ["INFO  migrate: connecting to the database", *body], [f"INFO  migrate: {n} migration(s) applied"]
    if "reindex" in family:
        return ["INFO  reindex: rebuilding index products-v7"], [
            f"INFO  reindex: {rng.randint(20000, 90000)} documents indexed; alias products -> products-v7"]
    return [f"INFO  {family}: started"], [f"INFO  {family}: {rng.randint(100, 5000)} rows processed; done"]


# ---- seeding ---------------------------------------------------------------------------
def _network(endpoint: str, env: DemoEnvironment) -> tuple[str, list[str], list[str]]:
    ec2 = aws_client(endpoint, "ec2", env.region)
    vpc = ec2.create_vpc(CidrBlock=f"{env.cidr}.0.0/16")["Vpc"]["VpcId"]
    # moto (like AWS) wants DNS hostnames on the VPC of an awsvpc task.
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    ec2.create_tags(Resources=[vpc], Tags=[{"Key": "Name", "Value": f"{env.name}-vpc"}])
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"{env.cidr}.{i}.0/24")["Subnet"]["SubnetId"]
               for i in (1, 2)]
    sg = ec2.create_security_group(GroupName=f"{env.name}-apps", Description=f"{env.name} services",
                                   VpcId=vpc)["GroupId"]
    return vpc, subnets, [sg]


# One-off tasks run from the image of the application they belong to.
_ONE_OFF_IMAGE = {"orders-migrate": "orders-api", "backfill-invoices": "payments-api",
                  "reindex-search": "search-api", "drop-tables": "orders-api"}


def _repo(short: str) -> str:
    return _ONE_OFF_IMAGE.get(short, short)


def _tag(env: DemoEnvironment) -> str:
    return "main" if env.cls == "staging" else "release"


def _image(env: DemoEnvironment, short: str) -> str:
    return f"{ACCOUNT}.dkr.ecr.{env.region}.amazonaws.com/{_repo(short)}:{_tag(env)}"


def _register(ecs: Any, env: DemoEnvironment, short: str, one_off: bool) -> None:
    family = env.family(short)
    container: dict[str, Any] = {
        "name": CONTAINER, "essential": True, "cpu": 256, "memory": 512, "image": _image(env, short),
        # Present so the demo shows that none of it ever reaches a page, log or audit entry.
        "environment": [{"name": "APP_ENV", "value": env.name},
                        {"name": "SESSION_SIGNING_KEY", "value": "demo-value-never-shown-" + env.name}],
        "secrets": [{"name": "DATABASE_URL",
                     "valueFrom": f"arn:aws:secretsmanager:{env.region}:{ACCOUNT}:secret:{env.name}/db-AbCdEf"}],
        "logConfiguration": {"logDriver": "awslogs", "options": {
            "awslogs-group": log_group(family), "awslogs-region": env.region,
            "awslogs-stream-prefix": STREAM_PREFIX}},
    }
    if one_off:
        container["command"] = [f"bin/{short}"]
    else:
        # A container health check: replacements count only once it says HEALTHY.
        container["portMappings"] = [{"containerPort": CONTAINER_PORT, "protocol": "tcp"}]
        container["healthCheck"] = {"command": ["CMD-SHELL", f"curl -f http://localhost:{CONTAINER_PORT}/health"],
                                    "interval": 10, "timeout": 5, "retries": 3, "startPeriod": 10}
    ecs.register_task_definition(
        family=family, networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
        taskRoleArn=f"arn:aws:iam::{ACCOUNT}:role/{family}-task",
        executionRoleArn=f"arn:aws:iam::{ACCOUNT}:role/ecsTaskExecutionRole", containerDefinitions=[container])


def _put(logs: Any, group: str, stream: str, lines: list[tuple[int, str]]) -> None:
    for i in range(0, len(lines), 1000):
        chunk = sorted(lines[i:i + 1000])
        logs.put_log_events(logGroupName=group, logStreamName=stream,
                            logEvents=[{"timestamp": ts, "message": msg} for ts, msg in chunk])


def _history(logs: Any, env: DemoEnvironment, svc: DemoService, rng: random.Random, now_ms: int,
             hours: float = 3.0, lines: int = 180) -> None:
    """Lines over the last few hours from earlier tasks of the service, with a few ERRORs."""
    group = log_group(env.family(svc.name))
    streams = [f"{STREAM_PREFIX}/{CONTAINER}/{rng.getrandbits(128):032x}" for _ in range(max(2, svc.desired))]
    per_stream: dict[str, list[tuple[int, str]]] = {s: [] for s in streams}
    span = int(hours * 3600 * 1000)
    for _ in range(lines):
        per_stream[rng.choice(streams)].append((now_ms - rng.randint(60_000, span), log_line(svc.name, rng)))
    # A guaranteed recent ERROR, so "filter: ERROR" finds something in the last 15 minutes.
    per_stream[streams[0]].append((now_ms - rng.randint(60_000, 600_000),
                                   f"ERROR {svc.name}: {_fill(rng.choice(_ERRORS.get(svc.name, ['{hex} failed'])), rng)}"))
    for stream, evs in per_stream.items():
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
        _put(logs, group, stream, evs)


def _images(sim: Simulator, env: DemoEnvironment) -> None:
    """Push every repository's image to the simulator's ECR; make the crash-looping one crash."""
    repos = {_repo(s.name) for s in env.services} | {_repo(t) for t in (*env.run_tasks, *env.other_families)}
    digests = {repo: sim.push_image(repo, _tag(env), env.region, ACCOUNT) for repo in sorted(repos)}
    for svc in env.services:
        if svc.crash_after is not None:
            sim.crash_image(digests[_repo(svc.name)], svc.crash_after, svc.exit_code, env.region, ACCOUNT)
    for short in (*env.run_tasks, *env.other_families):
        o = env.one_off(short)
        sim.set_one_off(env.family(short), o.seconds, o.exit_code, env.region, ACCOUNT)


def seed_aws(endpoint: str, sim: Simulator, environments: Iterable[DemoEnvironment] = ENVIRONMENTS,
             rng: random.Random | None = None) -> list[SeededEnvironment]:
    """Create every environment's images, network, cluster, task definitions, services and logs.

    Services are made with CreateService only: the simulator's scheduler starts
    their tasks (PROVISIONING -> RUNNING in 10-30 s), as ECS would.
    """
    rng = rng or random.Random(7)
    now_ms = int(time.time() * 1000)
    seeded: list[SeededEnvironment] = []
    for env in environments:
        ecs, logs = aws_client(endpoint, "ecs", env.region), aws_client(endpoint, "logs", env.region)
        _images(sim, env)
        vpc, subnets, sgs = _network(endpoint, env)
        s = SeededEnvironment(env, subnets, sgs)
        ecs.create_cluster(clusterName=env.cluster, tags=[{"key": "environment", "value": env.name}])
        families = [(svc.name, False) for svc in env.services] + \
                   [(t, True) for t in (*env.run_tasks, *env.other_families)]
        for short, one_off in families:
            _register(ecs, env, short, one_off)
            logs.create_log_group(logGroupName=log_group(env.family(short)))
            logs.put_retention_policy(logGroupName=log_group(env.family(short)), retentionInDays=14)
        for svc in env.services:
            _service(endpoint, ecs, s, svc, vpc)
            _history(logs, env, svc, rng, now_ms)
        # An earlier run of a one-off task, so its log group is not empty.
        if env.run_tasks:
            fam = env.family(env.run_tasks[0])
            stream = f"{STREAM_PREFIX}/{CONTAINER}/{rng.getrandbits(128):032x}"
            logs.create_log_stream(logGroupName=log_group(fam), logStreamName=stream)
            first, last = one_off_lines(fam, rng)
            t0 = now_ms - 26 * 3600 * 1000
            _put(logs, log_group(fam), stream, [(t0 + i * 800, m) for i, m in enumerate(first + last)])
        seeded.append(s)
    return seeded


def _service(endpoint: str, ecs: Any, s: SeededEnvironment, svc: DemoService, vpc: str) -> None:
    env = s.spec
    kw: dict[str, Any] = {}
    if svc.load_balancer:
        elb = aws_client(endpoint, "elbv2", env.region)
        tg = elb.create_target_group(Name=f"{env.name}-{svc.name}"[:32], Protocol="HTTP", Port=CONTAINER_PORT,
                                     VpcId=vpc, TargetType="ip")["TargetGroups"][0]["TargetGroupArn"]
        kw = {"loadBalancers": [{"targetGroupArn": tg, "containerName": CONTAINER, "containerPort": CONTAINER_PORT}],
              "healthCheckGracePeriodSeconds": 30}
    ecs.create_service(
        cluster=env.cluster, serviceName=svc.name, taskDefinition=env.family(svc.name), desiredCount=svc.desired,
        launchType="FARGATE", networkConfiguration=s.network,
        deploymentConfiguration={"minimumHealthyPercent": 50, "maximumPercent": 200,
                                 "deploymentCircuitBreaker": {"enable": True, "rollback": True}}, **kw)
    if svc.min_capacity is not None:
        aws_client(endpoint, "application-autoscaling", env.region).register_scalable_target(
            ServiceNamespace="ecs", ResourceId=f"service/{env.cluster}/{svc.name}",
            ScalableDimension="ecs:service:DesiredCount", MinCapacity=svc.min_capacity,
            MaxCapacity=svc.max_capacity if svc.max_capacity is not None else max(svc.desired, 4))


def seed_redis(client: redis.Redis, environment: str) -> int:
    """Demo keys a developer might flush: sessions, cache entries, rate limits. Returns the key count.

    Key names are derived from the environment name, so a second demo start
    rewrites the same keys instead of piling up new ones.
    """
    rng = random.Random(hashlib.sha256(environment.encode()).digest())
    pipe = client.pipeline(transaction=False)
    n = 0
    for _ in range(40):
        pipe.set(f"session:{rng.getrandbits(96):024x}", json.dumps({"user_id": rng.randint(1, 500)}), ex=86400)
        n += 1
    for pid in rng.sample(range(1000, 9999), 60):
        pipe.set(f"cache:product:{pid}", json.dumps({"id": pid, "price": rng.randint(199, 9999)}), ex=3600 * 6)
        n += 1
    for uid in rng.sample(range(1, 500), 25):
        pipe.set(f"cache:user:{uid}:profile", json.dumps({"id": uid, "tier": rng.choice(["free", "plus"])}))
        n += 1
    for _ in range(12):
        pipe.set(f"ratelimit:ip:10.0.{rng.randint(0, 255)}.{rng.randint(1, 254)}", rng.randint(1, 99), ex=3600)
        n += 1
    pipe.hset("feature:flags", mapping={"new-checkout": "on", "search-v2": "off", "one-click": "on"})
    n += 1
    pipe.execute()
    return n


def schedule_windows(now: dt.datetime, hours: int = 12) -> list[str]:
    """A UTC up-window starting this hour and lasting ``hours``, so the demo starts with services up."""
    start = now.astimezone(dt.timezone.utc).hour
    end = start + hours
    if end <= 24:
        return [f"Mon-Sun {start:02d}:00-{end:02d}:00"]
    return [f"Mon-Sun {start:02d}:00-24:00", f"Mon-Sun 00:00-{end - 24:02d}:00"]


def catalog_toml(seeded: list[SeededEnvironment], windows: list[str]) -> str:
    """environments.toml for the seeded world (strings through json.dumps are valid TOML strings)."""
    q = json.dumps
    out = ["# Written by `valetkey demo`; every resource lives in the local AWS stand-in (moto).", ""]
    for s in seeded:
        e = s.spec
        out += [f"[environments.{e.name}]", f"class = {q(e.cls)}", f"enabled = {str(e.enabled).lower()}",
                f"region = {q(e.region)}", f"cluster = {q(e.cluster)}", f"description = {q(e.description)}",
                f"run_tasks = {q(e.run_task_families)}"]
        if e.webhook_secret_env:
            out.append(f"webhook_secret_env = {q(e.webhook_secret_env)}")
        if e.scheduled:
            out.append(f"schedule = {{ timezone = \"UTC\", up = {q(windows)} }}")
        out.append(f"network = {{ subnets = {q(s.subnets)}, security_groups = {q(s.security_groups)} }}")
        if e.redis_env:
            out += ["", f"[environments.{e.name}.redis.cache]", f"url_env = {q(e.redis_env)}", "max_keys = 1000"]
        out.append("")
    return "\n".join(out)


# ---- application output ---------------------------------------------------------------
@dataclass(frozen=True)
class TaskView:
    """What the log writer needs of a simulated task, copied out under the simulator's lock."""

    region: str
    arn: str
    family: str
    service: str | None
    running: bool  # RUNNING and wanted
    started: bool  # reached RUNNING at some point
    exit_code: int | None  # the essential container's, once it exited
    image: str


def task_views(sim: Simulator, regions: Iterable[str]) -> list[TaskView]:
    out: list[TaskView] = []
    with sim.lock:
        for region in regions:
            for t in list(sim.region(region, ACCOUNT).tasks.values()):
                ess = next((c for c in t.containers if c.essential), None)
                out.append(TaskView(region, t.arn, family_of(t.td_arn), t.service, t.wanted_running,
                                    t.started_at is not None, ess.exit_code if ess else None,
                                    ess.image if ess else ""))
    return out


@dataclass
class DemoLogs:
    """Writes the tasks' application output to CloudWatch Logs; ``tick()`` is one pass, ``start()`` a thread."""

    endpoint: str
    sim: Simulator
    environments: list[SeededEnvironment]
    interval: float = 1.0
    log_every: float = 3.0  # seconds between bursts of steady traffic
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    _clients: dict[str, Any] = field(default_factory=dict, init=False)
    _streams: set[tuple[str, str, str]] = field(default_factory=set, init=False)
    _started: set[str] = field(default_factory=set, init=False)
    _ended: set[str] = field(default_factory=set, init=False)
    _next_log: float = field(default=0.0, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _last_error: str = field(default="", init=False)

    @property
    def _families(self) -> set[tuple[str, str]]:
        """(region, family) of every log group the demo created: only those get lines."""
        out: set[tuple[str, str]] = set()
        for s in self.environments:
            e = s.spec
            for short in (*(svc.name for svc in e.services), *e.run_tasks, *e.other_families):
                out.add((e.region, e.family(short)))
        return out

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="demo-logs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
                self._last_error = ""
            except Exception as e:  # noqa: BLE001 - the demo must keep going; say it once per kind of trouble
                msg = f"{type(e).__name__}: {e}"
                if msg != self._last_error:
                    log.warning("demo: writing log lines failed (%s); retrying", msg)
                    self._last_error = msg

    def tick(self) -> None:
        families = self._families
        regions = sorted({s.spec.region for s in self.environments})
        live: list[TaskView] = []
        for t in task_views(self.sim, regions):
            if (t.region, t.family) not in families:
                continue
            name = t.service or t.family
            if t.started and t.arn not in self._started:
                self._started.add(t.arn)
                lines = startup_lines(name, t.image) if t.service else \
                    one_off_lines(t.family, random.Random(t.arn), self._exit_of(t))[0]
                self._write(t, lines)
            if t.started and t.exit_code is not None and t.arn not in self._ended:
                self._ended.add(t.arn)
                if t.service is None:
                    self._write(t, one_off_lines(t.family, random.Random(t.arn), t.exit_code)[1])
                elif t.exit_code != 0:
                    self._write(t, crash_lines(name, t.exit_code))
                else:
                    self._write(t, [f"INFO  {name}: SIGTERM received; draining connections", f"INFO  {name}: bye"])
            if t.running and t.service is not None:
                live.append(t)
        now = self.clock()
        if live and now >= self._next_log:
            self._next_log = now + self.log_every
            t = self.rng.choice(live)
            self._write(t, [log_line(t.service or t.family, self.rng) for _ in range(self.rng.randint(1, 3))])

    def _exit_of(self, t: TaskView) -> int:
        """The exit code a one-off family is set to end with (its first lines depend on it)."""
        for s in self.environments:
            if s.spec.region == t.region and t.family.startswith(s.spec.name + "-"):
                return s.spec.one_off(service_of(t.family, s.spec)).exit_code
        return 0

    def _write(self, t: TaskView, messages: list[str]) -> None:
        if t.region not in self._clients:
            self._clients[t.region] = aws_client(self.endpoint, "logs", t.region)
        logs, group, stream = self._clients[t.region], log_group(t.family), stream_of(t.arn)
        ms = int(time.time() * 1000)
        try:
            if (t.region, group, stream) not in self._streams:
                try:
                    logs.create_log_stream(logGroupName=group, logStreamName=stream)
                except ClientError as e:
                    if e.response.get("Error", {}).get("Code") != "ResourceAlreadyExistsException":
                        raise
                self._streams.add((t.region, group, stream))
            _put(logs, group, stream, [(ms + i, m) for i, m in enumerate(messages)])
        except (ClientError, BotoCoreError) as e:
            log.debug("demo: could not write log lines to %s: %s", group, e)
