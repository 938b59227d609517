"""One ECS gateway per process: the poll reads of every job watching a cluster, shared through Redis per tick.

Jobs waiting on ECS wake on poll-interval boundaries (``EcsGateway.until_next_tick``), so the jobs
watching one cluster wake together, in the same *tick* (``floor(clock / interval)``). The first of
them to read in a tick takes a short lock in Redis and reads for everyone:

- services: every service watched in the cluster (a sorted set in Redis; a job's read adds its
  service for a few ticks), DescribeServices in batches of 10 — k watched services cost ⌈k/10⌉ calls;
- tasks: ListTasks of the whole cluster (RUNNING every tick, STOPPED every ``STOPPED_EVERY`` ticks and
  in between what left the RUNNING listing; 100 a page), then DescribeTasks in batches of 100 of the
  tasks of every service watched for tasks (for its STOPPED tasks only: those) — n such tasks cost
  ⌈n/100⌉ calls.
  A task's service never changes and a task whose lastStatus is STOPPED never changes again, so
  both are kept by ARN (ECS lists a stopped task for about an hour): tasks of other services and
  stopped ones are described once;
- service deployments followed by jobs: DescribeServiceDeployments in batches of 20.

The lock holder sends a read's batches concurrently (a bounded pool per process, ``concurrency``):
against AWS each call waits tens of milliseconds on the network, and 1,000 watched services make a
tick of ~150 calls — one after another, longer than the tick itself. The answers are stored in
Redis for that tick, keyed by account, Region, cluster and tick; the other readers (any process)
wait for them and read them from there. They wait as long as the holder is alive — it renews its
short lock while it reads (``lock_seconds``, renewed every third of it) — and at most
``wait_seconds``: a fixed short wait sent every job of a slow tick to ECS at once (a stampede on the
account's throttling budget, exactly when the tick was slow). A holder that dies stops renewing:
its lock runs out within ``lock_seconds`` and a waiter takes the read over. A snapshot is never older than
the start of its tick, so a job that woke for a tick acts on what ECS said after that tick began.
After a job's own mutation (StopTask, UpdateService), ``SharedReader.changed`` makes it refuse the
snapshots taken before it: it reads ECS directly until a newer one exists. Mutations never go
through here. A service asked for that the tick's snapshot lacks (a job that just started) is read
directly and added to the snapshot for the others. Redis unavailable: direct reads, never a failure.
"""
from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

import redis

from cloud.ecs import EcsReader
from cloud.ecs_cache import dumps, loads
from cloud.ecs_types import TaskStatus

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient
    from mypy_boto3_ecs.type_defs import ServiceTypeDef, TaskTypeDef

log = logging.getLogger("valetkey.aws.gateway")

KEY_PREFIX = "valetkey:ecs-gw:"
TAKEN = ""  # the snapshot hash's field holding when it was taken (no service is named "")
LISTS = ":lists"  # the tasks snapshot's field holding the tick's ListTasks answers (no service name has ":")
STOPPED_ONLY = ":stopped"  # suffix of a tasks snapshot field / watch name: that service's STOPPED tasks only
# How far the wall clocks of two processes may disagree (NTP keeps them far closer): a snapshot
# must be taken at least this long after a job's own change to answer that job.
CLOCK_SKEW = 1.0
# A tick's snapshot is kept this long (real seconds): longer than the slowest tick's readers take
# (1,000 due steps on one process take tens of seconds); expired too soon, it would be read again.
SNAPSHOT_KEEP_SECONDS = 120
WATCH_TICKS = 4  # a service stays watched this many ticks after a job last read it
STOPPED_KEEP_SECONDS = 7200  # ECS lists a stopped task for about an hour
# The cluster's STOPPED tasks are listed every this many ticks (12 s at 3 s); in between, a task that
# left the RUNNING listing is taken as STOPPED (``SharedReader._listing``). A task that started and
# stopped between two ticks' listings is seen at most this many ticks after it stopped.
STOPPED_EVERY = 4
_REDIS_ERRORS = (redis.RedisError, OSError)


