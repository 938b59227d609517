"""The AWS call budget's Redis buckets: shared by every client, falling back per process when Redis is down.

Burst and throttling behaviour against ECS' own buckets is in tests/sim/test_budget.py.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis as redis_lib
from botocore.config import Config
from botocore.stub import Stubber

from cloud.aws import AwsClients
import cloud.budget
from cloud.budget import BudgetExceeded, CallBudget, aws_limit, bucket_levels, call_counters
from cloud.errors import aws_error
from scope.catalog import Environment
from tests.conftest import ACCOUNT, free_port
from tests.outage import RedisServer

ONE_ATTEMPT = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=1, read_timeout=1)


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def env(region: str = "us-east-1", role_arn: str | None = None) -> Environment:
    return Environment(name="staging", cls="staging", enabled=True, region=region, cluster="stg",
                       role_arn=role_arn, external_id="x" if role_arn else None)


def test_list_services_pages_of_100_unless_the_caller_says_otherwise() -> None:
    ecs = AwsClients(ONE_ATTEMPT).ecs(env())
    with Stubber(ecs) as stub:
        stub.add_response("list_services", {"serviceArns": []}, {"cluster": "stg", "maxResults": 100})
        stub.add_response("list_services", {"serviceArns": []}, {"cluster": "stg", "maxResults": 5})
        list(ecs.get_paginator("list_services").paginate(cluster="stg"))
        ecs.list_services(cluster="stg", maxResults=5)
        stub.assert_no_pending_responses()


def test_aws_limits_follow_the_published_tables() -> None:
    assert aws_limit("ecs", "DescribeServices", "eu-west-1") == aws_limit("ecs", "ListServices", "us-east-1")
    assert aws_limit("ecs", "UpdateService", "us-east-1") is not None
    assert (aws_limit("ecs", "UpdateService", "us-east-1").burst, aws_limit("ecs", "UpdateService", "x").rate) \
        == (50, 5)  # type: ignore[union-attr]
    assert aws_limit("ecs", "RunTask", "us-east-1").rate == 40  # type: ignore[union-attr]
    assert aws_limit("cloudwatch-logs", "FilterLogEvents", "us-east-1").rate == 25  # type: ignore[union-attr]
    assert aws_limit("cloudwatch-logs", "FilterLogEvents", "eu-central-1").rate == 5  # type: ignore[union-attr]
    assert aws_limit("cloudwatch-logs", "FilterLogEvents", "eu-west-1").rate == 10  # type: ignore[union-attr]
    assert aws_limit("ecs", "DescribeClusters", "us-east-1") is None
    assert aws_limit("sts", "GetCallerIdentity", "us-east-1") is None


def test_filter_log_events_in_eu_central_1_gets_half_of_5_per_second(redis_url: str) -> None:
    t = FakeTime()
    budget = CallBudget(redis_lib.Redis.from_url(redis_url), share=0.5, max_wait=10, clock=t.clock, sleep=t.sleep)
    for _ in range(12):
        budget.acquire("111111111111", "eu-central-1", "cloudwatch-logs", "FilterLogEvents")
    # 2.5 at once (2 whole calls), then one every 0.4 s: 10 more take 4 s.
    assert t.now - 1000.0 == pytest.approx((12 - 2.5) / 2.5)


def test_two_clients_on_one_redis_share_the_bucket(redis_url: str) -> None:
    t = FakeTime()
    a = CallBudget(redis_lib.Redis.from_url(redis_url), share=0.5, max_wait=0, clock=t.clock, sleep=t.sleep)
    b = CallBudget(redis_lib.Redis.from_url(redis_url), share=0.5, max_wait=0, clock=t.clock, sleep=t.sleep)
    for _ in range(25):  # UpdateService: half of 50
        a.acquire("111111111111", "us-east-1", "ecs", "UpdateService")
    with pytest.raises(BudgetExceeded) as e:
        b.acquire("111111111111", "us-east-1", "ecs", "UpdateService")
    err = aws_error(e.value, "starting a deployment of web")
    assert err.transient and err.throttled  # a job is retried later, a page answers 503/Retry-After
    b.acquire("222222222222", "us-east-1", "ecs", "UpdateService")  # another account: its own bucket
    b.acquire("111111111111", "eu-west-1", "ecs", "UpdateService")  # another Region: its own bucket
    t.now += 0.4  # 2.5 per second: one token back
    b.acquire("111111111111", "us-east-1", "ecs", "UpdateService")
    b.acquire("111111111111", "us-east-1", "ecs", "DescribeServices")  # another category
    levels = {(lv.account, lv.region, lv.bucket): lv for lv in bucket_levels(a.redis, now=t.now)}  # type: ignore[arg-type]
    assert levels[("111111111111", "us-east-1", "ecs-service-modify")].tokens == pytest.approx(0, abs=1e-6)
    assert levels[("111111111111", "us-east-1", "ecs-service-read")].tokens == pytest.approx(49)


def test_waiting_callers_take_turns_in_arrival_order(redis_url: str) -> None:
    t = FakeTime()
    budget = CallBudget(redis_lib.Redis.from_url(redis_url), share=0.5, max_wait=1.0, clock=t.clock,
                        sleep=lambda s: None)  # callers that do not wake up: each reserves a later turn
    for _ in range(25):
        budget.acquire("1", "us-east-1", "ecs", "UpdateService")
    waits = [budget.acquire("1", "us-east-1", "ecs", "UpdateService") for _ in range(2)]
    assert waits == [pytest.approx(0.4), pytest.approx(0.8)]
    with pytest.raises(BudgetExceeded):  # the third turn is 1.2 s away
        budget.acquire("1", "us-east-1", "ecs", "UpdateService")


def test_redis_down_falls_back_to_a_budget_per_process(caplog: pytest.LogCaptureFixture) -> None:
    dead = redis_lib.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)
    t = FakeTime()
    budget = CallBudget(dead, share=0.5, max_wait=0, clock=t.clock, sleep=t.sleep)
    with caplog.at_level(logging.WARNING, logger="valetkey.aws.budget"):
        for _ in range(25):
            budget.acquire("1", "us-east-1", "ecs", "UpdateService")
        with pytest.raises(BudgetExceeded):  # still enforced, by this process alone
            budget.acquire("1", "us-east-1", "ecs", "UpdateService")
    assert sum("per-process budget" in r.getMessage() for r in caplog.records) == 1  # said once, not per call


def test_a_call_through_a_budget_without_redis_still_reaches_aws(aws: str) -> None:
    dead = redis_lib.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)
    clients = AwsClients(ONE_ATTEMPT, budget=CallBudget(dead))
    boto3.client("ecs", region_name="us-east-1").create_cluster(clusterName="stg")
    assert clients.ecs(env()).list_services(cluster="stg")["serviceArns"] == []


def test_the_account_comes_from_the_role_arn_else_sts_once(aws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    clients = AwsClients(ONE_ATTEMPT)
    assert clients.account_of(env(role_arn="arn:aws:iam::111111111111:role/valetkey")) == "111111111111"
    sts_calls: list[Any] = []
    real = boto3.Session.client

    def counting(self: boto3.Session, name: str, *a: Any, **kw: Any) -> Any:
        c = real(self, name, *a, **kw)
        if name == "sts":
            c.meta.events.register("before-send.sts", lambda **_: sts_calls.append(1))
        return c

    monkeypatch.setattr(boto3.Session, "client", counting)
    assert clients.account_of(env()) == ACCOUNT  # moto's account for our credentials
    assert clients.account_of(env("eu-west-1")) == ACCOUNT
    assert len(sts_calls) == 1


def test_the_account_is_default_when_sts_cannot_say(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    assert AwsClients(ONE_ATTEMPT).account_of(env()) == "default"


def test_filter_log_events_through_the_product_client_is_paced_and_counted(aws: str, redis_url: str) -> None:
    boto3.client("logs", region_name="eu-central-1").create_log_group(logGroupName="/ecs/web")
    t = FakeTime()
    r = redis_lib.Redis.from_url(redis_url)
    logs = AwsClients(ONE_ATTEMPT, budget=CallBudget(r, share=0.5, max_wait=5, clock=t.clock, sleep=t.sleep)) \
        .logs(env("eu-central-1"))
    for _ in range(5):
        logs.filter_log_events(logGroupName="/ecs/web")
    assert t.now - 1000.0 == pytest.approx((5 - 2.5) / 2.5)  # half of eu-central-1's 5 per second
    assert call_counters(r)[0]["cloudwatch-logs:FilterLogEvents"] == 5


def test_calls_that_take_no_token_are_counted_in_one_round_trip(redis_url: str) -> None:
    r = redis_lib.Redis.from_url(redis_url)
    budget = CallBudget(r, share=0, flush_seconds=3600)  # counts only; no timer fires during the test
    r.config_resetstat()
    for _ in range(5):
        budget.acquire("1", "us-east-1", "ecs", "DescribeServices")
    budget.acquire("1", "us-east-1", "sts", "GetCallerIdentity")  # an API without a bucket
    assert call_counters(r)[0] == {}  # still in the process
    assert budget.flush()
    assert call_counters(r)[0] == {"ecs:DescribeServices": 5, "sts:GetCallerIdentity": 1}
    # One HINCRBY per field, in one MULTI/EXEC: not one round trip per call.
    stats: Any = r.info("commandstats")
    assert stats["cmdstat_hincrby"]["calls"] == 2
    assert stats["cmdstat_exec"]["calls"] == 1
    assert budget.flush()  # nothing left: nothing counted twice
    assert call_counters(r)[0] == {"ecs:DescribeServices": 5, "sts:GetCallerIdentity": 1}


def test_kept_counts_reach_redis_without_anyone_flushing(redis_url: str) -> None:
    r = redis_lib.Redis.from_url(redis_url)
    budget = CallBudget(r, share=0, flush_seconds=0.05)
    for _ in range(3):
        budget.acquire("1", "us-east-1", "ecs", "ListTasks")
    deadline = time.monotonic() + 30  # a bound for a loaded machine, not a measurement
    while call_counters(r)[0].get("ecs:ListTasks", 0) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert call_counters(r)[0] == {"ecs:ListTasks": 3}


def test_redis_down_at_a_flush_loses_no_count_and_fails_no_call(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cloud.budget, "REDIS_RETRY_SECONDS", 0.0)  # try Redis again at once once it is back
    server = RedisServer(tmp_path).start()
    try:
        r = redis_lib.Redis.from_url(server.url, socket_connect_timeout=0.5, socket_timeout=0.5)
        t = FakeTime()
        budget = CallBudget(r, share=0.5, max_wait=0, clock=t.clock, sleep=t.sleep, flush_seconds=3600)
        budget.acquire("1", "us-east-1", "ecs", "StopTask")  # a token: counted by the bucket's script
        budget.acquire("1", "us-east-1", "sts", "GetCallerIdentity")  # no bucket: kept in the process
        server.stop()
        assert not budget.flush()  # refused, not raised: the counts stay in the process
        for _ in range(2):  # calls go on meanwhile (per-process bucket), and are counted
            budget.acquire("1", "us-east-1", "ecs", "StopTask")
            budget.acquire("1", "us-east-1", "sts", "GetCallerIdentity")
        assert not budget.flush()
        server.start()  # not persistent: an empty Redis, as after a failover to a fresh replica
        assert budget.flush()
        assert call_counters(r)[0] == {"ecs:StopTask": 2, "sts:GetCallerIdentity": 3}
    finally:
        server.stop()


def test_a_forked_child_counts_its_own_calls_and_not_its_parents(redis_url: str) -> None:
    import os

    r = redis_lib.Redis.from_url(redis_url)
    budget = CallBudget(r, share=0, flush_seconds=3600)
    budget.acquire("1", "us-east-1", "ecs", "ListTasks")  # pending in the parent, with its timer
    pid = os.fork()
    if pid == 0:  # the child: a gunicorn worker forked from its master, say
        code = 1
        try:
            budget.acquire("1", "us-east-1", "ecs", "DescribeTasks")
            code = 0 if budget.flush() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert call_counters(r)[0] == {"ecs:DescribeTasks": 1}  # the parent's count is the parent's to add
    assert budget.flush()
    assert call_counters(r)[0] == {"ecs:DescribeTasks": 1, "ecs:ListTasks": 1}
