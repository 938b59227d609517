"""What ``valetkey demo`` puts into its stand-ins, and the thread that keeps them looking alive.

- moto (ECS, CloudWatch Logs, EC2 networking): clusters, task definitions with
  an ``awslogs`` configuration, services with RUNNING tasks in their group
  ``service:NAME``, one-off task families, log groups with realistic lines;
- the target Redis databases: keys a developer might want to flush;
- ``environments.toml`` describing all of it.

moto's services start no tasks of their own, and every ``describe_tasks``
moves a task one step towards STOPPED. The demo therefore pins tasks in their
state (moto's state manager) and runs ``MotoAnimator``: it plays the ECS
scheduler (replaces stopped service tasks, rolls tasks on a new deployment,
scales to the desired count), lets one-off tasks exit 0 after a few seconds,
and writes fresh log lines. This lives here only: the product code never
special-cases moto.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import random
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import boto3
import redis
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger("valetkey.demo")

ACCOUNT = "123456789012"  # moto's default account
CONTAINER = "app"
STREAM_PREFIX = "app"
FAKE_CREDENTIALS = {"aws_access_key_id": "demo", "aws_secret_access_key": "demo"}
# Seeding and animating talk to a local moto: short timeouts, no long retry storms.
_CLIENT_CONFIG = Config(connect_timeout=3, read_timeout=15, retries={"max_attempts": 3, "mode": "standard"})


# ---- the demo's world --------------------------------------------------------------
@dataclass(frozen=True)
class DemoService:
    name: str
    desired: int = 2


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

    def family(self, short: str) -> str:
        return f"{self.name}-{short}"

    @property
    def run_task_families(self) -> list[str]:
        return [self.family(t) for t in self.run_tasks]


ENVIRONMENTS: tuple[DemoEnvironment, ...] = (
    DemoEnvironment(
        name="staging", cls="staging", enabled=True, region="us-east-1", cluster="staging", cidr="10.10",
        services=(DemoService("orders-api"), DemoService("payments-api"), DemoService("web-frontend"),
                  DemoService("email-worker", 1)),
        run_tasks=("orders-migrate", "backfill-invoices"), other_families=("drop-tables",),
        redis_env="STAGING_CACHE_REDIS_URL", webhook_secret_env="STAGING_WEBHOOK_SECRET", scheduled=True,
        description="Shared staging of the shop (orders, payments, storefront)"),
    DemoEnvironment(
        name="qa-eu", cls="staging", enabled=True, region="eu-west-1", cluster="qa-eu", cidr="10.20",
        services=(DemoService("orders-api", 1), DemoService("search-api")),
        run_tasks=("orders-migrate", "reindex-search"),
        redis_env="QA_EU_CACHE_REDIS_URL", description="QA environment in Ireland"),
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


def one_off_lines(family: str, rng: random.Random) -> tuple[list[str], list[str]]:
    """(lines at start, lines at exit) of a one-off task."""
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
def keep_tasks_in_state(endpoint: str) -> None:
    """Stop moto from moving a task towards STOPPED on every describe_tasks (MotoAnimator moves them)."""
    body = json.dumps({"model_name": "ecs::task",
                       "transition": {"progression": "manual", "times": 10 ** 9}}).encode()
    req = urllib.request.Request(f"{endpoint}/moto-api/state-manager/set-transition", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - our own local moto
        resp.read()


def _network(endpoint: str, env: DemoEnvironment) -> tuple[list[str], list[str]]:
    ec2 = aws_client(endpoint, "ec2", env.region)
    vpc = ec2.create_vpc(CidrBlock=f"{env.cidr}.0.0/16")["Vpc"]["VpcId"]
    # moto (like AWS) wants DNS hostnames on the VPC of an awsvpc task.
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    ec2.create_tags(Resources=[vpc], Tags=[{"Key": "Name", "Value": f"{env.name}-vpc"}])
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"{env.cidr}.{i}.0/24")["Subnet"]["SubnetId"]
               for i in (1, 2)]
    sg = ec2.create_security_group(GroupName=f"{env.name}-apps", Description=f"{env.name} services",
                                   VpcId=vpc)["GroupId"]
    return subnets, [sg]


# One-off tasks run from the image of the application they belong to.
_ONE_OFF_IMAGE = {"orders-migrate": "orders-api", "backfill-invoices": "payments-api",
                  "reindex-search": "search-api", "drop-tables": "orders-api"}


def _image(env: DemoEnvironment, short: str) -> str:
    repo = _ONE_OFF_IMAGE.get(short, short)
    return f"{ACCOUNT}.dkr.ecr.{env.region}.amazonaws.com/{repo}:{'main' if env.cls == 'staging' else 'release'}"


def _register(ecs: Any, env: DemoEnvironment, short: str, one_off: bool) -> None:
    family = env.family(short)
    ecs.register_task_definition(
        family=family, networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
        taskRoleArn=f"arn:aws:iam::{ACCOUNT}:role/{family}-task",
        executionRoleArn=f"arn:aws:iam::{ACCOUNT}:role/ecsTaskExecutionRole",
        containerDefinitions=[{
            "name": CONTAINER, "essential": True, "cpu": 256, "memory": 512, "image": _image(env, short),
            **({"command": [f"bin/{short}"]} if one_off else {}),
            # Present so the demo shows that none of it ever reaches a page, log or audit entry.
            "environment": [{"name": "APP_ENV", "value": env.name},
                            {"name": "SESSION_SIGNING_KEY", "value": "demo-value-never-shown-" + env.name}],
            "secrets": [{"name": "DATABASE_URL",
                         "valueFrom": f"arn:aws:secretsmanager:{env.region}:{ACCOUNT}:secret:{env.name}/db-AbCdEf"}],
            "logConfiguration": {"logDriver": "awslogs", "options": {
                "awslogs-group": log_group(family), "awslogs-region": env.region,
                "awslogs-stream-prefix": STREAM_PREFIX}},
        }])


def _put(logs: Any, group: str, stream: str, lines: list[tuple[int, str]]) -> None:
    for i in range(0, len(lines), 1000):
        chunk = sorted(lines[i:i + 1000])
        logs.put_log_events(logGroupName=group, logStreamName=stream,
                            logEvents=[{"timestamp": ts, "message": msg} for ts, msg in chunk])


def _history(logs: Any, env: DemoEnvironment, svc: DemoService, streams: list[str], rng: random.Random,
             now_ms: int, hours: float = 3.0, lines: int = 180) -> None:
    """Lines over the last few hours, spread over the running tasks' streams, with a few ERRORs."""
    group = log_group(env.family(svc.name))
    per_stream: dict[str, list[tuple[int, str]]] = {s: [] for s in streams}
    span = int(hours * 3600 * 1000)
    for _ in range(lines):
        per_stream[rng.choice(streams)].append((now_ms - rng.randint(5_000, span), log_line(svc.name, rng)))
    # A guaranteed recent ERROR, so "filter: ERROR" finds something in the last 15 minutes.
    per_stream[streams[0]].append((now_ms - rng.randint(60_000, 600_000),
                                   f"ERROR {svc.name}: {_fill(rng.choice(_ERRORS.get(svc.name, ['{hex} failed'])), rng)}"))
    for stream, evs in per_stream.items():
        _put(logs, group, stream, evs)


