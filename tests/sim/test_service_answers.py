"""The webhook's existence checks share their answers between web processes (Redis, per service name).

Each "process" is its own ServiceCache with its own AwsClients (no pages' read
cache, so only the shared answers can spare a call), on the same Redis; the
ECS simulator's call log or a botocore Stubber counts the DescribeServices
calls. Wall clocks are injected: expiry is decided by the entry's time, not by
waiting.
"""
from __future__ import annotations

import json
from typing import Any

import pytest
import redis as redis_lib
from botocore.stub import Stubber

from cloud.aws import AwsClients
from cloud.ecs_cache import SERVICE_KEY_PREFIX
from cloud.errors import AwsError
from ecssim import Simulator
from ecssim.seed import ServiceSpec, seed
from scope.catalog import Environment
from scope.errors import NotFound
from tests.conftest import free_port
from tests.sim.conftest import NO_RETRY
from tests.sim.test_ecs_batch import STG, Lookups, described, held_cache, wait_for
from web.webhook_service import ServiceCache

TD = "arn:aws:ecs:us-east-1:123456789012:task-definition/stg-web:4"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def r(redis_url: str) -> redis_lib.Redis:
    return redis_lib.Redis.from_url(redis_url)


def process(r: redis_lib.Redis | None, wall: Clock | None = None, clock: Clock | None = None,
            aws: AwsClients | None = None) -> ServiceCache:
    kw: dict[str, Any] = {}
    if wall is not None:
        kw["wall"] = wall
    if clock is not None:
        kw["clock"] = clock
    return ServiceCache(aws or AwsClients(NO_RETRY), ttl=10.0, shared=r, **kw)


def shared_keys(r: redis_lib.Redis) -> list[str]:
    return sorted(k.decode() for k in r.scan_iter(match=f"{SERVICE_KEY_PREFIX}*"))


def test_one_process_answer_is_used_by_another_without_a_describe_services(sim: Simulator,
                                                                           r: redis_lib.Redis) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=0)])
    first, second = process(r), process(r)
    assert first.task_definition(STG, "web") == "stg-web:1"
    assert sim.calls.count("DescribeServices") == 1
    assert second.task_definition(STG, "web") == "stg-web:1"
    assert sim.calls.count("DescribeServices") == 1  # the second process asked Redis, not ECS
    [key] = shared_keys(r)
    # account, Region, cluster, role ("-": none), name; the value is JSON (never pickle)
    assert key == f"{SERVICE_KEY_PREFIX}123456789012:us-east-1:stg:-:web"
    assert json.loads(r.get(key))["td"].endswith("task-definition/stg-web:1")


def test_another_cluster_or_role_does_not_share_the_answer(sim: Simulator, r: redis_lib.Redis) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=0)])
    seed(sim, "other", [ServiceSpec("web", desired=0)])
    cache = process(r)
    assert cache.task_definition(STG, "web") == "stg-web:1"
    other = Environment(name="qa", cls="staging", enabled=True, region="us-east-1", cluster="other")
    assert process(r).task_definition(other, "web") == "other-web:1"
    assert described(sim) == [["web"], ["web"]]
    assert len(shared_keys(r)) == 2


def test_a_shared_answer_expires_ttl_after_ecs_was_read_not_after_it_was_shared(sim: Simulator,
                                                                                r: redis_lib.Redis) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=0)])
    wall = Clock(1000.0)
    assert process(r, wall).task_definition(STG, "web") == "stg-web:1"
    wall.now = 1006.0  # 6 s later another process takes it from Redis...
    mono = Clock(50.0)
    second = process(r, wall, mono)
    assert second.task_definition(STG, "web") == "stg-web:1"
    assert sim.calls.count("DescribeServices") == 1
    mono.now += 3.9  # ...and keeps it only the 4 s it had left
    assert second.task_definition(STG, "web") == "stg-web:1"
    assert sim.calls.count("DescribeServices") == 1
    mono.now += 0.2
    wall.now = 1010.1  # expired in Redis too (by its time, whatever Redis still holds)
    assert second.task_definition(STG, "web") == "stg-web:1"
    assert sim.calls.count("DescribeServices") == 2
    wall.now = 1011.0  # the fresh answer was shared again: a third process needs no call
    assert process(r, wall).task_definition(STG, "web") == "stg-web:1"
    assert sim.calls.count("DescribeServices") == 2


def test_not_found_is_not_shared_and_is_asked_again(sim: Simulator, r: redis_lib.Redis) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=0)])
    first, second = process(r), process(r)
    with pytest.raises(NotFound):
        first.task_definition(STG, "new")
    assert shared_keys(r) == [] and described(sim) == [["new"]]
    seed(sim, "stg", [ServiceSpec("new", desired=0)])  # created a moment later: accepted at once
    sim.calls.clear()
    assert second.task_definition(STG, "new") == "stg-new:1"
    assert described(sim) == [["new"]]


