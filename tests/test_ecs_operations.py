"""Rollout states moto cannot produce, driven through botocore's Stubber."""
from __future__ import annotations

import datetime as dt
import uuid

import boto3
import pytest
from botocore.stub import Stubber

from scope.errors import OperationFailed, TransientError
from workers.ecs import EcsOperations

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


def tasks(arns: list[str], digest: str = "sha256:aaaa", stopped: tuple[str, ...] = ()) -> dict:
    return {"tasks": [{"taskArn": a, "group": "service:orders-api",
                       "lastStatus": "STOPPED" if a in stopped else "RUNNING",
                       "desiredStatus": "STOPPED" if a in stopped else "RUNNING",
                       "containers": [{"name": "app", "imageDigest": digest}]}
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


def stub_restart_before(stub, td, arns: list[str], min_healthy: int = 50, cached: bool = False) -> None:
    """describe_services, then the running tasks with their digests (the tasks to replace)."""
    n = len(arns)
    stub.add_response("describe_services", service(td, [deployment("ecs-svc/1", td)], desired=n, running=n,
                                                   min_healthy=min_healthy))
    if not cached:
        stub.add_response("describe_task_definition", {"taskDefinition": {
            "taskDefinitionArn": td, "containerDefinitions": [{"name": "app", "image": "repo/orders:1.4"}]}})
    stub.add_response("list_tasks", {"taskArns": arns})
    for i in range(0, n, 100):
        stub.add_response("describe_tasks", tasks(arns[i:i + 100]))


def stub_stop(stub, arns: list[str]) -> None:
    for a in arns:
        stub.add_response("stop_task", {"task": {"taskArn": a}}, {"cluster": CLUSTER, "task": a, "reason": "Valet Key"})


def stub_describe(stub, arns: list[str], stopped: list[str]) -> None:
    """One look at exactly ``arns`` (the originals not yet known to be stopped), 100 a call."""
    for i in range(0, len(arns), 100):
        chunk = arns[i:i + 100]
        stub.add_response("describe_tasks", tasks(chunk, stopped=tuple(stopped)),
                          {"cluster": CLUSTER, "tasks": chunk})


def stub_stable(stub, td, n: int, replacing: int = 0) -> None:
    """The service while ``replacing`` tasks are still pending (one poll), then stable."""
    dep = deployment("ecs-svc/1", td)
    if replacing:
        stub.add_response("describe_services", service(td, [dep], desired=n, running=n - replacing,
                                                       pending=replacing))
    stub.add_response("describe_services", service(td, [dep], desired=n, running=n))


def stub_after_digests(stub, n: int, digest: str = "sha256:aaaa") -> None:
    new = [f"arn:t/new{i}" for i in range(n)]
    stub.add_response("list_tasks", {"taskArns": new})
    for i in range(0, n, 100):
        stub.add_response("describe_tasks", tasks(new[i:i + 100], digest))


def test_restart_respects_minimum_healthy_percent(ecs, td):
    """4 tasks at 50% minimum healthy: stopped two at a time, waiting for replacements between batches."""
    client, stub = ecs
    t = FakeTime()
    arns = [f"arn:t/{i}" for i in range(4)]
    stub_restart_before(stub, td, arns)
    stub_stop(stub, arns[:2])
    stub_describe(stub, arns, stopped=arns[:2])  # the batch drained; the other two still run
    stub_stable(stub, td, 4, replacing=2)
    stub_stop(stub, arns[2:])
    stub_describe(stub, arns[2:], stopped=arns[2:])  # none of the originals is left
    stub_stable(stub, td, 4, replacing=2)
    stub_after_digests(stub, 4)
    events: list = []
    params: dict = {}
    out = ops(client, t, events).restart("orders-api", params)
    assert out.detail == "HEALTHY after 10s"
    assert t.sleeps == [5, 5]  # one poll per batch for its replacements
    assert ("plan", "Replacing 4 task(s), 2 at a time (minimumHealthyPercent 50%)") in events
    assert [m for k, m in events if k == "progress"] == [
        "Stopped 2 of 4 original task(s); waiting for replacements",
        "Stopped 4 of 4 original task(s); waiting for replacements"]
    assert out.before["image_digests"] == out.after["image_digests"] == ["sha256:aaaa"]  # same version
    assert params["restart_tasks"] == arns and params["before"] == out.before  # checkpointed


def test_restart_waits_for_a_stopped_batch_to_drain(ecs, td):
    """ECS may still report a task as running just after StopTask: the batch must be seen gone first,
    or describe_services could count it towards a stable service."""
    client, stub = ecs
    t = FakeTime()
    arns = ["arn:t/0", "arn:t/1"]
    stub_restart_before(stub, td, arns)
    stub_stop(stub, arns[:1])
    stub_describe(stub, arns, stopped=[])
    stub_describe(stub, arns, stopped=arns[:1])
    stub_stable(stub, td, 2)
    stub_stop(stub, arns[1:])
    stub_describe(stub, arns[1:], stopped=arns[1:])
    stub_stable(stub, td, 2)
    stub_after_digests(stub, 2)
    out = ops(client, t, []).restart("orders-api", {})
    assert out.detail == "HEALTHY after 5s" and t.sleeps == [5]


def test_restart_times_out_when_a_stopped_task_never_drains(ecs, td):
    client, stub = ecs
    arns = ["arn:t/0", "arn:t/1"]
    stub_restart_before(stub, td, arns)
    stub_stop(stub, arns[:1])
    for _ in range(4):  # at 0, 5, 10 and 15 s; past the 12 s timeout it gives up
        stub_describe(stub, arns, stopped=[])
    with pytest.raises(OperationFailed) as e:
        ops(client, FakeTime(), [], timeout=12).restart("orders-api", {})
    assert e.value.detail == "Timed out after 12s waiting for stopped tasks to drain."


def test_resumed_restart_checks_which_originals_still_run(ecs, td):
    """A redelivered message: the crashed attempt stopped arn:t/0; only arn:t/1 is stopped now."""
    client, stub = ecs
    arns = ["arn:t/0", "arn:t/1"]
    # Now running: the replacement of arn:t/0 and arn:t/1; neither is taken as an original.
    stub_restart_before(stub, td, ["arn:t/new0", "arn:t/1"])
    stub_describe(stub, arns, stopped=arns[:1])  # which originals still run
    stub_stable(stub, td, 2, replacing=1)  # the replacement of arn:t/0 comes up before arn:t/1 goes down
    stub_stop(stub, arns[1:])
    stub_describe(stub, arns[1:], stopped=arns[1:])
    stub_stable(stub, td, 2)
    stub_after_digests(stub, 2)
    before = {"task_definition": td.rsplit("/", 1)[-1], "image_digests": ["sha256:aaaa"], "running": 2}
    params = {"restart_tasks": arns, "before": before}
    saved: list = []
    events: list = []
    o = ops(client, FakeTime(), events)
    o.checkpoint = saved.append
    out = o.restart("orders-api", params)
    assert out.detail == "HEALTHY after 5s"
    assert out.before is before and params["restart_tasks"] == arns and not saved  # the first attempt's record
    assert [m for k, m in events if k == "state"][1].startswith("1/2 running, 1 pending")
    assert [m for k, m in events if k == "progress"] == ["Stopped 2 of 2 original task(s); waiting for replacements"]


def test_resumed_restart_with_every_original_stopped_only_waits(ecs, td):
    client, stub = ecs
    arns = ["arn:t/0", "arn:t/1"]
    stub_restart_before(stub, td, ["arn:t/new0", "arn:t/new1"])
    stub_describe(stub, arns, stopped=arns)
    stub_stable(stub, td, 2, replacing=1)
    stub_after_digests(stub, 2)
    out = ops(client, FakeTime(), []).restart("orders-api", {"restart_tasks": arns, "before": {}})  # no stop_task
    assert out.detail == "HEALTHY after 5s"


def test_restart_does_not_stop_an_original_that_stopped_by_itself(ecs, td):
    """arn:t/2 crashes while the first batch drains: it is neither stopped nor waited for."""
    client, stub = ecs
    arns = [f"arn:t/{i}" for i in range(4)]
    stub_restart_before(stub, td, arns)
    stub_stop(stub, arns[:2])
    stub_describe(stub, arns, stopped=arns[:3])
    stub_stable(stub, td, 4, replacing=3)
    stub_stop(stub, arns[3:])  # only arn:t/3; a stop_task for arn:t/2 would not match the stub
    stub_describe(stub, arns[3:], stopped=arns[3:])
    stub_stable(stub, td, 4)
    stub_after_digests(stub, 4)
    events: list = []
    out = ops(client, FakeTime(), events).restart("orders-api", {})
    assert out.detail == "HEALTHY after 5s"
    assert [m for k, m in events if k == "progress"][-1] == "Stopped 4 of 4 original task(s); waiting for replacements"


def test_restart_describes_tasks_100_at_a_time(ecs, td):
    """150 tasks at 50%: two batches of 75; DescribeTasks takes at most 100 ARNs."""
    client, stub = ecs
    arns = [f"arn:t/{i}" for i in range(150)]
    stub_restart_before(stub, td, arns)
    stub_stop(stub, arns[:75])
    stub_describe(stub, arns, stopped=arns[:75])  # 100 + 50
    stub_stable(stub, td, 150)
    stub_stop(stub, arns[75:])
    stub_describe(stub, arns[75:], stopped=arns[75:])
    stub_stable(stub, td, 150)
    stub_after_digests(stub, 150)
    assert ops(client, FakeTime(), []).restart("orders-api", {}).detail == "HEALTHY after 0s"


def test_restart_of_two_tasks_makes_eleven_aws_calls(ecs, td):
    client, stub = ecs
    arns = ["arn:t/0", "arn:t/1"]
    # Task definitions are cached per process (as in a long-running worker): fill the cache first.
    stub.add_response("describe_task_definition", {"taskDefinition": {
        "taskDefinitionArn": td, "containerDefinitions": [{"name": "app", "image": "repo/orders:1.4"}]}})
    ops(client, FakeTime(), []).reader.image_of(td)
    calls: list[str] = []
    # First: the Stubber answers in its own before-call handler, which ends the event.
    client.meta.events.register_first("before-call.*.*", lambda model, **_: calls.append(model.name))
    stub_restart_before(stub, td, arns, cached=True)
    for a in arns:
        stub_stop(stub, [a])
        stub_describe(stub, arns[arns.index(a):], stopped=[a])
        stub_stable(stub, td, 2)
    stub_after_digests(stub, 2)
    assert ops(client, FakeTime(), []).restart("orders-api", {}).detail == "HEALTHY after 0s"
    assert calls == ["DescribeServices", "ListTasks", "DescribeTasks",
                     "StopTask", "DescribeTasks", "DescribeServices",
                     "StopTask", "DescribeTasks", "DescribeServices",
                     "ListTasks", "DescribeTasks"]


def test_restart_fails_when_the_task_definition_changed(ecs, td):
    client, stub = ecs
    arns = ["arn:t/0", "arn:t/1"]
    stub_restart_before(stub, td, arns)
    stub_stop(stub, arns[:1])
    stub_describe(stub, arns, stopped=arns[:1])
    stub_stable(stub, td, 2)
    stub_stop(stub, arns[1:])
    stub_describe(stub, arns[1:], stopped=arns[1:])
    # Someone else's deployment finished meanwhile: stable, but on revision 8.
    other = td.replace(":7", ":8")
    stub.add_response("describe_services", service(other, [deployment("ecs-svc/2", other)]))
    stub.add_response("describe_task_definition", {"taskDefinition": {
        "taskDefinitionArn": other, "containerDefinitions": [{"name": "app", "image": "repo/orders:1.5"}]}})
    stub_after_digests(stub, 2, "sha256:bbbb")
    with pytest.raises(OperationFailed) as e:
        ops(client, FakeTime(), []).restart("orders-api", {})
    assert e.value.detail.startswith("Task definition changed during restart")


def test_restart_of_a_service_without_running_tasks(ecs, td):
    client, stub = ecs
    stub_restart_before(stub, td, [])
    stub.add_response("describe_services", service(td, [deployment("ecs-svc/1", td, running=0)], desired=0,
                                                   running=0))
    out = ops(client, FakeTime(), []).restart("orders-api", {})  # no describe_tasks, no stop_task
    assert out.detail == "Nothing to restart: no running tasks; STOPPED (0/0 running)"


def test_restart_stop_denied(ecs, td):
    client, stub = ecs
    stub_restart_before(stub, td, ["arn:t/0", "arn:t/1"])
    stub.add_client_error("stop_task", "AccessDeniedException", "User is not authorized", 400)
    with pytest.raises(OperationFailed) as e:
        ops(client, FakeTime(), []).restart("orders-api", {})
    assert e.value.detail.startswith("AccessDenied while stopping a task of orders-api")


def test_state_record_is_the_full_state_plus_its_primary_deployment():
    import dataclasses

    from cloud.ecs import Deployment, ServiceState

    st = ServiceState(name="orders-api", status="HEALTHY", desired=2, running=2, pending=0,
                      task_definition="orders:7", image="repo/orders:latest",
                      deployments=[Deployment(id="ecs-svc/1", status="PRIMARY", rollout_state="COMPLETED",
                                              task_definition="orders:7", desired=2, running=2, pending=0)],
                      image_digests=["sha256:a3f2b1"], last_deployment_at="2026-11-20T00:00:00+00:00")
    rec = st.record()
    assert rec == {**dataclasses.asdict(st), "deployment_id": "ecs-svc/1", "rollout_state": "COMPLETED"}
    rec["deployments"][0]["id"] = "changed"
    rec["image_digests"].append("sha256:other")
    assert st.deployments[0].id == "ecs-svc/1" and st.image_digests == ["sha256:a3f2b1"]  # a copy, not a view


def test_running_tasks_follows_every_page_of_list_tasks(ecs):
    from cloud.ecs import EcsReader

    client, stub = ecs
    ask = {"cluster": CLUSTER, "serviceName": "orders-api", "desiredStatus": "RUNNING"}
    stub.add_response("list_tasks", {"taskArns": ["arn:t/1"], "nextToken": "page-2"}, ask)
    stub.add_response("list_tasks", {"taskArns": ["arn:t/2"]}, {**ask, "nextToken": "page-2"})
    stub.add_response("describe_tasks", tasks(["arn:t/1", "arn:t/2"], "sha256:a3f2b1"),
                      {"cluster": CLUSTER, "tasks": ["arn:t/1", "arn:t/2"]})
    assert [t["taskArn"] for t in EcsReader(client, CLUSTER).running_tasks("orders-api")] == ["arn:t/1", "arn:t/2"]


def test_resumed_restart_stops_nothing_when_a_deployment_ran_meanwhile(ecs, td):
    """The crashed attempt began on orders:6; the service now runs orders:7: no task is stopped."""
    client, stub = ecs
    stub_restart_before(stub, td, ["arn:t/new0", "arn:t/1"])  # then nothing: a stop_task would find no stub
    params = {"restart_tasks": ["arn:t/0", "arn:t/1"], "before": {"task_definition": "orders-old:6"}}
    with pytest.raises(OperationFailed, match=r"changed since this restart began \(orders-old:6 → .*No more tasks"):
        ops(client, FakeTime(), []).restart("orders-api", params)