def seed_aws(endpoint: str, environments: Iterable[DemoEnvironment] = ENVIRONMENTS,
             rng: random.Random | None = None) -> list[SeededEnvironment]:
    """Create every environment's network, cluster, task definitions, services, tasks and logs in moto."""
    rng = rng or random.Random(7)
    now_ms = int(time.time() * 1000)
    seeded: list[SeededEnvironment] = []
    for env in environments:
        ecs, logs = aws_client(endpoint, "ecs", env.region), aws_client(endpoint, "logs", env.region)
        subnets, sgs = _network(endpoint, env)
        s = SeededEnvironment(env, subnets, sgs)
        ecs.create_cluster(clusterName=env.cluster, tags=[{"key": "environment", "value": env.name}])
        families = [(svc.name, False) for svc in env.services] + \
                   [(t, True) for t in (*env.run_tasks, *env.other_families)]
        for short, one_off in families:
            _register(ecs, env, short, one_off)
            logs.create_log_group(logGroupName=log_group(env.family(short)))
            logs.put_retention_policy(logGroupName=log_group(env.family(short)), retentionInDays=14)
        for svc in env.services:
            ecs.create_service(cluster=env.cluster, serviceName=svc.name, taskDefinition=env.family(svc.name),
                               desiredCount=2, launchType="FARGATE", networkConfiguration=s.network,
                               deploymentConfiguration={"minimumHealthyPercent": 50, "maximumPercent": 200})
            if svc.desired != 2:
                # moto takes runningCount from MOTO_ECS_SERVICE_RUNNING at creation and from
                # desiredCount on an update: set the count through an update so the two agree.
                ecs.update_service(cluster=env.cluster, service=svc.name, desiredCount=svc.desired)
            tasks = ecs.run_task(cluster=env.cluster, taskDefinition=env.family(svc.name), count=svc.desired,
                                 launchType="FARGATE", networkConfiguration=s.network,
                                 group=f"service:{svc.name}", startedBy="ecs-svc/demo")["tasks"]
            streams = [stream_of(t["taskArn"]) for t in tasks]
            for stream in streams:
                logs.create_log_stream(logGroupName=log_group(env.family(svc.name)), logStreamName=stream)
            _history(logs, env, svc, streams, rng, now_ms)
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


