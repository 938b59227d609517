"""Rollout states moto cannot produce, driven through botocore's Stubber."""
from __future__ import annotations

import datetime as dt
import uuid

import boto3
import pytest
from botocore.stub import Stubber

from workers.ecs import EcsOperations
from workers.errors import OperationFailed, TransientError

CLUSTER = "stg"


class FakeTime:
    """A clock that only moves when the operation sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def service(td: str, deployments: list[dict], desired: int = 2, running: int = 2, pending: int = 0,
            min_healthy: int = 50) -> dict:
    return {"services": [{
        "serviceName": "orders-api", "status": "ACTIVE", "desiredCount": desired, "runningCount": running,
        "pendingCount": pending, "taskDefinition": td,
        "deploymentConfiguration": {"minimumHealthyPercent": min_healthy, "maximumPercent": 200},
        "deployments": deployments}], "failures": []}


def deployment(id_: str, td: str, rollout: str = "COMPLETED", status: str = "PRIMARY", reason: str = "",
               running: int = 2) -> dict:
    d = {"id": id_, "status": status, "taskDefinition": td, "desiredCount": 2, "runningCount": running,
         "pendingCount": 0, "rolloutState": rollout, "createdAt": dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)}
    if reason:
        d["rolloutStateReason"] = reason
    return d


def tasks(arns: list[str], digest: str) -> dict:
    return {"tasks": [{"taskArn": a, "group": "service:orders-api", "lastStatus": "RUNNING",
                       "desiredStatus": "RUNNING", "containers": [{"name": "app", "imageDigest": digest}]}
                      for a in arns], "failures": []}


@pytest.fixture
def ecs():
    client = boto3.client("ecs", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x",
                          endpoint_url="https://ecs.us-east-1.amazonaws.com")
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


@pytest.fixture
def td() -> str:
    # A fresh ARN per test: task definitions are cached per process (they are immutable).
    return f"arn:aws:ecs:us-east-1:1:task-definition/orders-{uuid.uuid4().hex[:8]}:7"


def ops(client, t: FakeTime, events: list, timeout: float = 120.0) -> EcsOperations:
    return EcsOperations(client, CLUSTER, progress=lambda k, m: events.append((k, m)), checkpoint=lambda p: None,
                         poll_interval=5, timeout=timeout, sleep=t.sleep, clock=t.clock)


def stub_digests(stub, digest):
    stub.add_response("list_tasks", {"taskArns": ["arn:t/1", "arn:t/2"]})
    stub.add_response("describe_tasks", tasks(["arn:t/1", "arn:t/2"], digest))


def stub_state(stub, td, deployments, digest, first=True, **kw):
    stub.add_response("describe_services", service(td, deployments, **kw))
    if first:
        stub.add_response("describe_task_definition", {"taskDefinition": {
            "taskDefinitionArn": td, "containerDefinitions": [{"name": "app", "image": "repo/orders:latest"}]}})
    stub.add_response("list_tasks", {"taskArns": ["arn:t/1", "arn:t/2"]})
    stub.add_response("describe_tasks", tasks(["arn:t/1", "arn:t/2"], digest))


def test_redeploy_slow_rollout_then_reports_digests(ecs, td):
    client, stub = ecs
    t, events = FakeTime(), []
    old = deployment("ecs-svc/1", td)
    stub_state(stub, td, [old], "sha256:9c0d11ffff")
    new = deployment("ecs-svc/2", td, "IN_PROGRESS", running=0)
    stub.add_response("update_service", {"service": service(td, [new, {**old, "status": "ACTIVE"}])["services"][0]})
    stub.add_response("describe_services", service(td, [new, {**old, "status": "ACTIVE"}], running=2, pending=2))
    stub.add_response("describe_services", service(td, [{**new, "runningCount": 1}, {**old, "status": "ACTIVE"}],
                                                    running=3, pending=1))
    done = deployment("ecs-svc/2", td)
    stub.add_response("describe_services", service(td, [done]))
    stub_digests(stub, "sha256:a3f2b1eeee")
    out = ops(client, t, events).redeploy("orders-api", {})
    assert out.detail == "Deployed sha:a3f2b1 (was sha:9c0d11)"
    assert out.after["deployment_id"] == "ecs-svc/2" and out.before["image_digests"] == ["sha256:9c0d11ffff"]
    assert t.sleeps == [5, 5]  # polled at the configured interval, not boto3's 15 s waiter
    assert any("rollout IN_PROGRESS" in m for _, m in events)


def test_redeploy_rollout_failed_by_circuit_breaker(ecs, td):
    client, stub = ecs
    old = deployment("ecs-svc/1", td)
    stub_state(stub, td, [old], "sha256:1111")
    new = deployment("ecs-svc/2", td, "IN_PROGRESS", running=0)
    stub.add_response("update_service", {"service": service(td, [new, old])["services"][0]})
    failed = deployment("ecs-svc/2", td, "FAILED",
                        reason="ECS deployment circuit breaker: tasks failed to start.", running=0)
    stub.add_response("describe_services", service(td, [failed, {**old, "status": "ACTIVE"}]))
    with pytest.raises(OperationFailed) as e:
        ops(client, FakeTime(), []).redeploy("orders-api", {})
    assert e.value.detail == "Rollout FAILED: ECS deployment circuit breaker: tasks failed to start."


def test_redeploy_times_out(ecs, td):
    client, stub = ecs
    old = deployment("ecs-svc/1", td)
    stub_state(stub, td, [old], "sha256:1111")
    new = deployment("ecs-svc/2", td, "IN_PROGRESS", running=0)
    stub.add_response("update_service", {"service": service(td, [new, old])["services"][0]})
    for _ in range(4):
        stub.add_response("describe_services", service(td, [new, {**old, "status": "ACTIVE"}], running=2))
    with pytest.raises(OperationFailed) as e:
        ops(client, FakeTime(), [], timeout=12).redeploy("orders-api", {})
    assert e.value.detail.startswith("Timed out after 15s")


def test_redeploy_access_denied(ecs, td):
    client, stub = ecs
    stub_state(stub, td, [deployment("ecs-svc/1", td)], "sha256:1111")
    stub.add_client_error("update_service", "AccessDeniedException", "User is not authorized", 400)
    with pytest.raises(OperationFailed) as e:
        ops(client, FakeTime(), []).redeploy("orders-api", {})
    assert e.value.detail.startswith("AccessDenied while starting a deployment of orders-api")


def test_throttling_is_transient(ecs, td):
    client, stub = ecs
    stub.add_client_error("describe_services", "ThrottlingException", "Rate exceeded", 400)
    with pytest.raises(TransientError):
        ops(client, FakeTime(), []).redeploy("orders-api", {})


def test_redelivered_redeploy_resumes_without_a_second_deployment(ecs, td):
    client, stub = ecs
    done = deployment("ecs-svc/2", td)
    stub_state(stub, td, [done], "sha256:2222")
    stub.add_response("describe_services", service(td, [done]))
    stub_digests(stub, "sha256:2222")
    params = {"deployment_id": "ecs-svc/2", "before": {"image_digests": ["sha256:1111"]}}
    out = ops(client, FakeTime(), []).redeploy("orders-api", params)  # no update_service stubbed
    assert out.detail == "Deployed sha:2222 (was sha:1111)"


def test_restart_respects_minimum_healthy_percent(ecs, td):
    """4 tasks at 50% minimum healthy: stopped two at a time, waiting for replacements between batches."""
    client, stub = ecs
    t = FakeTime()
    dep = deployment("ecs-svc/1", td)
    arns = [f"arn:t/{i}" for i in range(4)]
    stub.add_response("describe_services", service(td, [dep], desired=4, running=4))
    stub.add_response("describe_task_definition", {"taskDefinition": {
        "taskDefinitionArn": td, "containerDefinitions": [{"name": "app", "image": "repo/orders:1.4"}]}})
    stub.add_response("list_tasks", {"taskArns": arns})
    stub.add_response("describe_tasks", tasks(arns, "sha256:aaaa"))
    stopped: list[str] = []
    for batch in (arns[:2], arns[2:]):
        alive = [a for a in arns if a not in stopped]
        stub.add_response("describe_tasks", tasks(alive, "sha256:aaaa"))
        for a in batch:
            stub.add_response("stop_task", {"task": {"taskArn": a}}, {"cluster": CLUSTER, "task": a,
                                                                       "reason": "Valet Key"})
        stopped += batch
        gone = {"tasks": [{"taskArn": a, "lastStatus": "STOPPED", "desiredStatus": "STOPPED"} for a in batch]}
        stub.add_response("describe_tasks", gone)
        stub.add_response("describe_services", service(td, [dep], desired=4, running=2, pending=2))
        stub.add_response("describe_services", service(td, [dep], desired=4, running=4))
    stub.add_response("describe_tasks", {"tasks": [{"taskArn": a, "lastStatus": "STOPPED",
                                                     "desiredStatus": "STOPPED"} for a in arns]})
    stub.add_response("describe_services", service(td, [dep], desired=4, running=4))
    new = [f"arn:t/new{i}" for i in range(4)]
    stub.add_response("list_tasks", {"taskArns": new})
    stub.add_response("describe_tasks", tasks(new, "sha256:aaaa"))
    events: list = []
    out = ops(client, t, events).restart("orders-api", {})
    assert out.detail == "HEALTHY after 10s"
    assert ("plan", "Replacing 4 task(s), 2 at a time (minimumHealthyPercent 50%)") in events
    assert out.before["image_digests"] == out.after["image_digests"] == ["sha256:aaaa"]  # same version