class EcsGateway:
    """The process's shared ECS reads; ``reader`` gives one job step its view of a cluster.

    ``wait_seconds``: the longest a reader waits for a live lock holder's snapshot before reading ECS
    itself (a holder stuck far beyond a tick). ``lock_seconds``: the lock's lifetime, renewed every
    third of it while its holder reads; how long waiters wait for a holder that died.
    ``concurrency``: the most batch calls of this process's snapshot reads in flight at once; at or
    below botocore's default connection pool (10 a client), which would otherwise open and discard
    connections."""

    def __init__(self, client: redis.Redis, *, interval: float = 3.0, wait_seconds: float = 60.0,
                 lock_seconds: float = 5.0, concurrency: int = 8) -> None:
        self.redis, self.interval = client, interval
        self.wait_seconds, self.lock_ms = wait_seconds, int(lock_seconds * 1000)
        self.concurrency = concurrency
        self._pool: ThreadPoolExecutor | None = None
        self._held: set[tuple[str, str]] = set()  # (lock key, token) this process holds now
        self._renewer: threading.Thread | None = None
        self._mutex = threading.Lock()

    def pool(self) -> ThreadPoolExecutor | None:
        """The batch calls' pool, made on first use (no threads in a process that never reads)."""
        if self.concurrency <= 1:
            return None
        with self._mutex:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="ecs-gateway")
            return self._pool

    @contextmanager
    def holding(self, key: str, token: str) -> Iterator[None]:
        """While the body runs, the lock ``key`` (ours: ``token``) is renewed; released after."""
        with self._mutex:
            self._held.add((key, token))
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew, name="ecs-gateway-locks", daemon=True)
                self._renewer.start()
        try:
            yield
        finally:
            with self._mutex:
                self._held.discard((key, token))
            _release(self.redis, key, token)

    def _renew(self) -> None:
        """Every third of a lock's life, extend each lock this process holds; ends when none is held."""
        while True:
            time.sleep(self.lock_ms / 3000)
            with self._mutex:
                held = list(self._held)
                if not held:
                    self._renewer = None
                    return
            try:
                pipe = self.redis.pipeline(transaction=False)
                for key, token in held:
                    pipe.eval(_RENEW, 1, key, token, self.lock_ms)
                pipe.execute()
            except _REDIS_ERRORS as e:  # the locks run out; another reader takes over, at worst a read twice
                log.debug("could not renew snapshot locks: %s", type(e).__name__)

    def tick(self, now: float) -> int:
        return math.floor(now / self.interval)

    def until_next_tick(self, now: float, changed_at: float | None = None) -> float:
        """Seconds from ``now`` to just after the next boundary, where every watcher of a cluster wakes.

        ``changed_at``: when the job last changed ECS. A tick's snapshot answers it only when taken
        ``CLOCK_SKEW`` after that, so the wait runs to the first boundary past it: a boundary sooner
        would find the shared snapshot refused and cost a direct read of its own (DescribeServices,
        ListTasks twice, DescribeTasks) — for every job of a burst whose changes fell in a tick's last
        second. ECS takes longer than that to act on a change anyway."""
        at = now if changed_at is None else max(now, changed_at + CLOCK_SKEW)
        return (self.tick(at) + 1) * self.interval - now + 0.001

    def reader(self, ecs: ECSClient, cluster: str, account: str,
               clock: Callable[[], float] = time.time) -> SharedReader:
        return SharedReader(ecs, cluster, self, f"{KEY_PREFIX}{account}:{ecs.meta.region_name}:{cluster}:", clock)


