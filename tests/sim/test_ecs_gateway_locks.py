"""The ECS gateway's lock holder: its batch calls in flight together (bounded), its lock renewed while it
reads, so waiters wait for a live holder and take over from a dead one (simulator call log, real Redis)."""
from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis as redis_lib
from botocore.exceptions import ReadTimeoutError

from cloud.ecs import EcsReader
from cloud.ecs_gateway import TAKEN, EcsGateway, SharedReader
from ecssim import Latency, Simulator
from ecssim.seed import ServiceSpec, seed

from .conftest import client

INTERVAL = 3.0
DEADLOCK_GUARD = 60  # seconds a test thread may take before the test calls it hung (not a timing assertion)


def gateway(redis_url: str, **kw: Any) -> EcsGateway:
    r = redis_lib.Redis.from_url(redis_url)
    r.flushdb()
    return EcsGateway(r, interval=INTERVAL, **kw)


def reader(gw: EcsGateway, sim: Simulator, ecs: Any = None) -> SharedReader:
    return gw.reader(ecs or client("ecs"), "stg", "111122223333", sim.clock.now)


def watch(gw: EcsGateway, sim: Simulator, names: list[str]) -> None:
    """Mark ``names`` watched, as the jobs polling them would have."""
    r = reader(gw, sim)
    gw.redis.zadd(r.prefix + "watch", {n: sim.clock.now() + 10 for n in names})


class InFlight:
    """A Latency sleeper counting the calls inside their latency at once; with ``barrier`` each call
    waits there until that many are inside together (passed only if they really overlap)."""

    def __init__(self, barrier: int = 0) -> None:
        self.now = self.most = self.calls = 0
        self.lock = threading.Lock()
        self.barrier = threading.Barrier(barrier, timeout=DEADLOCK_GUARD) if barrier else None

    def __call__(self, _: float) -> None:
        with self.lock:
            self.now += 1
            self.calls += 1
            self.most = max(self.most, self.now)
        try:
            if self.barrier is not None:
                self.barrier.wait()
        finally:
            with self.lock:
                self.now -= 1


def test_the_holder_sends_a_ticks_batches_together(sim: Simulator, redis_url: str) -> None:
    names = [f"svc-{i:02d}" for i in range(30)]
    seed(sim, "stg", [ServiceSpec(n, desired=1) for n in names])
    gw = gateway(redis_url)
    watch(gw, sim, names)
    flight = InFlight(barrier=3)  # the 3 DescribeServices of 30 services: passed only all at once
    sim.latency = Latency(0.05, sleep=flight)
    sim.calls.clear()
    got = reader(gw, sim).describe([names[0]])
    assert [s["serviceName"] for s in got] == [names[0]]
    assert not flight.barrier.broken  # type: ignore[union-attr]
    assert flight.most == 3 and sim.calls.count("DescribeServices") == 3
    assert sorted(n for c in sim.calls.of("DescribeServices") for n in c.params["services"]) == names


def test_the_pool_bounds_the_calls_in_flight(sim: Simulator, redis_url: str) -> None:
    names = [f"svc-{i:02d}" for i in range(80)]
    seed(sim, "stg", [ServiceSpec(n, desired=1) for n in names])
    gw = gateway(redis_url, concurrency=4)
    watch(gw, sim, names)
    flight = InFlight(barrier=4)  # 8 batches on 4 threads: two rounds of exactly 4
    sim.latency = Latency(0.05, sleep=flight)
    reader(gw, sim).describe([names[0]])
    assert not flight.barrier.broken  # type: ignore[union-attr]
    assert flight.most == 4 and flight.calls == 8


def test_without_a_pool_the_batches_go_one_after_another(sim: Simulator, redis_url: str) -> None:
    names = [f"svc-{i:02d}" for i in range(30)]
    seed(sim, "stg", [ServiceSpec(n, desired=1) for n in names])
    gw = gateway(redis_url, concurrency=1)
    watch(gw, sim, names)
    flight = InFlight()
    sim.latency = Latency(0.05, sleep=flight)
    reader(gw, sim).describe([names[0]])
    assert flight.calls == 3 and flight.most == 1


def test_concurrent_batches_answer_in_the_order_asked(sim: Simulator) -> None:
    names = [f"svc-{i:03d}" for i in range(45)]
    seed(sim, "stg", [ServiceSpec(n, desired=2) for n in names])
    sim.latency = Latency(0.01, jitter=0.01, seed=5)  # batches finish in a shuffled order
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(5) as pool:
        r = EcsReader(client("ecs"), "stg", pool)
        wanted = list(reversed(names))
        assert [s["serviceName"] for s in r.describe(wanted)] == wanted
        arns = [a for n in names for a in r.task_arns(n)]
        assert len(arns) == 90
        assert [t["taskArn"] for t in r.tasks(arns)] == arns
        # One failing batch fails the read, as the same read without a pool would.
        with pytest.raises(Exception) as pooled:
            EcsReader(client("ecs"), "no-such-cluster", pool).describe(names)
    with pytest.raises(Exception) as sequential:
        EcsReader(client("ecs"), "no-such-cluster").describe(names)
    assert type(pooled.value) is type(sequential.value) and str(pooled.value) == str(sequential.value)