def test_a_deleted_service_is_not_found_once_its_shared_answer_expires(sim: Simulator, r: redis_lib.Redis) -> None:
    seed(sim, "stg", [ServiceSpec("old", desired=0)])
    wall = Clock(1000.0)
    assert process(r, wall).task_definition(STG, "old") == "stg-old:1"
    AwsClients(NO_RETRY).ecs(STG).delete_service(cluster="stg", service="old", force=True)
    wall.now = 1009.0  # within the TTL: the answer stands, as it would in the process that read it
    assert process(r, wall).task_definition(STG, "old") == "stg-old:1"
    wall.now = 1010.0
    with pytest.raises(NotFound):
        process(r, wall).task_definition(STG, "old")


def test_without_redis_each_process_asks_ecs_and_nothing_fails(sim: Simulator) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=0)])
    dead = redis_lib.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)
    mono = Clock(50.0)  # a refused connection takes redis-py seconds of retries: the memory must not expire
    first, second = process(dead, clock=mono), process(dead, clock=mono)
    assert first.task_definition(STG, "web") == "stg-web:1"
    assert second.task_definition(STG, "web") == "stg-web:1"
    assert first.task_definition(STG, "web") == "stg-web:1"  # its own memory still works
    with pytest.raises(NotFound):
        second.task_definition(STG, "gone")
    assert described(sim) == [["web"], ["web"], ["gone"]]


def test_an_unreadable_shared_entry_is_a_miss(sim: Simulator, r: redis_lib.Redis) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=0)])
    key = f"{SERVICE_KEY_PREFIX}123456789012:us-east-1:stg:-:web"
    r.set(key, b"\x80\x04not json")  # e.g. a pickle: never loaded as one
    assert process(r).task_definition(STG, "web") == "stg-web:1"
    assert sim.calls.count("DescribeServices") == 1
    assert json.loads(r.get(key))["td"].endswith("stg-web:1")  # replaced by the answer


def test_an_aws_error_is_not_stored_and_the_next_process_asks_ecs(r: redis_lib.Redis) -> None:
    failing, answering = AwsClients(NO_RETRY), AwsClients(NO_RETRY)
    with Stubber(failing.ecs(STG, shared_reads=True)) as bad, Stubber(answering.ecs(STG, shared_reads=True)) as ok:
        bad.add_client_error("describe_services", "AccessDeniedException", "not authorized", 400,
                             expected_params={"cluster": "stg", "services": ["web"]})
        ok.add_response("describe_services", {"services": [{"serviceName": "web", "status": "ACTIVE",
                                                            "taskDefinition": TD}], "failures": []},
                        {"cluster": "stg", "services": ["web"]})
        with pytest.raises(AwsError) as e:
            process(r, aws=failing).task_definition(STG, "web")
        assert e.value.code == "AccessDeniedException"
        assert shared_keys(r) == []
        assert process(r, aws=answering).task_definition(STG, "web") == "stg-web:4"
        bad.assert_no_pending_responses()
        ok.assert_no_pending_responses()
    assert len(shared_keys(r)) == 1


def test_a_coalesced_call_asks_ecs_only_for_names_another_process_answered_meanwhile(
        sim: Simulator, r: redis_lib.Redis) -> None:
    names = ["s0", "s1", "s2", "s3", "s4"]
    seed(sim, "stg", [ServiceSpec(n, desired=0) for n in names])
    other = process(r)
    cache, held = held_cache(AwsClients(NO_RETRY), ttl=10.0, shared=r)
    lookups = Lookups(cache)
    lookups.start("s0")
    assert held.entered.wait(60)
    lookups.start("s1", "s2", "s3", "s4")  # each missed in Redis, then queued behind the held call
    wait_for(lambda: cache.batcher(STG).waiting() == 4)
    assert other.task_definition(STG, "s1") == "stg-s1:1"  # the other process answers two of them
    assert other.task_definition(STG, "s3") == "stg-s3:1"
    held.release()
    assert lookups.join() == [f"stg-{n}:1" for n in names]
    assert [sorted(c) for c in held.asked] == [["s0"], ["s2", "s4"]]  # one MGET spared s1 and s3
    # Every answer is now shared: a third process needs no call for any of them.
    before = sim.calls.count("DescribeServices")
    third = process(r)
    assert [third.task_definition(STG, n) for n in names] == [f"stg-{n}:1" for n in names]
    assert sim.calls.count("DescribeServices") == before


def test_a_name_another_process_answered_does_not_wait_behind_a_call_in_flight(sim: Simulator,
                                                                              r: redis_lib.Redis) -> None:
    seed(sim, "stg", [ServiceSpec(n, desired=0) for n in ("s0", "s1")])
    assert process(r).task_definition(STG, "s1") == "stg-s1:1"
    cache, held = held_cache(AwsClients(NO_RETRY), ttl=10.0, shared=r)
    lookups = Lookups(cache)
    lookups.start("s0")
    assert held.entered.wait(60)
    # Answered from Redis while this process's call for s0 is still held (queued, it would wait for it).
    assert cache.task_definition(STG, "s1") == "stg-s1:1"
    assert cache.batcher(STG).waiting() == 0
    held.release()
    assert lookups.join() == ["stg-s0:1"]
    assert held.asked == [["s0"]]
