"""The AWS call budget against the simulator's throttling buckets (ECS' real numbers).

The budget runs on the simulator's fake clock (``clock=sim.clock.now``,
``sleep=sim.advance``), so "per second" means the same second on both sides.
"""
from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable

import pytest
import redis as redis_lib
from botocore.exceptions import ClientError

import ecssim
from cloud.aws import DEFAULT_CONFIG, AwsClients
from cloud.budget import CallBudget, call_counters
from ecssim import RealClock, Simulator, Timings
from ecssim.seed import ServiceSpec, seed
from jobs.kinds import REDEPLOY, RUNNING, SUCCEEDED
from scope.catalog import Environment
from tests.sim.conftest import NO_RETRY, client
from wiring.runtime import Runtime
from workers.runner import JobRunner

STG = Environment(name="staging", cls="staging", enabled=True, region="us-east-1", cluster="stg")


def sim_budget(sim: Simulator, redis_url: str, share: float = 0.5, max_wait: float = 30.0) -> CallBudget:
    return CallBudget(redis_lib.Redis.from_url(redis_url), share=share, max_wait=max_wait,
                      clock=sim.clock.now, sleep=sim.advance)


def test_a_burst_of_concurrent_reads_stays_within_the_share(sim: Simulator, redis_url: str) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=1), ServiceSpec("api", desired=1)])
    sim.throttle.enabled = True
    aws = AwsClients(NO_RETRY, budget=sim_budget(sim, redis_url))
    ecs = aws.ecs(STG)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(15):
                ecs.describe_services(cluster="stg", services=["web", "api"])
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    calls = sim.calls.of("DescribeServices")
    assert len(calls) == 240
    assert [c for c in calls if c.error] == []  # AWS never throttled us
    # Half of ECS' service-read bucket (100 burst, 20/s): 50 at once, then 10 per second.
    assert sim.calls.max_per_second("DescribeServices") <= 50 + 10
    assert sim.clock.now() - calls[0].time >= (240 - 50) / 10 - 1


def test_without_the_budget_the_same_burst_is_throttled_and_counted(sim: Simulator, redis_url: str) -> None:
    """The control: what a burst does to the account when nothing holds it back (share 0: count only)."""
    seed(sim, "stg", [ServiceSpec("web", desired=1)])
    sim.throttle.enabled = True
    r = redis_lib.Redis.from_url(redis_url)
    budget = CallBudget(r, share=0)
    ecs = AwsClients(NO_RETRY, budget=budget).ecs(STG)
    codes = []
    for _ in range(120):
        try:
            ecs.describe_services(cluster="stg", services=["web"])
            codes.append("")
        except ClientError as e:
            codes.append(e.response["Error"]["Code"])
    assert codes.count("ThrottlingException") == 20
    budget.flush()  # counted in the process (no token taken), in Redis within FLUSH_SECONDS
    calls, throttles, refusals = call_counters(r)  # what GET /metrics reports, for every process
    assert calls["ecs:DescribeServices"] == 120
    assert throttles == {"ecs:DescribeServices": 20}
    assert refusals == {}


def test_the_budget_refuses_a_call_that_would_wait_too_long_as_throttling(sim: Simulator, redis_url: str) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=1)])
    aws = AwsClients(NO_RETRY, budget=sim_budget(sim, redis_url, max_wait=0.2))
    ecs = aws.ecs(STG)
    for _ in range(25):  # UpdateService: 50 burst / 5 per s; half is 25 / 2.5 per s
        ecs.update_service(cluster="stg", service="web", desiredCount=1)
    with pytest.raises(ClientError) as e:  # the next token is 0.4 s away: longer than the call may wait
        ecs.update_service(cluster="stg", service="web", desiredCount=1)
    assert e.value.response["Error"]["Code"] == "Throttling"  # what cloud.errors calls transient
    assert sim.calls.count("UpdateService") == 25  # the refused call never reached AWS


@pytest.fixture
def throttled_runtime(sim: Simulator, rt: Runtime, redis_url: str,
                      make_user: Callable[..., dict[str, str]]) -> Runtime:
    make_user("dev@example.test", ("staging", "developer"))
    rt.aws = AwsClients(NO_RETRY, budget=sim_budget(sim, redis_url, max_wait=5))
    rt.settings = dataclasses.replace(rt.settings, poll_interval=2.0, stability_timeout=600)
    return rt


def test_a_throttled_job_is_delayed_then_succeeds(sim: Simulator, throttled_runtime: Runtime) -> None:
    rt = throttled_runtime
    seed(sim, "stg", [ServiceSpec("web", desired=2)])
    sim.throttle.enabled = True
    ci = client("ecs")  # another tool of the account (CI) spends the whole service-read bucket
    for _ in range(100):
        ci.describe_services(cluster="stg", services=["web"])
    job = rt.jobs.create(action=REDEPLOY, environment="staging", target="web", actor="dev@example.test",
                         source="api")
    runner = JobRunner(rt, clock=sim.clock.now)  # a worker's runner: a throttled step suspends the job
    assert runner.run(job.id) == RUNNING
    held = rt.jobs.get(job.id)
    assert held is not None and (held.status, held.attempts, held.params["retries"]) == (RUNNING, 1, 1)
    assert held.finished_at is None
    assert sim.calls.count("UpdateService") == 0
    assert [c.error for c in sim.calls.of("DescribeServices")][-1] == "ThrottlingException"
    assert runner.suspended.due_at(job.id, 1) is not None  # its next step is due (after a backoff)

    sim.advance(10)  # the backoff; the bucket refills meanwhile
    assert JobRunner(rt, sleep=sim.advance, clock=sim.clock.now).run(job.id, attempt=1) == SUCCEEDED
    done = rt.jobs.get(job.id)
    assert done is not None and done.status == SUCCEEDED and done.detail.startswith("Deployed")
    assert sim.calls.count("UpdateService") == 1
    assert runner.suspended.due_at(job.id, 1) is None


def test_botocore_backs_off_an_aws_throttle_until_the_call_succeeds(aws: str) -> None:
    """The product's client configuration (standard retry mode) turns ThrottlingException into a delay.

    Real time here: botocore sleeps for real between attempts, so the simulator runs on the wall clock.
    """
    sim = ecssim.install(Simulator(clock=RealClock(), timings=Timings.fast(), seed=7))
    try:
        boto_ecs = client("ecs", config=NO_RETRY)
        boto_ecs.create_cluster(clusterName="stg")
        product = AwsClients(DEFAULT_CONFIG).ecs(STG)  # built first: building takes longer than a refill
        sim.throttle.enabled, sim.throttle.scale = True, 0.05  # 5 burst, 1 per second
        seen: list[list[str]] = []
        for _ in range(5):  # on a busy machine a token may come back before our first attempt: try again
            while True:  # another tool spends the bucket
                try:
                    boto_ecs.describe_services(cluster="stg", services=["web"])
                except ClientError as e:
                    assert e.response["Error"]["Code"] == "ThrottlingException"
                    break
            before = len(sim.calls.of("DescribeServices"))
            product.describe_services(cluster="stg", services=["web"])  # raises if every attempt was throttled
            seen.append([c.error for c in sim.calls.of("DescribeServices")[before:]])
            if seen[-1][0] == "ThrottlingException":
                break
        assert seen[-1][0] == "ThrottlingException" and seen[-1][-1] == ""  # throttled, backed off, answered
    finally:
        ecssim.uninstall()
