"""The webhook's service lookups, coalesced: concurrent misses of an environment share DescribeServices calls.

Real threads against the ECS simulator (or a botocore Stubber). The first call
is held at botocore's ``provide-client-params`` event until the other threads
are queued behind it, so which names end up in which call does not depend on
the machine's speed.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from botocore.stub import Stubber

from cloud.aws import AwsClients
from cloud.ecs_batch import WAIT_TIMEOUT_CODE
from cloud.errors import AwsError
from ecssim import Simulator
from ecssim.seed import ServiceSpec, seed
from scope.catalog import Environment
from scope.errors import NotFound
from tests.sim.conftest import NO_RETRY
from web.webhook_service import ServiceCache

STG = Environment(name="staging", cls="staging", enabled=True, region="us-east-1", cluster="stg")


class HeldFirstCall:
    """Holds the first DescribeServices of a client until ``release`` (a botocore event handler);
    ``asked`` lists the names of every call, as sent."""

    def __init__(self, ecs: Any) -> None:
        self.entered, self.released = threading.Event(), threading.Event()
        self.asked: list[list[str]] = []
        self._lock = threading.Lock()
        ecs.meta.events.register("provide-client-params.ecs.DescribeServices", self)

    def __call__(self, params: dict[str, Any], **_: Any) -> None:
        with self._lock:
            first = not self.asked
            self.asked.append(list(params["services"]))
        if first:
            self.entered.set()
            assert self.released.wait(60), "the test never released the first call"

    def release(self) -> None:
        self.released.set()


def wait_for(what: Callable[[], bool], timeout: float = 60.0) -> None:
    """Wait until ``what`` holds (the bound only keeps a broken test from hanging)."""
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


class Lookups:
    """Threads each asking the cache for one service; ``answers[i]`` is a task definition or the error."""

    def __init__(self, cache: ServiceCache) -> None:
        self.cache = cache
        self.answers: dict[int, Any] = {}
        self.threads: list[threading.Thread] = []

    def start(self, *names: str) -> None:
        for name in names:
            i = len(self.threads)
            t = threading.Thread(target=self._run, args=(i, name), daemon=True)
            self.threads.append(t)
            t.start()

    def _run(self, i: int, name: str) -> None:
        try:
            self.answers[i] = self.cache.task_definition(STG, name)
        except Exception as e:  # noqa: BLE001 - the test looks at what each thread got
            self.answers[i] = e

    def join(self) -> list[Any]:
        for t in self.threads:
            t.join(60)
            assert not t.is_alive()
        return [self.answers[i] for i in range(len(self.threads))]


def held_cache(aws: AwsClients, **kw: Any) -> tuple[ServiceCache, HeldFirstCall]:
    cache = ServiceCache(aws, **kw)
    return cache, HeldFirstCall(aws.ecs(STG, shared_reads=True))


def described(sim: Simulator) -> list[list[str]]:
    return [list(c.params["services"]) for c in sim.calls.of("DescribeServices")]


def test_concurrent_misses_share_calls_of_at_most_ten_names(sim: Simulator) -> None:
    names = [f"s{i:02d}" for i in range(25)]
    seed(sim, "stg", [ServiceSpec(n, desired=0) for n in names])
    cache, held = held_cache(AwsClients(NO_RETRY))
    lookups = Lookups(cache)
    lookups.start(names[0])
    assert held.entered.wait(60)
    lookups.start(*names[1:])
    wait_for(lambda: cache.batcher(STG).waiting() == 24)
    held.release()
    assert lookups.join() == [f"stg-{n}:1" for n in names]
    calls = described(sim)
    assert calls[0] == ["s00"]  # a lone miss is asked at once, alone
    assert [len(c) for c in calls[1:]] == [10, 10, 4]  # the 24 queued behind it: 3 calls, not 24
    assert sorted(n for c in calls for n in c) == names  # every name read once


def test_a_missing_or_deleted_service_in_a_batch_is_not_found_for_its_thread_only(sim: Simulator) -> None:
    seed(sim, "stg", [ServiceSpec(n, desired=0) for n in ("s0", "s1", "s2", "old")])
    sim_ecs = AwsClients(NO_RETRY).ecs(STG)
    sim_ecs.delete_service(cluster="stg", service="old", force=True)
    sim.calls.clear()
    cache, held = held_cache(AwsClients(NO_RETRY))
    lookups = Lookups(cache)
    lookups.start("s0")
    assert held.entered.wait(60)
    lookups.start("s1", "gone", "old", "s2")
    wait_for(lambda: cache.batcher(STG).waiting() == 4)
    held.release()
    first, s1, gone, old, s2 = lookups.join()
    assert (first, s1, s2) == ("stg-s0:1", "stg-s1:1", "stg-s2:1")
    assert isinstance(gone, NotFound) and "'gone'" in gone.detail
    assert isinstance(old, NotFound) and "'old'" in old.detail
    calls = described(sim)
    assert calls[0] == ["s0"] and sorted(calls[1]) == ["gone", "old", "s1", "s2"] and len(calls) == 2


def test_the_same_name_missed_at_once_is_read_once(sim: Simulator) -> None:
    seed(sim, "stg", [ServiceSpec(n, desired=0) for n in ("a", "b")])
    cache, held = held_cache(AwsClients(NO_RETRY))
    lookups = Lookups(cache)
    lookups.start("a")
    assert held.entered.wait(60)
    lookups.start("a", "a", "a", "b", "b", "b", "b")  # 3 join the call in flight, 4 queue one name
    wait_for(lambda: cache.batcher(STG).waiting() == 7)
    held.release()
    assert lookups.join() == ["stg-a:1"] * 4 + ["stg-b:1"] * 4
    assert described(sim) == [["a"], ["b"]]


def test_an_aws_throttle_reaches_every_waiter_of_its_batch(sim: Simulator) -> None:
    names = ["s0", "s1", "s2", "s3"]
    seed(sim, "stg", [ServiceSpec(n, desired=0) for n in names])
    sim.throttle.enabled, sim.throttle.scale = True, 0.01  # one call's burst; the clock does not move
    cache, held = held_cache(AwsClients(NO_RETRY))
    lookups = Lookups(cache)
    lookups.start("s0")
    assert held.entered.wait(60)
    lookups.start("s1", "s2", "s3")
    wait_for(lambda: cache.batcher(STG).waiting() == 3)
    held.release()
    first, *batch = lookups.join()
    assert first == "stg-s0:1"
    for e in batch:  # each its own error object, as the view maps it: 503 with Retry-After
        assert isinstance(e, AwsError) and e.code == "ThrottlingException" and e.transient and e.status == 503
    assert len({id(e) for e in batch}) == 3
    assert [c.error for c in sim.calls.of("DescribeServices")] == ["", "ThrottlingException"]


def test_access_denied_reaches_every_waiter_of_its_batch_and_is_not_remembered() -> None:
    aws = AwsClients(NO_RETRY)
    cache, held = held_cache(aws)
    stub = Stubber(aws.ecs(STG, shared_reads=True))
    td = "arn:aws:ecs:us-east-1:123456789012:task-definition/stg-s0:4"
    stub.add_response("describe_services", {"services": [{"serviceName": "s0", "status": "ACTIVE",
                                                          "taskDefinition": td}], "failures": []},
                      {"cluster": "stg", "services": ["s0"]})
    stub.add_client_error("describe_services", "AccessDeniedException", "not authorized", 400,
                          expected_params=None)  # s1 and s2 in either order: checked below
    stub.add_response("describe_services", {"services": [], "failures": [{"arn": "s1", "reason": "MISSING"}]},
                      {"cluster": "stg", "services": ["s1"]})
    with stub:
        lookups = Lookups(cache)
        lookups.start("s0")
        assert held.entered.wait(60)
        lookups.start("s1", "s2")
        wait_for(lambda: cache.batcher(STG).waiting() == 2)
        held.release()
        first, s1, s2 = lookups.join()
        assert first == "stg-s0:4"
        for e in (s1, s2):  # a refusal stays a 502 naming AWS' code
            assert isinstance(e, AwsError) and e.code == "AccessDeniedException" and not e.transient
            assert e.status == 502 and "AccessDenied" in e.detail
        with pytest.raises(NotFound):  # the error was not cached: the next miss asks again
            cache.task_definition(STG, "s1")
        assert [sorted(names) for names in held.asked] == [["s0"], ["s1", "s2"], ["s1"]]
        stub.assert_no_pending_responses()


def test_a_waiter_gives_up_after_max_wait_and_its_name_is_not_asked_for(sim: Simulator) -> None:
    seed(sim, "stg", [ServiceSpec(n, desired=0) for n in ("s0", "s1")])
    cache, held = held_cache(AwsClients(NO_RETRY), max_wait=0.2)
    lookups = Lookups(cache)
    lookups.start("s0")
    assert held.entered.wait(60)
    lookups.start("s1")
    lookups.threads[1].join(60)  # gives up while the call in front of it is still held
    e = lookups.answers[1]
    assert isinstance(e, AwsError) and e.code == WAIT_TIMEOUT_CODE and e.transient and e.status == 503
    held.release()
    assert lookups.join()[0] == "stg-s0:1"
    assert described(sim) == [["s0"]]  # nobody waits for s1 any more: no call for it
    assert cache.task_definition(STG, "s1") == "stg-s1:1"  # a later miss asks normally
    assert described(sim) == [["s0"], ["s1"]]


def test_answers_are_remembered_for_the_ttl(sim: Simulator) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=0)])
    now = [100.0]
    cache = ServiceCache(AwsClients(NO_RETRY), ttl=10.0, clock=lambda: now[0])
    assert cache.task_definition(STG, "web") == "stg-web:1"
    now[0] += 9.9
    assert cache.task_definition(STG, "web") == "stg-web:1"
    assert sim.calls.count("DescribeServices") == 1
    now[0] += 0.2
    assert cache.task_definition(STG, "web") == "stg-web:1"
    assert sim.calls.count("DescribeServices") == 2