class SharedReader(EcsReader):
    """An ``EcsReader`` whose service and task reads come from the tick's shared snapshot when it is fresh."""

    def __init__(self, ecs: ECSClient, cluster: str, gateway: EcsGateway, prefix: str,
                 clock: Callable[[], float]) -> None:
        super().__init__(ecs, cluster, gateway.pool())
        self.gw, self.prefix, self.clock = gateway, prefix, clock
        self.not_before = -math.inf  # snapshots taken before this are refused (a mutation of ours since)
        self._tasks: dict[str, TaskTypeDef] = {}  # tasks seen through snapshots in this step

    def changed(self) -> None:
        """This job just changed ECS: no snapshot from before now may answer it."""
        self.not_before = self.clock()
        self._tasks.clear()  # what the snapshots said is older than the change too

    # ---- services and service deployments --------------------------------------------------
    def describe(self, names: list[str]) -> list[ServiceTypeDef]:
        return self._shared("svc", "watch", names, super().describe, _service_name)

    def service_deployments(self, arns: list[str]) -> list[dict[str, Any]]:
        return self._shared("sd", "sdwatch", arns, super().service_deployments, _deployment_arn)

    def _shared(self, kind: str, watch: str, names: list[str], direct: Callable[[list[str]], list[Any]],
                key_of: Callable[[Any], str]) -> list[Any]:
        """``names``' answers from the tick's snapshot of ``kind`` (the names marked watched in ``watch``
        for the next ticks), or from ``direct`` — ECS itself — without a fresh one or without Redis."""
        def read(now: float, asked: list[str], have: set[str]) -> dict[str, str]:
            """Every name watched in the cluster (and ``asked``) that the snapshot lacks, read at once."""
            got_watched: list[bytes] = self.gw.redis.zrangebyscore(self.prefix + watch, now, "+inf")  # type: ignore[assignment]
            want = [n for n in dict.fromkeys([*asked, *(m.decode() for m in got_watched)]) if n not in have]
            got = {key_of(x): x for x in direct(want)}
            return {n: dumps(got.get(n)) for n in want}

        try:
            got = self._snapshot(kind, self.clock(), read, names, watch=watch)
        except _REDIS_ERRORS as e:
            log.debug("shared ECS reads unavailable: %s", type(e).__name__)
            return direct(names)
        if got is None:
            return direct(names)
        key, found = got
        missing = [n for n in names if n not in found]
        if missing:  # the snapshot expired under the lock holder's feet: read, and share with the others
            fresh = {key_of(x): x for x in direct(missing)}
            try:
                self.gw.redis.hset(key, mapping={n: dumps(fresh.get(n)) for n in missing})  # type: ignore[arg-type]
            except _REDIS_ERRORS:
                pass
            found.update({n: fresh.get(n) for n in missing})
        return [x for n in names if (x := found.get(n)) is not None]

    # ---- tasks --------------------------------------------------------------------------
    def task_arns(self, service: str, desired_status: str = TaskStatus.RUNNING) -> list[str]:
        if desired_status not in (TaskStatus.RUNNING, TaskStatus.STOPPED):
            return super().task_arns(service, desired_status)  # the snapshot lists these two only
        entry = self._service_tasks(service)
        if entry is None:
            return super().task_arns(service, desired_status)
        return list(entry["running" if desired_status == TaskStatus.RUNNING else "stopped"])

    def tasks(self, arns: list[str]) -> list[TaskTypeDef]:
        """Known from this step's snapshots, else described (a task ECS no longer lists is absent)."""
        missing = [a for a in arns if a not in self._tasks]
        more = {t["taskArn"]: t for t in super().tasks(missing)} if missing else {}
        return [t for a in arns if (t := self._tasks.get(a) or more.get(a)) is not None]

    def running_tasks(self, service: str) -> list[TaskTypeDef]:
        entry = self._service_tasks(service)
        if entry is None:
            return super().running_tasks(service)
        return [t for a in entry["running"] if (t := self._tasks.get(a)) is not None
                and t.get("lastStatus") == TaskStatus.RUNNING]

    def stopped_tasks(self, service: str) -> list[TaskTypeDef]:
        """The service's tasks whose desiredStatus is STOPPED (listed by ECS for about an hour),
        described. What a crash-loop check needs: unlike ``task_arns``, it does not have the
        service's running tasks described every tick for it."""
        entry = self._service_tasks(service, stopped_only=True)
        if entry is None:
            return self.tasks(super().task_arns(service, TaskStatus.STOPPED))
        return [t for a in entry["stopped"] if (t := self._tasks.get(a)) is not None]

    def expect_tasks(self, service: str) -> None:
        """A job will look at ``service``'s tasks in full soon: have the next ticks' first reads include
        them (marked watched for tasks, no read now), rather than the job's first look reading them
        on its own in the middle of a tick."""
        try:
            self.gw.redis.zadd(self.prefix + "twatch", {service: self.clock() + WATCH_TICKS * self.gw.interval})
        except _REDIS_ERRORS:
            pass

    def _service_tasks(self, service: str, stopped_only: bool = False) -> dict[str, Any] | None:
        try:
            now = self.clock()
            name = service + STOPPED_ONLY if stopped_only else service
            got = self._snapshot("tasks", now, self._read_tasks, [name], watch="swatch" if stopped_only else "twatch")
        except _REDIS_ERRORS as e:
            log.debug("shared ECS reads unavailable: %s", type(e).__name__)
            return None
        if got is None:
            return None
        entry = cast("dict[str, Any]", got[1].get(name) or {"running": [], "stopped": [], "tasks": {}})
        self._tasks.update(entry["tasks"])
        return entry

    def _list(self, desired: str) -> list[str]:
        """The whole cluster's tasks of one desiredStatus, 100 a page."""
        return self.list_tasks({"cluster": self.cluster, "desiredStatus": desired,  # type: ignore[typeddict-item]
                                "maxResults": 100}, f"listing the tasks of cluster {self.cluster}")

    def _read_tasks(self, now: float, names: list[str], have: set[str]) -> dict[str, str]:
        """The tasks of every service watched for tasks: the cluster's ARNs listed once per tick (kept
        in the snapshot for newcomers), described only where the service is watched or not yet known
        (a task's service never changes: kept by ARN), and never again once STOPPED.

        A service watched for its STOPPED tasks only (``stopped_tasks``: a field and watch name
        ``NAME:stopped``) has only those described: its running tasks, described every tick for a
        service watched in full (their health moves), are described once, to learn their service."""
        r = self.gw.redis
        tick = self.gw.tick(now)
        key = f"{self.prefix}tasks:{tick}"
        listed = r.hget(key, LISTS) if have else None
        if listed is None:
            lists = self._listing(tick)
        else:
            lists = loads(listed)
        running, stopped = lists["running"], lists["stopped"]
        pipe = r.pipeline(transaction=False)
        pipe.zrangebyscore(self.prefix + "twatch", now, "+inf")
        pipe.zrangebyscore(self.prefix + "swatch", now, "+inf")
        got_full, got_stopped = pipe.execute()
        asked = [*names, *(m.decode() for m in got_full), *(m.decode() for m in got_stopped)]
        want = {n for n in asked if not n.endswith(STOPPED_ONLY) and n not in have}
        want_stopped = {n[:-len(STOPPED_ONLY)] for n in asked if n.endswith(STOPPED_ONLY) and n not in have}
        every = list(dict.fromkeys([*running, *stopped]))
        groups: dict[str, str | None] = {
            a: g.decode() if isinstance(g, bytes) else g
            for a, g in zip(every, r.hmget(self.prefix + "group", every) if every else [])}
        done_key = self.prefix + "stopped"
        known: dict[str, TaskTypeDef] = {}
        if stopped:
            for arn, raw in zip(stopped, r.hmget(done_key, stopped)):
                if raw is not None:
                    known[arn] = loads(raw)
        is_stopped = set(stopped)
        ask = [a for a in every if a not in known
               and ((g := groups.get(a)) is None or g in want or (g in want_stopped and a in is_stopped))]
        fresh = EcsReader.tasks(self, ask)
        running, stopped = _revive(running, stopped, fresh)
        lists = {**lists, "running": running, "stopped": stopped}
        pipe = r.pipeline()
        final = {t["taskArn"]: dumps(t) for t in fresh if t.get("lastStatus") == TaskStatus.STOPPED}
        if final:
            pipe.hset(done_key, mapping=final)  # type: ignore[arg-type]
            pipe.expire(done_key, STOPPED_KEEP_SECONDS)
        new_groups = {t["taskArn"]: _service_of(t) for t in fresh if groups.get(t["taskArn"]) is None}
        if new_groups:
            pipe.hset(self.prefix + "group", mapping=new_groups)  # type: ignore[arg-type]
            pipe.expire(self.prefix + "group", STOPPED_KEEP_SECONDS)
        pipe.execute()
        by_service: dict[str, dict[str, Any]] = {n: {"running": [], "stopped": [], "tasks": {}} for n in want}
        by_stopped: dict[str, dict[str, Any]] = {n: {"running": [], "stopped": [], "tasks": {}}
                                                 for n in want_stopped}
        every_task = {**known, **{t["taskArn"]: t for t in fresh}}
        for status, arns in (("running", running), ("stopped", stopped)):
            for a in arns:
                t = every_task.get(a)
                if t is None:
                    continue
                for e in (by_service.get(_service_of(t)),
                          by_stopped.get(_service_of(t)) if status == "stopped" else None):
                    if e is not None:
                        e[status].append(a)
                        e["tasks"][a] = t
        out = {n: dumps(e) for n, e in by_service.items()}
        for n, e in by_service.items():  # a service read in full answers for its STOPPED tasks too
            if n + STOPPED_ONLY not in have:
                by_stopped.setdefault(n, {"running": [], "stopped": e["stopped"],
                                          "tasks": {a: e["tasks"][a] for a in e["stopped"]}})
        out.update({n + STOPPED_ONLY: dumps(e) for n, e in by_stopped.items()})
        if listed is None:
            out[LISTS] = dumps(lists)
        return out

    def _listing(self, tick: int) -> dict[str, Any]:
        """The cluster's task ARNs for ``tick``: RUNNING listed every tick; STOPPED every
        ``STOPPED_EVERY`` ticks, and in between the previous tick's STOPPED ARNs plus the tasks its
        RUNNING listing held that this one lacks.

        ListTasks(RUNNING) holds the tasks whose desiredStatus is RUNNING, ListTasks(STOPPED) those
        whose desiredStatus is STOPPED (ECS API reference), and a task's desiredStatus never goes back
        to RUNNING: a task that leaves the RUNNING listing is in the STOPPED one from then on (for
        about an hour). So between two STOPPED listings only a task whose whole desiredStatus-RUNNING
        life fell between two ticks' RUNNING listings is missing, and the next STOPPED listing lists
        it: seen at most ``STOPPED_EVERY`` ticks after it stopped, never missed. (A task that a
        lagging listing left out for a tick is harmless here: its description says it still runs.)
        Without the previous tick's listing (nobody read then, or its reader has not finished) the
        STOPPED tasks are listed at once."""
        running = list(dict.fromkeys(self._list(TaskStatus.RUNNING)))  # pages may overlap
        now_running = set(running)
        raw = self.gw.redis.hget(f"{self.prefix}tasks:{tick - 1}", LISTS)
        last = loads(raw) if raw is not None else None
        gone = [a for a in last["running"] if a not in now_running] if last is not None else []
        if last is not None and "stopped_tick" in last and tick - int(last["stopped_tick"]) < STOPPED_EVERY:
            stopped = [a for a in dict.fromkeys([*gone, *last["stopped"]]) if a not in now_running]
            return {"running": running, "stopped": stopped, "stopped_tick": last["stopped_tick"]}
        # ``gone`` too: a task a page skipped is in neither listing (its description says where it is).
        listed = self._list(TaskStatus.STOPPED)
        stopped = [a for a in dict.fromkeys([*listed, *gone]) if a not in now_running]
        return {"running": running, "stopped": stopped, "stopped_tick": tick}

    # ---- the tick's snapshot ------------------------------------------------------------
    def _snapshot(self, kind: str, now: float, read: Callable[[float, list[str], set[str]], dict[str, str]],
                  names: list[str], watch: str) -> tuple[str, dict[str, Any]] | None:
        """(key, name -> answer) of this tick's snapshot of ``kind``, taking it if nobody has;
        None when none fresh enough came in time (the caller reads directly).

        ``names`` are first marked as watched (the sorted set ``watch``) for the next ticks' reads.
        Names the snapshot lacks (watched since it was taken: jobs that just began) are read by one
        reader for all of them, under the same lock, and added to it. Each look at the snapshot is
        one round trip to Redis (a pipeline): a tick of 1,000 jobs makes thousands of them."""
        tick = self.gw.tick(now)
        key = f"{self.prefix}{kind}:{tick}"
        r = self.gw.redis
        deadline = time.monotonic() + self.gw.wait_seconds
        token = uuid.uuid4().hex
        polls = 0
        mark: dict[str, float] | None = {n: now + WATCH_TICKS * self.gw.interval for n in names}
        while True:
            pipe = r.pipeline(transaction=False)
            if mark is not None:
                pipe.zadd(self.prefix + watch, mark)  # type: ignore[arg-type]
            pipe.hget(key, TAKEN)
            pipe.hmget(key, names)
            *_, taken, raws = pipe.execute()
            mark = None
            found: dict[str, Any] = {}
            if taken is not None:
                if float(taken) <= self.not_before + CLOCK_SKEW:
                    return None  # maybe taken before our own change (by another process's clock): not for us
                found = {n: loads(raw) for n, raw in zip(names, raws) if raw is not None}
                if len(found) == len(set(names)):
                    return key, found
            if r.set(key + ":lock", token, nx=True, px=self.gw.lock_ms):
                with self.gw.holding(key + ":lock", token):
                    have: set[str] = set()
                    if taken is not None:  # others may have added some meanwhile
                        have = {k.decode() if isinstance(k, bytes) else str(k) for k in r.hkeys(key)}
                        found = self._fields(r, key, names)
                    stamp = {} if taken is not None else {TAKEN: repr(self.clock())}
                    answers = read(now, names, have)
                    pipe = r.pipeline()
                    pipe.hset(key, mapping={**answers, **stamp})  # type: ignore[arg-type,dict-item]
                    pipe.expire(key, SNAPSHOT_KEEP_SECONDS)
                    pipe.execute()
                return key, {**found, **{n: loads(answers[n]) for n in names if n in answers}}
            # Someone holds the lock and renews it while they read: wait for their snapshot (or for
            # their lock to run out, if they died, and take it over) — up to the hard limit.
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(0.05, 0.01 * 2 ** min(polls, 3)))
            polls += 1

    @staticmethod
    def _fields(r: redis.Redis, key: str, names: Iterable[str]) -> dict[str, Any]:
        names = list(names)
        return {n: loads(raw) for n, raw in zip(names, r.hmget(key, names)) if raw is not None}


