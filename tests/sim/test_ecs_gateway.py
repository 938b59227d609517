"""The ECS gateway: the poll reads of every job watching a cluster, one set of calls per tick (simulator call log)."""
from __future__ import annotations

import math

import redis as redis_lib

from cloud.ecs_gateway import STOPPED_EVERY, EcsGateway, SharedReader
from cloud.ecs_types import TaskStatus
from ecssim import Simulator
from ecssim.seed import ServiceSpec, seed
from tests.conftest import free_port

from .conftest import client

INTERVAL = 3.0


def gateway(redis_url: str) -> EcsGateway:
    r = redis_lib.Redis.from_url(redis_url)
    r.flushdb()
    return EcsGateway(r, interval=INTERVAL)


def readers(gw: EcsGateway, sim: Simulator, k: int) -> list[SharedReader]:
    """One reader per job (a job's step makes one): all on the simulator's clock."""
    ecs = client("ecs")
    return [gw.reader(ecs, "stg", "111122223333", sim.clock.now) for _ in range(k)]


def next_tick(sim: Simulator, gw: EcsGateway) -> None:
    sim.advance(gw.until_next_tick(sim.clock.now()))


def test_k_watched_services_cost_k_over_10_describe_services_per_tick(sim: Simulator, redis_url: str) -> None:
    k = 25
    names = [f"svc-{i:02d}" for i in range(k)]
    seed(sim, "stg", [ServiceSpec(n, desired=1) for n in names])
    gw = gateway(redis_url)
    next_tick(sim, gw)
    for reader, name in zip(readers(gw, sim, k), names):  # the jobs' first steps: they become watched
        assert reader.service(name).name == name
    for _ in range(3):  # the poll ticks: every job reads its service once
        next_tick(sim, gw)
        sim.calls.clear()
        states = [reader.service(name) for reader, name in zip(readers(gw, sim, k), names)]
        assert [s.name for s in states] == names
        assert sim.calls.count("DescribeServices") == math.ceil(k / 10) == 3
        assert all(len(c.params["services"]) <= 10 for c in sim.calls.of("DescribeServices"))


def test_jobs_that_begin_in_one_tick_are_read_together(sim: Simulator, redis_url: str) -> None:
    names = [f"svc-{i:02d}" for i in range(12)]
    seed(sim, "stg", [ServiceSpec(n, desired=1) for n in names])
    gw = gateway(redis_url)
    next_tick(sim, gw)
    first, *rest = readers(gw, sim, len(names))
    first.service(names[0])  # the tick's snapshot: this one service
    sim.calls.clear()
    for job in rest:  # joined since: registered as watched before they read
        gw.redis.zadd(job.prefix + "watch", {n: sim.clock.now() + 10 for n in names[1:]})
    got = [job.service(n).name for job, n in zip(rest, names[1:])]
    assert got == names[1:]
    assert sim.calls.count("DescribeServices") == 2  # the 11 newcomers, by 10, for all of them


def test_n_tasks_cost_n_over_100_describe_tasks_per_tick(sim: Simulator, redis_url: str) -> None:
    names = [f"svc-{i:02d}" for i in range(5)]
    seed(sim, "stg", [ServiceSpec(n, desired=50) for n in names] + [ServiceSpec("idle", desired=40)])
    gw = gateway(redis_url)
    next_tick(sim, gw)
    for reader, name in zip(readers(gw, sim, 5), names):  # the jobs' first steps: watched from now on
        reader.task_arns(name)
    for _ in range(2):
        next_tick(sim, gw)
        sim.calls.clear()
        seen = {}
        for reader, name in zip(readers(gw, sim, 5), names):
            arns = reader.task_arns(name)
            tasks = reader.tasks(arns)
            assert len(arns) == 50 and {t["group"] for t in tasks} == {f"service:{name}"}
            seen[name] = tasks
            assert reader.task_arns(name, TaskStatus.STOPPED) == []
        assert sim.calls.count("DescribeTasks") == math.ceil(250 / 100) == 3  # not the 40 of "idle"
        described = {a for c in sim.calls.of("DescribeTasks") for a in c.params["tasks"]}
        assert described == {t.arn for n in names for t in sim.tasks("stg", n)}
        # The cluster's 290 RUNNING by 100, and STOPPED (none) when it is the STOPPED listing's tick.
        assert stopped_listings(sim) <= 1 and sim.calls.count("ListTasks") == 3 + stopped_listings(sim)
        assert {t["taskArn"] for t in seen[names[0]]} == {t.arn for t in sim.tasks("stg", names[0])}


