"""The pages' shared ECS read cache: repeated views within its TTL make one AWS read; workers always read fresh."""
from __future__ import annotations

import datetime as dt
import time
from typing import Any, Callable

import pytest
import redis as redis_lib

from cloud.aws import AwsClients
from cloud.ecs_cache import SharedReadCache
from ecssim import Simulator
from ecssim.seed import ServiceSpec, seed
from scope.catalog import Environment
from scope.errors import NotFound
from tests.conftest import free_port
from tests.sim.conftest import NO_RETRY
from web.webhook_service import ServiceCache
from wiring.runtime import Runtime

STG = Environment(name="staging", cls="staging", enabled=True, region="us-east-1", cluster="stg")


def test_repeated_page_views_share_one_aws_read(sim: Simulator, rt: Runtime, client: Any,
                                                 make_user: Callable[..., dict[str, str]]) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=2), ServiceSpec("api", desired=1)])
    alice = make_user("alice@example.test", ("staging", "viewer"))
    bob = make_user("bob@example.test", ("staging", "developer"))
    first = client.get("/api/v1/environments/staging", headers=alice)
    second = client.get("/api/v1/environments/staging", headers=bob)
    assert first.status_code == second.status_code == 200
    assert first.get_json()["services"] == second.get_json()["services"]  # timestamps survive the cache
    assert {s["name"] for s in first.get_json()["services"]} == {"web", "api"}
    assert sim.calls.count("DescribeServices") == 1
    assert sim.calls.count("ListServices") == 1

    # Workers verify against ECS as it is now: their clients never read the cache.
    ecs = rt.aws.ecs(STG)
    ecs.describe_services(cluster="stg", services=["api", "web"])
    ecs.describe_services(cluster="stg", services=["api", "web"])
    assert sim.calls.count("DescribeServices") == 3


def test_the_cache_expires(sim: Simulator, redis_url: str) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=1)])
    aws = AwsClients(NO_RETRY, read_cache=SharedReadCache(redis_lib.Redis.from_url(redis_url), ttl_seconds=0.2))
    ecs = aws.ecs(STG, shared_reads=True)
    a = ecs.describe_services(cluster="stg", services=["web"])
    b = ecs.describe_services(cluster="stg", services=["web"])
    assert a["services"] == b["services"]
    assert isinstance(b["services"][0]["deployments"][0]["createdAt"], dt.datetime)  # as botocore parses it
    assert sim.calls.count("DescribeServices") == 1
    time.sleep(0.3)
    ecs.describe_services(cluster="stg", services=["web"])
    assert sim.calls.count("DescribeServices") == 2


def test_without_redis_pages_read_ecs_directly(sim: Simulator) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=1)])
    dead = redis_lib.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)
    ecs = AwsClients(NO_RETRY, read_cache=SharedReadCache(dead)).ecs(STG, shared_reads=True)
    for _ in range(2):
        assert ecs.describe_services(cluster="stg", services=["web"])["services"][0]["serviceName"] == "web"
    assert sim.calls.count("DescribeServices") == 2


def test_webhook_existence_checks_of_two_processes_share_one_aws_read(sim: Simulator, redis_url: str) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=1)])
    r = redis_lib.Redis.from_url(redis_url)
    r.flushdb()
    processes = [ServiceCache(AwsClients(NO_RETRY, read_cache=SharedReadCache(r))) for _ in range(2)]
    assert [p.task_definition(STG, "web") for p in processes] == ["stg-web:1"] * 2
    assert sim.calls.count("DescribeServices") == 1
    with pytest.raises(NotFound):
        processes[0].task_definition(STG, "gone")