def _service_name(s: ServiceTypeDef) -> str:
    return s["serviceName"]


def _deployment_arn(d: dict[str, Any]) -> str:
    return str(d["serviceDeploymentArn"])


def _revive(running: list[str], stopped: list[str], described: list[TaskTypeDef]) -> tuple[list[str], list[str]]:
    """The listings corrected by what the tasks' descriptions say: a task taken as STOPPED (it left
    the RUNNING listing) whose desiredStatus is still RUNNING runs. The RUNNING listing missed it:
    ListTasks is eventually consistent, and a cluster's listing of many pages can skip a task when
    others stop between two pages. Left out, a running task of a job's service would be missing
    from its healthy count (a restart refused "below the minimum" for no reason)."""
    alive = {t["taskArn"] for t in described if t.get("desiredStatus") == TaskStatus.RUNNING}
    revived = [a for a in stopped if a in alive]
    if not revived:
        return running, stopped
    back = set(revived)
    return [*running, *revived], [a for a in stopped if a not in back]


def _service_of(t: TaskTypeDef) -> str:
    """The service a task belongs to ("" for a task no service started): its group ``service:NAME``."""
    group = str(t.get("group", ""))
    return group[len("service:"):] if group.startswith("service:") else ""


_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"


def _release(r: redis.Redis, key: str, token: str) -> None:
    try:
        r.eval(_RELEASE, 1, key, token)
    except _REDIS_ERRORS:
        pass  # it expires by itself