def test_a_stopped_task_is_described_once(sim: Simulator, redis_url: str) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=2)])
    gw = gateway(redis_url)
    ecs = client("ecs")
    next_tick(sim, gw)
    victim = readers(gw, sim, 1)[0].task_arns("web")[0]
    ecs.stop_task(cluster="stg", task=victim, reason="test")
    sim.advance(60)  # STOPPED now, and a replacement runs
    next_tick(sim, gw)
    [r1] = readers(gw, sim, 1)
    assert victim in r1.task_arns("web", TaskStatus.STOPPED)
    described = [a for c in sim.calls.of("DescribeTasks") for a in c.params["tasks"]]
    assert described.count(victim) == 2  # before (RUNNING), and once STOPPED
    next_tick(sim, gw)
    [r2] = readers(gw, sim, 1)
    assert victim in r2.task_arns("web", TaskStatus.STOPPED)
    [t] = r2.tasks([victim])
    assert t["lastStatus"] == TaskStatus.STOPPED
    described = [a for c in sim.calls.of("DescribeTasks") for a in c.params["tasks"]]
    assert described.count(victim) == 2  # not again: a STOPPED task never changes


def test_after_its_own_change_a_job_never_reads_the_older_snapshot(sim: Simulator, redis_url: str) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=2)])
    gw = gateway(redis_url)
    ecs = client("ecs")
    next_tick(sim, gw)
    [job] = readers(gw, sim, 1)
    arns = job.task_arns("web")
    ecs.stop_task(cluster="stg", task=arns[0], reason="test")
    job.changed()
    sim.advance(0.5)  # the same tick: its snapshot still says RUNNING
    assert job.tasks(job.task_arns("web"))[0]["taskArn"] != arns[0]  # read ECS itself: no longer wanted
    [other] = readers(gw, sim, 1)  # another job, no change of its own: the tick's snapshot answers it
    assert arns[0] in other.task_arns("web")
    next_tick(sim, gw)
    [job2] = readers(gw, sim, 1)
    assert arns[0] not in job2.task_arns("web")  # the next tick's snapshot is read after the change


def test_a_new_tick_reads_ecs_again(sim: Simulator, redis_url: str) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=1)])
    gw = gateway(redis_url)
    next_tick(sim, gw)
    for reader in readers(gw, sim, 3):
        reader.service("web")
    assert sim.calls.count("DescribeServices") == 1
    sim.advance(INTERVAL)
    readers(gw, sim, 1)[0].service("web")
    assert sim.calls.count("DescribeServices") == 2


def test_without_redis_every_read_goes_to_ecs(sim: Simulator) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=2)])
    dead = redis_lib.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)
    gw = EcsGateway(dead, interval=INTERVAL)
    for reader in readers(gw, sim, 2):
        assert reader.service("web").desired == 2
        assert len(reader.tasks(reader.task_arns("web"))) == 2
    assert sim.calls.count("DescribeServices") == 2 and sim.calls.count("DescribeTasks") == 2



def test_after_a_change_the_wait_runs_to_the_first_tick_whose_snapshot_answers_it(sim: Simulator,
                                                                                  redis_url: str) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=2)])
    gw = gateway(redis_url)
    ecs = client("ecs")
    next_tick(sim, gw)
    sim.advance(INTERVAL - 0.5)  # the tick's last half second
    [job] = readers(gw, sim, 1)
    arns = job.task_arns("web")
    ecs.stop_task(cluster="stg", task=arns[0], reason="test")
    job.changed()
    now = sim.clock.now()
    # The next boundary is half a second away: a snapshot taken there could predate the change by
    # another process's clock (CLOCK_SKEW), so the job waits for the one after it.
    assert gw.until_next_tick(now) < 1
    wait = gw.until_next_tick(now, job.not_before)
    assert INTERVAL < wait <= INTERVAL + 1
    assert gw.until_next_tick(now, job.not_before - 10) == gw.until_next_tick(now)  # an old change: no effect
    [other] = readers(gw, sim, 1)
    sim.advance(wait)
    other.service("web")  # another job takes the tick's snapshots
    other.task_arns("web")
    before = {api: sim.calls.count(api) for api in ("ListTasks", "DescribeTasks", "DescribeServices")}
    job.service("web")
    assert arns[0] not in job.task_arns("web")  # after the change, and from the shared snapshot:
    assert {api: sim.calls.count(api) for api in before} == before  # no read of its own