def test_waiters_wait_for_a_live_holder_longer_than_its_lock_lives(sim: Simulator, redis_url: str) -> None:
    """The holder's read outlasts its lock's lifetime several times over; it renews the lock, so the
    waiter neither takes over nor reads ECS itself: one DescribeServices for both."""
    seed(sim, "stg", [ServiceSpec("web", desired=2)])
    gw = gateway(redis_url, lock_seconds=2.0, wait_seconds=DEADLOCK_GUARD)
    release, blocked = threading.Event(), threading.Event()

    def slow(_: float) -> None:  # the holder's call hangs on the network until released
        blocked.set()
        release.wait(DEADLOCK_GUARD)

    sim.latency = Latency(0.05, sleep=slow)
    sim.calls.clear()
    out: dict[str, Any] = {}
    holder = threading.Thread(target=lambda: out.setdefault("holder", reader(gw, sim).describe(["web"])))
    holder.start()
    assert blocked.wait(DEADLOCK_GUARD)
    waiter = threading.Thread(target=lambda: out.setdefault("waiter", reader(gw, sim).describe(["web"])))
    waiter.start()
    lock_key = f"{reader(gw, sim).prefix}svc:{gw.tick(sim.clock.now())}:lock"
    token = gw.redis.get(lock_key)
    time.sleep(5.0)  # 2.5 lock lifetimes pass while the holder's call hangs (setup, not an assertion)
    assert gw.redis.get(lock_key) == token  # still the holder's: renewed, not run out
    assert waiter.is_alive()  # still waiting for it
    release.set()
    holder.join(DEADLOCK_GUARD)
    waiter.join(DEADLOCK_GUARD)
    assert [s["serviceName"] for s in out["waiter"]] == ["web"] == [s["serviceName"] for s in out["holder"]]
    assert sim.calls.count("DescribeServices") == 1
    assert gw.redis.get(lock_key) is None  # released once read


def test_a_dead_holders_lock_runs_out_and_a_waiter_takes_the_read_over(sim: Simulator, redis_url: str) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=2)])
    gw = gateway(redis_url, lock_seconds=1.0, wait_seconds=DEADLOCK_GUARD)
    r = reader(gw, sim)
    key = f"{r.prefix}svc:{gw.tick(sim.clock.now())}"
    # A holder in a process that died mid-read: its lock is there, and nobody renews it.
    gw.redis.set(key + ":lock", "dead-process", px=1000)
    sim.calls.clear()
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(r.describe(["web"])))
    t.start()
    t.join(DEADLOCK_GUARD)
    assert not t.is_alive()  # did not wait forever
    assert [s["serviceName"] for s in out[0]] == ["web"]
    assert sim.calls.count("DescribeServices") == 1
    assert gw.redis.hget(key, TAKEN) is not None  # it took the read over (for the others), not read alone


def test_a_holder_whose_read_fails_releases_its_lock_at_once(sim: Simulator, redis_url: str) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=2)])
    gw = gateway(redis_url)
    failing = client("ecs")

    def timeout(**_: Any) -> None:
        raise ReadTimeoutError(endpoint_url="https://ecs.us-east-1.amazonaws.com")

    failing.meta.events.register("before-send.ecs.DescribeServices", timeout)
    holder = reader(gw, sim, failing)
    key = f"{holder.prefix}svc:{gw.tick(sim.clock.now())}"
    sim.calls.clear()
    with pytest.raises(Exception):
        holder.describe(["web"])
    assert gw.redis.get(key + ":lock") is None
    assert [s["serviceName"] for s in reader(gw, sim).describe(["web"])] == ["web"]
    assert sim.calls.count("DescribeServices") == 1  # the next reader's: the failed one never reached ECS


def test_a_holder_stuck_beyond_the_limit_is_not_waited_for(sim: Simulator, redis_url: str) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=2)])
    gw = gateway(redis_url, wait_seconds=0.5)
    r = reader(gw, sim)
    key = f"{r.prefix}svc:{gw.tick(sim.clock.now())}"
    gw.redis.set(key + ":lock", "alive-but-stuck", px=600_000)
    sim.calls.clear()
    assert [s["serviceName"] for s in r.describe(["web"])] == ["web"]
    assert sim.calls.count("DescribeServices") == 1  # read directly
    assert gw.redis.hget(key, TAKEN) is None  # no snapshot: the holder's read is still its own
    assert gw.redis.get(key + ":lock") == b"alive-but-stuck"


def test_without_redis_reads_go_to_ecs_in_batches_on_the_pool(sim: Simulator) -> None:
    from tests.conftest import free_port

    names = [f"svc-{i:02d}" for i in range(20)]
    seed(sim, "stg", [ServiceSpec(n, desired=1) for n in names])
    dead = redis_lib.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)
    gw = EcsGateway(dead, interval=INTERVAL)
    flight = InFlight(barrier=2)
    sim.latency = Latency(0.05, sleep=flight)
    got = reader(gw, sim).describe(names)
    assert [s["serviceName"] for s in got] == names
    assert not flight.barrier.broken and flight.calls == 2  # type: ignore[union-attr]


def test_the_call_budget_takes_a_token_for_each_concurrent_batch(sim: Simulator, redis_url: str) -> None:
    from cloud.budget import CALLS_KEY, KEY_PREFIX, CallBudget

    names = [f"svc-{i:02d}" for i in range(30)]
    seed(sim, "stg", [ServiceSpec(n, desired=1) for n in names])
    gw = gateway(redis_url)
    watch(gw, sim, names)
    budget = CallBudget(gw.redis, share=0.5)
    ecs = client("ecs")
    budget.instrument(ecs, lambda: "111122223333")
    flight = InFlight(barrier=3)
    sim.latency = Latency(0.05, sleep=flight)
    reader(gw, sim, ecs).describe([names[0]])
    assert not flight.barrier.broken  # type: ignore[union-attr]
    assert int(gw.redis.hget(CALLS_KEY, "ecs:DescribeServices") or 0) == 3 == sim.calls.count("DescribeServices")
    assert gw.redis.exists(f"{KEY_PREFIX}111122223333:us-east-1:ecs-service-read")  # the bucket was drawn from
