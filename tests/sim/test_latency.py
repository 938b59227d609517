"""ecssim's API latency: every call blocks its caller for the latency, outside the simulator's lock."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from ecssim import Latency, Simulator
from ecssim.seed import ServiceSpec, seed

from .conftest import client


def test_without_latency_nothing_sleeps(sim: Simulator) -> None:
    slept: list[float] = []
    sim.latency = Latency(sleep=slept.append)
    seed(sim, "stg", [ServiceSpec("web", desired=1)])
    client("ecs").describe_services(cluster="stg", services=["web"])
    assert slept == []


def test_each_call_sleeps_its_latency_before_the_simulator_handles_it(sim: Simulator) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=2)])
    ecs = client("ecs")
    seen: list[tuple[float, int]] = []  # (seconds, DescribeServices logged so far) at each sleep

    def sleep(seconds: float) -> None:
        seen.append((seconds, sim.calls.count("DescribeServices")))

    sim.latency = Latency(0.05, sleep=sleep)
    sim.calls.clear()
    for _ in range(3):
        ecs.describe_services(cluster="stg", services=["web"])
    # One sleep per call, of the latency, each before its call reached the simulator's log.
    assert seen == [(0.05, 0), (0.05, 1), (0.05, 2)]
    assert sim.calls.count("DescribeServices") == 3


def test_jitter_stays_within_its_bounds_and_never_below_zero() -> None:
    lat = Latency(0.01, jitter=0.05, seed=3)
    draws = [lat.draw() for _ in range(500)]
    assert all(0.0 <= d <= 0.06 for d in draws)
    assert min(draws) == 0.0 and len(set(draws)) > 100
    with pytest.raises(ValueError):
        Latency(-1)


def test_concurrent_calls_are_in_flight_together(sim: Simulator) -> None:
    """k calls from k threads all sleep at once: none of them waits for another to finish. A
    barrier of k in the sleeper is passed only if all k are inside their latency together (with
    the sleep under the simulator's lock it would break: one call at a time)."""
    k = 6
    seed(sim, "stg", [ServiceSpec(f"svc-{i}", desired=1) for i in range(k)])
    barrier = threading.Barrier(k, timeout=60)  # generous: not a timing assertion, a deadlock guard
    inside: list[int] = []
    lock = threading.Lock()

    def sleep(_: float) -> None:
        with lock:
            inside.append(len(inside) + 1)
        barrier.wait()

    sim.latency = Latency(0.05, sleep=sleep)
    ecs = [client("ecs") for _ in range(k)]
    with ThreadPoolExecutor(k) as pool:
        got = list(pool.map(lambda i: ecs[i].describe_services(cluster="stg", services=[f"svc-{i}"]),
                            range(k)))
    assert not barrier.broken
    assert [g["services"][0]["serviceName"] for g in got] == [f"svc-{i}" for i in range(k)]
    assert inside == list(range(1, k + 1))