# ---- the cluster's STOPPED tasks, listed every STOPPED_EVERY ticks ----------------------------
def stopped_listings(sim: Simulator) -> int:
    return sum(1 for c in sim.calls.of("ListTasks") if c.params.get("desiredStatus") == TaskStatus.STOPPED)


def test_stopped_tasks_are_listed_every_few_ticks_and_a_stopping_task_is_seen_at_the_next(
        sim: Simulator, redis_url: str) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=2)])
    gw = gateway(redis_url)
    ecs = client("ecs")
    next_tick(sim, gw)
    victim = readers(gw, sim, 1)[0].task_arns("web")[0]  # a listing of RUNNING and STOPPED: tick 0
    assert stopped_listings(sim) == 1
    next_tick(sim, gw)
    readers(gw, sim, 1)[0].task_arns("web")  # tick 1: RUNNING only
    ecs.stop_task(cluster="stg", task=victim, reason="test")
    next_tick(sim, gw)
    [job] = readers(gw, sim, 1)
    assert victim in job.task_arns("web", TaskStatus.STOPPED)  # tick 2: it left the RUNNING listing
    assert victim not in job.task_arns("web")
    [t] = job.tasks([victim])
    assert t["desiredStatus"] == TaskStatus.STOPPED
    assert stopped_listings(sim) == 1  # ... and no STOPPED listing was needed to see it
    for _ in range(5):  # ticks 3..7: STOPPED listed again at tick 4 only
        next_tick(sim, gw)
        assert victim in readers(gw, sim, 1)[0].task_arns("web", TaskStatus.STOPPED)
    assert stopped_listings(sim) == 2 == math.ceil(8 / STOPPED_EVERY)
    assert sim.calls.count("ListTasks") == 8 + 2


def test_a_task_that_started_and_stopped_between_two_listings_is_seen_within_the_bound(
        sim: Simulator, redis_url: str) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=1)])
    gw = gateway(redis_url)
    ecs = client("ecs")
    next_tick(sim, gw)
    [first] = readers(gw, sim, 1)
    [original] = first.task_arns("web")
    sim.advance(1.5)  # its replacement starts 5 s after StopTask: in a tick's middle, between two listings
    ecs.stop_task(cluster="stg", task=original, reason="test")
    phantom, stopped_in = None, -1
    for _ in range(10):  # every tick read; within it, the replacement is stopped as soon as it exists
        listed = set(readers(gw, sim, 1)[0].task_arns("web"))
        tick = gw.tick(sim.clock.now())
        while gw.tick(sim.clock.now() + 0.25) == tick:
            sim.advance(0.25)
            new = [t.arn for t in sim.tasks("stg", "web") if t.arn != original
                   and t.desired_status == TaskStatus.RUNNING]
            if new:
                assert new[0] not in listed  # it began after this tick's listing
                phantom, stopped_in = new[0], tick
                ecs.stop_task(cluster="stg", task=phantom, reason="test")
                break
        next_tick(sim, gw)
        if phantom:
            break
    assert phantom is not None
    seen_in = None
    for _ in range(STOPPED_EVERY + 1):
        [job] = readers(gw, sim, 1)
        assert phantom not in job.task_arns("web")  # never in a RUNNING listing
        if phantom in job.task_arns("web", TaskStatus.STOPPED):
            seen_in = gw.tick(sim.clock.now())
            assert job.tasks([phantom])[0]["desiredStatus"] == TaskStatus.STOPPED
            break
        next_tick(sim, gw)
    assert seen_in is not None and 0 < seen_in - stopped_in <= STOPPED_EVERY
    # Seen late, through the tick's STOPPED listing (the next tick's RUNNING listing never held it).
    assert seen_in - stopped_in > 1
    assert any(gw.tick(c.time) == seen_in for c in sim.calls.of("ListTasks")
               if c.params.get("desiredStatus") == TaskStatus.STOPPED)


