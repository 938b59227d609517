"""Queue throughput of the restart path against a bare Dramatiq no-op, same Redis and worker shape.

``python -m bench.queue [--jobs N] [--threads T] [--repeat R] [--profile]``
(what-ifs, not the product's defaults: ``--sqlite-synchronous NORMAL``, ``--postgres URL``)

What is timed, in one process, R times each (alternating which goes first):

- **no-op**: N messages of an actor that does nothing, pre-filled on a
  RedisBroker, then a ``dramatiq.Worker`` with T threads is started; the clock
  runs from ``Worker.start()`` until the N-th message was processed.
- **valetkey**: N restart jobs created with ``JobService.create`` (job row in
  a temporary SQLite database, ``requested`` audit event on the real Redis
  stream, progress event, enqueue), then a Worker with T threads running the
  product actor (``workers.actors.declare`` + ``JobRunner``) is started; the
  clock stops when the N-th job is terminal. ECS is answered in-process by a
  botocore ``Stubber`` per worker thread; every job targets its own service
  (svc-0 .. svc-N-1), each with 2 running tasks at minimumHealthyPercent 50,
  so one restart stops two tasks one at a time. ECS answers "done" at the
  first look, so no poll ever sleeps: the figure is the product's own cost.
  After each run every job must be ``succeeded``, every Stubber drained, and
  the audit stream must have grown by exactly 2 events per job.

Both brokers are built as ``jobs.broker.make_broker`` builds one (same
middleware). Redis: VALETKEY_BENCH_REDIS_URL (default db 7 of the local
server; another database must be empty), flushed before and after. The last
lines are ``queue: ratio=<x>`` with x = the median over the repeats of
valetkey jobs/s / no-op jobs/s, then ``queue: floor_ratio=<x>``, the median of
valetkey jobs/s / floor jobs/s (bench/queue_floor.py, same runs); each run line
also gives the process CPU per job, which is steadier than wall time on a
shared machine.

It also counts the AWS calls of one restart (a ``before-call`` hook on every
stubbed client) against a hand-written boto3 loop doing the same restart.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import io
import logging
import math
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import boto3
import dramatiq
import redis
from botocore.stub import Stubber
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage, Middleware
from sqlalchemy import create_engine, event, func, select, text

from bench.queue_floor import declare_floor
from cloud.aws import DEFAULT_CONFIG
from cloud.ecs import EcsReader
from jobs.audit_stream import STREAM
from jobs.broker import middleware as broker_middleware
from jobs.events import stream_key
from jobs.kinds import QUEUE, RESTART, SUCCEEDED
from scope.catalog import Environment
from scope.db import normalize_url
from scope.migrate import upgrade
from scope.models import Job
from scope.settings import Settings
from wiring.runtime import Runtime
from workers.actors import declare
from workers.process import default_threads
from workers.runner import JobRunner

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/7"
REGION = "us-east-1"
CLUSTER = "bench"
ENV = "bench"
ACTOR = "bench-dev@example.com"
TD_ARN = f"arn:aws:ecs:{REGION}:111111111111:task-definition/bench-app:7"
DIGEST = "sha256:a3f2b1" + "0" * 58
TASKS_PER_SERVICE = 2
MIN_HEALTHY = 50
WAIT_SECONDS = 120.0  # a run that has not finished by then is reported as a failure, not waited for


# ---- ECS answers ------------------------------------------------------------------
def _service(name: str) -> dict[str, Any]:
    """A stable service: one COMPLETED deployment, every desired task running."""
    return {"services": [{
        "serviceName": name, "serviceArn": f"arn:aws:ecs:{REGION}:111111111111:service/{CLUSTER}/{name}",
        "status": "ACTIVE", "desiredCount": TASKS_PER_SERVICE, "runningCount": TASKS_PER_SERVICE,
        "pendingCount": 0, "taskDefinition": TD_ARN,
        "deploymentConfiguration": {"minimumHealthyPercent": MIN_HEALTHY, "maximumPercent": 200},
        "deployments": [{"id": f"ecs-svc/{name}", "status": "PRIMARY", "taskDefinition": TD_ARN,
                         "desiredCount": TASKS_PER_SERVICE, "runningCount": TASKS_PER_SERVICE,
                         "pendingCount": 0, "rolloutState": "COMPLETED"}]}], "failures": []}


def _task_arns(name: str, generation: str) -> list[str]:
    return [f"arn:aws:ecs:{REGION}:111111111111:task/{CLUSTER}/{name}-{generation}{i}"
            for i in range(TASKS_PER_SERVICE)]


def _tasks(name: str, arns: list[str], stopped: frozenset[str] = frozenset()) -> dict[str, Any]:
    return {"tasks": [{
        "taskArn": a, "group": f"service:{name}", "taskDefinitionArn": TD_ARN, "startedBy": f"ecs-svc/{name}",
        "lastStatus": "STOPPED" if a in stopped else "RUNNING",
        "desiredStatus": "STOPPED" if a in stopped else "RUNNING",
        "healthStatus": "UNKNOWN" if a in stopped else "HEALTHY",
        "containers": [{"name": "app", "imageDigest": DIGEST}]} for a in arns], "failures": []}


def restart_answers(name: str) -> list[tuple[str, dict[str, Any]]]:
    """The calls of ``EcsOperations.restart`` on a 2-task service at 50% without ECR (so in batches of
    one), in order, each answered as if ECS had already done its part (a stopped task STOPPED and its
    healthy replacement running at the next look)."""
    old, new = _task_arns(name, "old"), _task_arns(name, "new")
    out: list[tuple[str, dict[str, Any]]] = [
        ("describe_services", _service(name)),            # the plan: the service ...
        ("list_tasks", {"taskArns": old}),                # ... the tasks to replace ...
        ("describe_tasks", _tasks(name, old)),            # ... and their digests
        ("list_tasks", {"taskArns": []}),                 # tasks stopped before the restart
    ]
    for i in range(len(old) + 2):  # a look before each batch, one after the last, one for the outcome
        running = old[i:] + new[:i]
        stopped = frozenset(old[:i])
        out += [("describe_services", _service(name)), ("list_tasks", {"taskArns": running}),
                ("list_tasks", {"taskArns": sorted(stopped)}),
                ("describe_tasks", _tasks(name, sorted(set(old) | set(running)), stopped))]
        if i < len(old):
            out.append(("stop_task", {"task": {"taskArn": old[i], "lastStatus": "RUNNING",
                                               "desiredStatus": "STOPPED"}}))
    return out


def hand_written_answers(name: str) -> list[tuple[str, dict[str, Any]]]:
    old = _task_arns(name, "old")
    out: list[tuple[str, dict[str, Any]]] = [("describe_services", _service(name)),
                                             ("list_tasks", {"taskArns": old})]
    for arn in old:
        out.append(("stop_task", {"task": {"taskArn": arn}}))
        out.append(("describe_services", _service(name)))
    return out


def hand_written_restart(ecs: Any, cluster: str, service: str, sleep: Callable[[float], None]) -> None:
    """What one would write by hand: list the tasks, stop them a batch at a time, wait for stable."""
    svc = ecs.describe_services(cluster=cluster, services=[service])["services"][0]
    desired = svc["desiredCount"]
    floor = math.ceil(desired * svc["deploymentConfiguration"]["minimumHealthyPercent"] / 100)
    batch = max(1, desired - floor)
    arns = ecs.list_tasks(cluster=cluster, serviceName=service, desiredStatus="RUNNING")["taskArns"]
    for i in range(0, len(arns), batch):
        for arn in arns[i:i + batch]:
            ecs.stop_task(cluster=cluster, task=arn, reason="restart")
        while True:
            s = ecs.describe_services(cluster=cluster, services=[service])["services"][0]
            if s["runningCount"] == s["desiredCount"] and len(s["deployments"]) == 1:
                break
            sleep(3)


class _Prevalidated(Stubber):
    """A Stubber whose answers were validated against the ECS model once, before the clock runs.

    Stubber.add_response checks every answer against the output shape (~80 us
    each); the bench loads a restart's answers when the job starts, inside the
    timed run, so the check is done once at setup instead of there.
    """

    def _validate_response(self, shape: Any, response: Any) -> None:  # noqa: D401 - override
        return None


def _ecs_client() -> Any:
    # The product's client configuration (timeouts, standard retry mode): what the worker really builds.
    return boto3.client("ecs", region_name=REGION, aws_access_key_id="bench", aws_secret_access_key="bench",
                        endpoint_url=f"https://ecs.{REGION}.amazonaws.com", config=DEFAULT_CONFIG)


@dataclass
class StubbedEcs:
    """One stubbed ECS client per worker thread (a Stubber's queue is ordered and not thread-safe).

    The runner asks for the client once per job (``ecs_client(env)``); that
    moment loads the answers of that job's restart, found from the message
    being processed, after checking that the previous restart on this thread
    used exactly all of its answers.
    """

    answers: dict[str, list[tuple[str, dict[str, Any]]]]  # service -> restart answers
    targets: dict[str, str]  # job id -> service
    pool: list[tuple[Any, Stubber, collections.Counter[str]]]
    _local: threading.local = field(default_factory=threading.local)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _mine(self) -> tuple[Any, Stubber, collections.Counter[str]]:
        mine = getattr(self._local, "client", None)
        if mine is None:
            with self._lock:
                mine = self.pool.pop()
            self._local.client = mine
        return mine

    def __call__(self, env: Environment) -> Any:
        client, stub, _ = self._mine()
        stub.assert_no_pending_responses()
        msg = CurrentMessage.get_current_message()
        assert msg is not None, "ecs_client called outside a Dramatiq message"
        for op, resp in self.answers[self.targets[msg.args[0]]]:
            stub.add_response(op, resp)
        return client


def stubbed_clients(n: int) -> list[tuple[Any, Stubber, collections.Counter[str]]]:
    out = []
    for _ in range(n):
        client = _ecs_client()
        calls: collections.Counter[str] = collections.Counter()
        # On the Stubber's own event pattern and first: emit_until_response stops at
        # the Stubber's answer, and botocore runs wildcard handlers before exact ones.
        client.meta.events.register_first("before-call.*.*", lambda model, calls=calls, **_: calls.update([model.name]))
        stub = _Prevalidated(client)
        stub.activate()
        out.append((client, stub, calls))
    return out


def validate_answers(answers: dict[str, list[tuple[str, dict[str, Any]]]]) -> None:
    """Check every answer against the ECS model with a plain Stubber (outside the clock)."""
    client = _ecs_client()
    stub = Stubber(client)
    for seq in answers.values():
        for op, resp in seq:
            stub.add_response(op, resp)


def prewarm_task_definition() -> None:
    """EcsReader caches task definitions per process: fill it so no restart describes one."""
    client = _ecs_client()
    with Stubber(client) as stub:
        stub.add_response("describe_task_definition", {"taskDefinition": {
            "taskDefinitionArn": TD_ARN, "family": "bench-app", "revision": 7,
            "containerDefinitions": [{"name": "app", "essential": True, "image": "repo/bench-app:latest",
                                      "healthCheck": {"command": ["CMD", "true"]}}]}})
        EcsReader(client, CLUSTER).task_definition(TD_ARN)
        stub.assert_no_pending_responses()


# ---- completion counting and profiling ------------------------------------------------
class Done(Middleware):
    """Sets ``event`` once ``target`` messages were processed (successfully or not)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.target = 0
        self.event = threading.Event()
        self.failures = 0
        self.cpu = 0.0

    def reset(self, target: int) -> None:
        with self.lock:
            self.count, self.target, self.failures = 0, target, 0
            self.event.clear()

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                              exception: BaseException | None = None) -> None:
        with self.lock:
            self.count += 1
            self.failures += exception is not None
            if self.count >= self.target:
                self.event.set()

    def after_skip_message(self, broker: Any, message: Any) -> None:
        self.after_process_message(broker, message, exception=RuntimeError("skipped"))