# ---- keeping moto alive ---------------------------------------------------------------
@dataclass
class MotoAnimator:
    """Plays the parts of ECS that moto leaves out; ``tick()`` is one pass, ``start()`` runs it in a thread."""

    endpoint: str
    environments: list[SeededEnvironment]
    interval: float = 2.0
    one_off_seconds: float = 8.0  # how long a one-off task "runs" before it exits 0
    log_every: float = 3.0
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    _clients: dict[tuple[str, str], Any] = field(default_factory=dict, init=False)
    _streams: set[tuple[str, str]] = field(default_factory=set, init=False)
    _deployments: dict[tuple[str, str], str] = field(default_factory=dict, init=False)
    _first_seen: dict[str, float] = field(default_factory=dict, init=False)
    _next_log: float = field(default=0.0, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _last_error: str = field(default="", init=False)

    def _client(self, service: str, region: str) -> Any:
        key = (service, region)
        if key not in self._clients:
            self._clients[key] = aws_client(self.endpoint, service, region)
        return self._clients[key]

    # -- thread ---------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="demo-moto-animator", daemon=True)
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
                    log.warning("demo: keeping the AWS stand-in alive failed (%s); retrying", msg)
                    self._last_error = msg

    # -- one pass ---------------------------------------------------------------
    def tick(self) -> None:
        live: list[tuple[SeededEnvironment, str, str]] = []  # (env, service, task arn) for fresh log lines
        for env in self.environments:
            live += self._environment(env)
        now = self.clock()
        if live and now >= self._next_log:
            self._next_log = now + self.log_every
            env, svc, arn = self.rng.choice(live)
            t = int(time.time() * 1000)
            self._write(env, env.spec.family(svc), arn,
                        [(t + i, log_line(svc, self.rng)) for i in range(self.rng.randint(1, 3))])

    def _environment(self, env: SeededEnvironment) -> list[tuple[SeededEnvironment, str, str]]:
        ecs, cluster = self._client("ecs", env.spec.region), env.spec.cluster
        names: list[str] = []
        for page in ecs.get_paginator("list_services").paginate(cluster=cluster):
            names += [a.rsplit("/", 1)[-1] for a in page.get("serviceArns", [])]
        services = []
        for i in range(0, len(names), 10):
            services += [s for s in ecs.describe_services(cluster=cluster, services=names[i:i + 10])["services"]
                         if s.get("status") == "ACTIVE"]
        arns: list[str] = []
        for page in ecs.get_paginator("list_tasks").paginate(cluster=cluster, desiredStatus="RUNNING"):
            arns += page.get("taskArns", [])
        tasks: list[dict[str, Any]] = []
        for i in range(0, len(arns), 100):
            tasks += ecs.describe_tasks(cluster=cluster, tasks=arns[i:i + 100])["tasks"]
        running = [t for t in tasks if t.get("lastStatus") == "RUNNING"]
        live: list[tuple[SeededEnvironment, str, str]] = []
        for svc in services:
            live += [(env, svc["serviceName"], arn) for arn in self._service(env, svc, running)]
        self._one_offs(env, [t for t in running if not str(t.get("group", "")).startswith("service:")])
        return live

    def _service(self, env: SeededEnvironment, svc: dict[str, Any], running: list[dict[str, Any]]) -> list[str]:
        """Bring the service's RUNNING tasks to desiredCount, as the ECS scheduler would; returns them."""
        ecs, cluster, name = self._client("ecs", env.spec.region), env.spec.cluster, svc["serviceName"]
        mine = [t["taskArn"] for t in running if t.get("group") == f"service:{name}"]
        primary: dict[str, Any] = next((d for d in svc.get("deployments", []) if d.get("status") == "PRIMARY"), {})
        key, dep = (env.spec.name, name), primary.get("id", "")
        if self._deployments.get(key, dep) != dep:
            # A new deployment (redeploy): replace every task of the old one.
            for arn in mine:
                ecs.stop_task(cluster=cluster, task=arn, reason=f"Deployment {dep} replaced this task")
            mine = []
        self._deployments[key] = dep
        desired = int(svc.get("desiredCount", 0))
        if len(mine) > desired:
            for arn in mine[desired:]:
                ecs.stop_task(cluster=cluster, task=arn,
                              reason=f"Scaling activity initiated by (deployment {dep or 'unknown'})")
            mine = mine[:desired]
        elif len(mine) < desired:
            td = svc["taskDefinition"]
            net = svc.get("networkConfiguration") or env.network
            started = ecs.run_task(cluster=cluster, taskDefinition=td, count=desired - len(mine),
                                   launchType="FARGATE", networkConfiguration=net,
                                   group=f"service:{name}", startedBy="ecs-svc/demo")["tasks"]
            t = int(time.time() * 1000)
            image = next((c.get("image", "") for c in started[0].get("containers", [])), "") if started else ""
            for task in started:
                self._write(env, family_of(td), task["taskArn"],
                            [(t + i, m) for i, m in enumerate(startup_lines(name, image))])
                mine.append(task["taskArn"])
        return mine

    def _one_offs(self, env: SeededEnvironment, tasks: list[dict[str, Any]]) -> None:
        """A one-off task logs a few lines and exits 0 after ``one_off_seconds``."""
        ecs, now = self._client("ecs", env.spec.region), self.clock()
        for task in tasks:
            arn, fam = task["taskArn"], family_of(task["taskDefinitionArn"])
            t = int(time.time() * 1000)
            if arn not in self._first_seen:
                self._first_seen[arn] = now
                first, _ = one_off_lines(fam, random.Random(arn))
                self._write(env, fam, arn, [(t + i, m) for i, m in enumerate(first)])
            elif now - self._first_seen[arn] >= self.one_off_seconds:
                _, last = one_off_lines(fam, random.Random(arn))
                self._write(env, fam, arn, [(t + i, m) for i, m in enumerate(last)])
                ecs.stop_task(cluster=env.spec.cluster, task=arn, reason="Essential container in task exited")
                del self._first_seen[arn]

    def _write(self, env: SeededEnvironment, family: str, task_arn: str, lines: list[tuple[int, str]]) -> None:
        logs, group, stream = self._client("logs", env.spec.region), log_group(family), stream_of(task_arn)
        try:
            if (group, stream) not in self._streams:
                try:
                    logs.create_log_stream(logGroupName=group, logStreamName=stream)
                except ClientError as e:
                    if e.response.get("Error", {}).get("Code") != "ResourceAlreadyExistsException":
                        raise
                self._streams.add((group, stream))
            _put(logs, group, stream, lines)
        except (ClientError, BotoCoreError) as e:
            # A task of a family without a log group (someone else's) is not worth failing the pass for.
            log.debug("demo: could not write log lines to %s: %s", group, e)