def test_a_services_stopped_tasks_are_read_without_describing_its_running_ones_every_tick(
        sim: Simulator, redis_url: str) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=4)])
    gw = gateway(redis_url)
    ecs = client("ecs")
    next_tick(sim, gw)
    assert readers(gw, sim, 1)[0].stopped_tasks("web") == []
    assert sim.calls.count("DescribeTasks") == 1  # its 4 running tasks, once: to learn their service
    for _ in range(3):
        next_tick(sim, gw)
        assert readers(gw, sim, 1)[0].stopped_tasks("web") == []
    assert sim.calls.count("DescribeTasks") == 1  # not again while nothing stopped
    victim = sim.tasks("stg", "web")[0].arn
    ecs.stop_task(cluster="stg", task=victim, reason="test")
    sim.calls.clear()
    seen: list[str] = []
    for _ in range(6):  # stopping, then STOPPED: described until then, never after
        next_tick(sim, gw)
        [t] = readers(gw, sim, 1)[0].stopped_tasks("web")
        assert t["taskArn"] == victim and t["desiredStatus"] == TaskStatus.STOPPED
        seen.append(t["lastStatus"])
    assert seen[-1] == TaskStatus.STOPPED
    described = [a for c in sim.calls.of("DescribeTasks") for a in c.params["tasks"]]
    others = [a for a in described if a != victim]  # its replacement: once, to learn its service
    assert len(others) == len(set(others)) <= 1
    assert described.count(victim) == sum(1 for s in seen if s != TaskStatus.STOPPED) + 1


def test_a_service_expected_for_its_tasks_is_read_with_the_next_ticks_first_read(sim: Simulator,
                                                                                  redis_url: str) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=2), ServiceSpec("api", desired=2)])
    gw = gateway(redis_url)
    next_tick(sim, gw)
    readers(gw, sim, 1)[0].task_arns("api")
    readers(gw, sim, 1)[0].expect_tasks("web")  # a deployment about to finish: no read now
    next_tick(sim, gw)
    sim.calls.clear()
    first, then = readers(gw, sim, 2)
    first.task_arns("api")  # the tick's first read: api's tasks, and web's
    assert len(then.running_tasks("web")) == 2
    assert sim.calls.count("DescribeTasks") == 1  # web's job did not read on its own


def test_a_service_read_in_full_answers_for_its_stopped_tasks_without_a_read(sim: Simulator,
                                                                              redis_url: str) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=2)])
    gw = gateway(redis_url)
    ecs = client("ecs")
    next_tick(sim, gw)
    victim = readers(gw, sim, 1)[0].task_arns("web")[0]
    ecs.stop_task(cluster="stg", task=victim, reason="test")
    next_tick(sim, gw)
    first, then = readers(gw, sim, 2)
    assert victim in first.task_arns("web", TaskStatus.STOPPED)
    before = len(sim.calls.calls)
    assert [t["taskArn"] for t in then.stopped_tasks("web")] == [victim]  # a job's first crash-loop check
    assert len(sim.calls.calls) == before


def test_a_running_task_a_listing_skipped_still_counts_as_running(sim: Simulator, redis_url: str) -> None:
    """ListTasks is eventually consistent, and a cluster's listing of many pages can skip a task when
    others stop between two pages: a task the RUNNING listing misses must not drop out of its
    service's running tasks (a restart would count one healthy task fewer and refuse)."""
    seed(sim, "stg", [ServiceSpec("web", desired=3)])
    gw = gateway(redis_url)
    ecs = client("ecs")
    skipped: list[str] = []
    removed = 0

    def skip_one(parsed: dict, **_: object) -> None:  # AWS' side: a page that lacks one task
        nonlocal removed
        if skipped and skipped[0] in parsed.get("taskArns", []):
            parsed["taskArns"].remove(skipped[0])
            removed += 1

    ecs.meta.events.register("after-call.ecs.ListTasks", skip_one)
    next_tick(sim, gw)
    every = sorted(gw.reader(ecs, "stg", "111122223333", sim.clock.now).task_arns("web"))
    assert len(every) == 3
    skipped.append(every[0])
    for _ in range(STOPPED_EVERY + 1):  # ticks that list STOPPED tasks and ticks that do not
        next_tick(sim, gw)
        sim.calls.clear()
        job = gw.reader(ecs, "stg", "111122223333", sim.clock.now)
        assert sorted(job.task_arns("web")) == every
        assert sorted(t["taskArn"] for t in job.running_tasks("web")) == every
        assert every[0] not in job.task_arns("web", TaskStatus.STOPPED)
        described = [a for c in sim.calls.of("DescribeTasks") for a in c.params["tasks"]]
        assert every[0] in described  # ... because its description said it still runs
    assert removed == STOPPED_EVERY + 1  # every tick's RUNNING listing lacked it