class Profiled(Middleware):
    """cProfile of the actor code only, per worker thread (cProfile follows one thread)."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.profiles: list[cProfile.Profile] = []
        self.lock = threading.Lock()

    def before_process_message(self, broker: Any, message: Any) -> None:
        p = getattr(self.local, "p", None)
        if p is None:
            p = self.local.p = cProfile.Profile(time.thread_time)  # CPU, not GIL waits
            with self.lock:
                self.profiles.append(p)
        p.enable()

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                              exception: BaseException | None = None) -> None:
        self.local.p.disable()

    def report(self, top: int = 35) -> str:
        buf = io.StringIO()
        stats = pstats.Stats(self.profiles[0], stream=buf)
        for p in self.profiles[1:]:
            stats.add(p)
        stats.sort_stats("cumulative").print_stats(top)
        stats.sort_stats("tottime").print_stats(top)
        return buf.getvalue()


def plain_broker(url: str) -> RedisBroker:
    """The broker of ``jobs.broker.make_broker`` (same middleware) minus its declared job queue."""
    return RedisBroker(url=url, middleware=broker_middleware())


def run_worker(broker: dramatiq.Broker, done: Done, n: int, threads: int,
               diagnose: Callable[[], str] = lambda: "") -> float:
    """Start a Worker on a pre-filled queue; seconds until the n-th message was processed."""
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    done.reset(n)
    c0, t0 = time.process_time(), time.perf_counter()
    worker.start()
    finished = done.event.wait(WAIT_SECONDS)
    elapsed = time.perf_counter() - t0
    done.cpu = time.process_time() - c0  # the whole process: worker, consumer and broker threads
    if not finished:
        what = diagnose()  # before stopping: stop() hands prefetched messages back
    worker.stop(timeout=10_000)
    if not finished:
        raise SystemExit(f"queue: only {done.count} of {n} messages processed in {WAIT_SECONDS:.0f}s; {what}")
    return elapsed


# ---- the two measurements ------------------------------------------------------------
def measure_noop(url: str, n: int, threads: int) -> tuple[float, float]:
    """no-op messages/s, and process CPU ms per message."""
    broker = plain_broker(url)
    done = Done()
    broker.add_middleware(done)

    def noop(i: int) -> None:
        return None

    actor = dramatiq.actor(noop, broker=broker, actor_name="bench_noop", queue_name="bench-noop", max_retries=0)
    for i in range(n):
        actor.send(i)
    try:
        elapsed = run_worker(broker, done, n, threads)
    finally:
        broker.close()
    if done.failures:
        raise SystemExit(f"queue: {done.failures} no-op messages failed")
    return n / elapsed, done.cpu * 1000 / n


@dataclass
class Setup:
    settings: Settings
    answers: dict[str, list[tuple[str, dict[str, Any]]]]
    clients: list[tuple[Any, Stubber, collections.Counter[str]]]
    sqlite_synchronous: str | None = None  # a what-if: the product leaves SQLite's default (FULL)


def _runtime(setup: Setup, **kw: Any) -> Runtime:
    rt = Runtime.from_settings(setup.settings, **kw)
    if setup.sqlite_synchronous and rt.engine.dialect.name == "sqlite":
        @event.listens_for(rt.engine, "connect")
        def _sync(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute(f"PRAGMA synchronous={setup.sqlite_synchronous}")
    return rt


def measure_valetkey(setup: Setup, n: int, threads: int,
                     profiler: Profiled | None = None) -> tuple[float, float, int, int]:
    """jobs/s through the product's actor, process CPU ms per job, ECS calls made, events per job."""
    def product(rt: Runtime, ecs: StubbedEcs) -> None:
        # Each job reads ECS on its own here, as before the ECS gateway (cloud/ecs_gateway.py): a
        # Stubber answers one thread's calls in a fixed order, and the gateway's reads depend on what
        # other jobs already read in the same tick. The gateway's effect is bench.inflight's subject.
        rt.aws.gateway = None
        runner = JobRunner(rt, sleep=lambda s: None, ecs_client=ecs, aws_client=lambda env, service: None)
        declare(rt.broker, runner, max_age_ms=3_600_000)

    return _measure(setup, n, threads, product, profiler)


def measure_floor(setup: Setup, n: int, threads: int, events: int) -> tuple[float, float, int, int]:
    """The same, through an actor that does only the contract's own work (bench/queue_floor.py)."""
    return _measure(setup, n, threads, lambda rt, ecs: declare_floor(rt, ecs, events))


def _measure(setup: Setup, n: int, threads: int, declare_actor: Callable[[Runtime, StubbedEcs], None],
             profiler: Profiled | None = None) -> tuple[float, float, int, int]:
    rt = _runtime(setup)
    try:
        assert rt.broker is not None
        done = Done()
        rt.broker.add_middleware(done)
        if profiler is not None:
            rt.broker.add_middleware(profiler)
        targets: dict[str, str] = {}
        ecs = StubbedEcs(answers=setup.answers, targets=targets, pool=list(setup.clients))
        declare_actor(rt, ecs)
        audit_before = rt.redis.xlen(STREAM)
        for i in range(n):
            job = rt.jobs.create(action=RESTART, environment=ENV, target=f"svc-{i}", actor=ACTOR, source="api",
                                 request_id=f"bench-{i}")
            targets[job.id] = job.target
        calls_before = sum(sum(c.values()) for _, _, c in setup.clients)
        def diagnose() -> str:
            with rt.sessions() as s:
                by_status = dict(s.execute(select(Job.status, func.count()).where(Job.id.in_(list(targets)))
                                           .group_by(Job.status)).all())
            queued = rt.redis.llen(f"dramatiq:{QUEUE}")
            return f"jobs by status {by_status}, {queued} message(s) still in the Redis queue"

        elapsed = run_worker(rt.broker, done, n, threads, diagnose)
        calls = sum(sum(c.values()) for _, _, c in setup.clients) - calls_before
        for _, stub, _ in setup.clients:
            stub.assert_no_pending_responses()
        with rt.sessions() as s:
            by_status = dict(s.execute(select(Job.status, func.count()).where(Job.id.in_(list(targets)))
                                       .group_by(Job.status)).all())
            if by_status != {SUCCEEDED: n}:
                details = s.scalars(select(Job.detail).where(Job.id.in_(list(targets)), Job.status != SUCCEEDED)
                                    .limit(3)).all()
                raise SystemExit(f"queue: restart jobs did not all succeed: {by_status}; e.g. {details}")
        audited = rt.redis.xlen(STREAM) - audit_before
        if audited != 2 * n:  # one "requested" and one outcome per job, no more
            raise SystemExit(f"queue: {audited} audit events for {n} jobs, expected {2 * n}")
        # Progress events of one job (the "queued" one at creation included).
        events = rt.redis.xlen(stream_key(next(iter(targets))))
        return n / elapsed, done.cpu * 1000 / n, calls, events
    finally:
        rt.close()


def count_hand_written() -> tuple[int, collections.Counter[str]]:
    client = _ecs_client()
    calls: collections.Counter[str] = collections.Counter()
    client.meta.events.register_first("before-call.*.*", lambda model, **_: calls.update([model.name]))
    with Stubber(client) as stub:
        for op, resp in hand_written_answers("svc-hand"):
            stub.add_response(op, resp)
        hand_written_restart(client, CLUSTER, "svc-hand", sleep=lambda s: None)
        stub.assert_no_pending_responses()
    return sum(calls.values()), calls


def count_valetkey_one() -> collections.Counter[str]:
    """The calls of one restart by operation (same answers as the timed runs)."""
    [(client, stub, calls)] = stubbed_clients(1)
    from workers.ecs import EcsOperations

    for op, resp in restart_answers("svc-count"):
        stub.add_response(op, resp)
    EcsOperations(client, CLUSTER, progress=lambda k, m: None, checkpoint=lambda p: None,
                  sleep=lambda s: None).restart("svc-count", {})
    stub.assert_no_pending_responses()
    return calls


# ---- main ------------------------------------------------------------------------------
@contextlib.contextmanager
def database(tmp: Path, pg_url: str | None) -> Iterator[tuple[str, str]]:
    """A fresh database: SQLite in ``tmp`` by default, or a throw-away schema of a PostgreSQL URL."""
    if not pg_url:
        yield f"sqlite:///{tmp / 'valetkey.db'}", "SQLite (temp file)"
        return
    schema = f"bench_{os.getpid()}_{int(time.time())}"
    admin = create_engine(normalize_url(pg_url))
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        sep = "&" if "?" in pg_url else "?"
        yield f"{pg_url}{sep}options=-csearch_path%3D{schema}", "PostgreSQL (temp schema)"
    finally:
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.queue", description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=400, help="messages / restart jobs per run (default 400)")
    ap.add_argument("--threads", type=int, default=default_threads(),
                    help="worker threads, one process (default: valetkey worker's)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each; the median ratio is reported")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the actor threads of the last valetkey run (report on stderr)")
    ap.add_argument("--postgres", metavar="URL", default=None,
                    help="what-if: jobs in a temp schema of this PostgreSQL database instead of SQLite")
    ap.add_argument("--sqlite-synchronous", choices=["NORMAL", "FULL"], default=None,
                    help="what-if: PRAGMA synchronous for the SQLite database (the product leaves FULL)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    url = os.environ.get("VALETKEY_BENCH_REDIS_URL", DEFAULT_REDIS_URL)

    r = redis.Redis.from_url(url)
    if url != DEFAULT_REDIS_URL and r.dbsize():
        # Flushing someone else's data is worse than not running.
        r.close()
        raise SystemExit("queue: the Redis database of VALETKEY_BENCH_REDIS_URL is not empty; "
                         "give an empty one (it is flushed before and after the run)")
    r.flushdb()
    tmp = Path(tempfile.mkdtemp(prefix="valetkey-bench-"))
    try:
        with database(tmp, args.postgres) as (db_url, db_name):
            (tmp / "environments.toml").write_text(
                f'[environments.{ENV}]\nclass = "staging"\nregion = "{REGION}"\ncluster = "{CLUSTER}"\n')
            settings = Settings.from_env({"VALETKEY_REDIS_URL": url, "VALETKEY_DATABASE_URL": db_url,
                                          "VALETKEY_ENVIRONMENTS": str(tmp / "environments.toml")})
            rt = Runtime.from_settings(settings, with_broker=False)
            upgrade(rt.engine)
            rt.users.add_user(ACTOR, name="Bench Developer")
            rt.users.grant(ACTOR, ENV, "developer", rt.catalog, by="bench")
            rt.close()
            if args.sqlite_synchronous and not args.postgres:
                db_name += f", synchronous={args.sqlite_synchronous}"
            return _bench(args, url, settings, db_name)
    finally:
        r.flushdb()
        r.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _bench(args: argparse.Namespace, url: str, settings: Settings, db_name: str) -> int:
    n, threads = args.jobs, args.threads
    answers = {f"svc-{i}": restart_answers(f"svc-{i}") for i in range(n)}
    validate_answers(answers)
    prewarm_task_definition()
    setup = Setup(settings=settings, answers=answers, clients=stubbed_clients(threads),
                  sqlite_synchronous=args.sqlite_synchronous)

    print(f"queue: {n} messages per run, 1 process x {threads} threads, Redis db {url.rsplit('/', 1)[-1]}, "
          f"jobs in {db_name}", flush=True)
    noops, vks, floors, ratios, floor_ratios, calls_total = [], [], [], [], [], 0
    cpus: list[tuple[float, float, float]] = []
    for i in range(args.repeat):
        profiler = Profiled() if args.profile and i == args.repeat - 1 else None
        # Alternate the order so that neither side always runs on a warmer (or busier) machine.
        first_noop = i % 2 == 0
        if first_noop:
            noop, noop_cpu = measure_noop(url, n, threads)
        vk, vk_cpu, calls, events = measure_valetkey(setup, n, threads, profiler)
        fl, fl_cpu, fl_calls, fl_events = measure_floor(setup, n, threads, events)
        if not first_noop:
            noop, noop_cpu = measure_noop(url, n, threads)
        if (fl_calls, fl_events) != (calls, events):
            raise SystemExit(f"queue: the floor made {fl_calls} calls and {fl_events} events per run, "
                             f"the product {calls} and {events}: it no longer measures the same work")
        noops.append(noop)
        vks.append(vk)
        floors.append(fl)
        ratios.append(vk / noop)
        floor_ratios.append(fl / noop)
        calls_total += calls
        cpus.append((noop_cpu, vk_cpu, fl_cpu))
        print(f"run {i + 1}: no-op {noop:7.1f} jobs/s ({noop_cpu:.2f} ms CPU each)   valetkey restart {vk:6.1f} "
              f"jobs/s ({vk_cpu:.2f} ms)   floor {fl:6.1f} jobs/s ({fl_cpu:.2f} ms)   ratio {vk / noop:.3f} "
              f"(floor {fl / noop:.3f})", flush=True)
        if profiler is not None:
            print(profiler.report(), file=sys.stderr)
    med = statistics.median
    print(f"median: no-op {med(noops):.1f} jobs/s, valetkey restart {med(vks):.1f} jobs/s, floor "
          f"{med(floors):.1f} jobs/s (wall per job {1000 / med(vks):.2f} ms vs {1000 / med(noops):.2f} ms; "
          f"process CPU per job {med(c[1] for c in cpus):.2f} ms, floor {med(c[2] for c in cpus):.2f} ms, "
          f"no-op {med(c[0] for c in cpus):.2f} ms)")
    print(f"floor: ratio={med(floor_ratios):.3f} — the contract's own work per restart ({events} progress "
          f"events, 5 job-row statements, 2 scope reads, {calls // n} ECS calls) with no product code around "
          f"it; valetkey reaches {med(ratios) / med(floor_ratios):.0%} of it")

    vk_calls = count_valetkey_one()
    hand, hand_calls = count_hand_written()
    per_restart = calls_total / (n * args.repeat)
    assert per_restart == sum(vk_calls.values()), (per_restart, vk_calls)
    extra = ", ".join(f"{op} +{vk_calls[op] - hand_calls[op]}" for op in sorted(vk_calls)
                      if vk_calls[op] > hand_calls[op])
    print(f"aws calls per restart: valetkey={per_restart:g} hand-written={hand} "
          f"(2 tasks at minimumHealthyPercent 50; extra: {extra} — the hand-written loop trusts lagging "
          f"counts; Valet Key looks at the tasks themselves before each batch: the stopped ones STOPPED, "
          f"their replacements running and healthy, failed replacements, and the digests before/after)")
    print(f"queue: ratio={statistics.median(ratios):.3f}")
    # Restated against the floor, measured in the same runs: the product's rate over the rate of the
    # contract's own work with nothing around it (median over the repeats).
    print(f"queue: floor_ratio={med(v / f for v, f in zip(vks, floors)):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
