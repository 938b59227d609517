"""The exact AWS call sequences of restart and redeploy, on a fake clock, through botocore's Stubber.

Operations run as a worker runs them (``Steps``): every wait between two looks suspends the job and the
next look starts again from the checkpoint, so these sequences also prove that resuming from a
checkpoint neither repeats a mutation nor skips a look.

Each test scripts what ECS answers (eventual consistency included: a stopped task
still RUNNING, a replacement appearing later with ``startedBy``) and asserts the
calls made — in order, with their key parameters — and that none is left over.
"""
from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import boto3
import pytest
from botocore.exceptions import ReadTimeoutError
from botocore.stub import ANY, Stubber

from scope.errors import OperationFailed, TransientError
from workers.context import Outcome, Suspend
from workers.ecs import EcsOperations

CLUSTER = "stg"
SVC = "orders-api"
REPO_URI = "123456789012.dkr.ecr.us-east-1.amazonaws.com/orders"
OLD, NEW = "sha256:9c0d11" + "f" * 58, "sha256:a3f2b1" + "e" * 58
SD_ARN = "arn:aws:ecs:us-east-1:1:service-deployment/stg/orders-api/new"
WHEN = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)


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


def deployment(id_: str, td: str, rollout: str = "COMPLETED", status: str = "PRIMARY", reason: str = "",
               running: int = 2, desired: int = 2) -> dict:
    d = {"id": id_, "status": status, "taskDefinition": td, "desiredCount": desired, "runningCount": running,
         "pendingCount": 0, "rolloutState": rollout, "createdAt": WHEN}
    if reason:
        d["rolloutStateReason"] = reason
    return d


def service(td: str, deployments: list[dict], desired: int = 2, running: int = 2, min_healthy: int = 50,
            controller: str = "ECS", sd: str = "", breaker: bool = False, lb: bool = False) -> dict:
    s: dict[str, Any] = {
        "serviceName": SVC, "status": "ACTIVE", "desiredCount": desired, "runningCount": running,
        "pendingCount": 0, "taskDefinition": td, "deploymentController": {"type": controller},
        "deploymentConfiguration": {"minimumHealthyPercent": min_healthy, "maximumPercent": 200,
                                    "deploymentCircuitBreaker": {"enable": breaker, "rollback": breaker}},
        "deployments": deployments}
    if sd:
        s["currentServiceDeployment"] = sd
    if lb:
        s["loadBalancers"] = [{"targetGroupArn": "arn:tg/orders", "containerName": "app", "containerPort": 8080}]
    return {"services": [s], "failures": []}


def task(arn: str, digest: str = OLD, last: str = "RUNNING", desired: str = "RUNNING", health: str = "HEALTHY",
         by: str = "ecs-svc/1", reason: str = "", exit_code: int | None = None, ip: str = "") -> dict:
    c: dict[str, Any] = {"name": "app", "imageDigest": digest, "healthStatus": health}
    if exit_code is not None:
        c["exitCode"] = exit_code
    if ip:
        c["networkInterfaces"] = [{"privateIpv4Address": ip}]
    t: dict[str, Any] = {"taskArn": arn, "group": f"service:{SVC}", "lastStatus": last, "desiredStatus": desired,
                         "healthStatus": health if last == "RUNNING" else "UNKNOWN", "startedBy": by,
                         "containers": [c]}
    if reason:
        t["stoppedReason"] = reason
    return t


@pytest.fixture
def clients():
    kw = dict(region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    ecs = boto3.client("ecs", endpoint_url="https://ecs.us-east-1.amazonaws.com", **kw)
    ecr = boto3.client("ecr", endpoint_url="https://api.ecr.us-east-1.amazonaws.com", **kw)
    elb = boto3.client("elbv2", endpoint_url="https://elasticloadbalancing.us-east-1.amazonaws.com", **kw)
    calls: list[str] = []
    for c in (ecs, ecr, elb):  # first: the Stubber answers in its own before-call handler, which ends the event
        c.meta.events.register_first("before-call.*.*", lambda model, **_: calls.append(model.name))
    with Stubber(ecs) as s1, Stubber(ecr) as s2, Stubber(elb) as s3:
        yield (ecs, ecr, elb), (s1, s2, s3), calls
        for s in (s1, s2, s3):
            s.assert_no_pending_responses()


@pytest.fixture
def td() -> str:
    # A fresh ARN per test: task definitions are cached per process (they are immutable).
    return f"arn:aws:ecs:us-east-1:1:task-definition/orders-{uuid.uuid4().hex[:8]}:7"


class Steps:
    """The operation as a worker runs it: a sequence of steps over its checkpoint.

    Each wait suspends the step (the fake clock moves by the delay, recorded in ``t.sleeps``), and the
    next step runs on a fresh EcsOperations from the last checkpoint as stored (a JSON round trip, as
    the job row does) — nothing carries over in memory from one step to the next.
    """

    def __init__(self, clients_, t: FakeTime, events: list, saved: list, timeout: float) -> None:
        self.clients, self.t, self.events, self.saved, self.timeout = clients_, t, events, saved, timeout
        self.settle_seconds = 10.0
        self.steps = 0

    def _ops(self, continuing: bool) -> EcsOperations:
        (ecs, ecr, elb) = self.clients

        def suspend(seconds: float) -> None:
            raise Suspend(seconds)

        return EcsOperations(ecs, CLUSTER, progress=lambda k, m: self.events.append((k, m)),
                             checkpoint=lambda p: self.saved.append(json.loads(json.dumps(p))), poll_interval=5,
                             timeout=self.timeout, sleep=suspend, clock=self.t.clock, ecr=ecr, elbv2=elb,
                             region="us-east-1", settle_seconds=self.settle_seconds, continuing=continuing)

    def _run(self, action: str, service: str, params: dict) -> Outcome:
        continuing = False
        while True:
            self.steps += 1
            try:
                return getattr(self._ops(continuing), action)(service, params)
            except Suspend as s:
                self.t.sleep(s.seconds)
                params, continuing = json.loads(json.dumps(self.saved[-1])), True

    def restart(self, service: str, params: dict) -> Outcome:
        return self._run("restart", service, params)

    def redeploy(self, service: str, params: dict) -> Outcome:
        return self._run("redeploy", service, params)


def ops(clients_, t: FakeTime, events: list | None = None, saved: list | None = None,
        timeout: float = 120.0) -> Steps:
    return Steps(clients_, t, events if events is not None else [], saved if saved is not None else [], timeout)


def stub_plan(stub, td: str, arns: list[str], health_check: bool = True, **svc_kw: Any) -> None:
    """DescribeServices, DescribeTaskDefinition, ListTasks + DescribeTasks (the running tasks)."""
    stub.add_response("describe_services", service(td, [deployment("ecs-svc/1", td, desired=len(arns),
                                                                   running=len(arns))],
                                                   desired=len(arns), running=len(arns), **svc_kw),
                      {"cluster": CLUSTER, "services": [SVC]})
    container: dict[str, Any] = {"name": "app", "image": f"{REPO_URI}:latest", "essential": True}
    if health_check:
        container["healthCheck"] = {"command": ["CMD", "true"]}
    stub.add_response("describe_task_definition", {"taskDefinition": {
        "taskDefinitionArn": td, "containerDefinitions": [container]}})
    stub.add_response("list_tasks", {"taskArns": arns},
                      {"cluster": CLUSTER, "serviceName": SVC, "desiredStatus": "RUNNING"})
    if arns:
        stub.add_response("describe_tasks", {"tasks": [task(a) for a in arns]}, {"cluster": CLUSTER, "tasks": arns})


def stub_ecr(stub, running: str = OLD, tag_now: str = OLD) -> None:
    stub.add_response("describe_images", {"imageDetails": [{"imageDigest": running}]},
                      {"registryId": "123456789012", "repositoryName": "orders", "imageIds": [{"imageDigest": running}]})
    stub.add_response("describe_images", {"imageDetails": [{"imageDigest": tag_now}]},
                      {"registryId": "123456789012", "repositoryName": "orders", "imageIds": [{"imageTag": "latest"}]})


def stub_look(stub, running: list[dict], stopped: list[dict] = (), ask: list[str] | None = None) -> None:
    """One look at the tasks: ListTasks RUNNING, ListTasks STOPPED, DescribeTasks of them all."""
    stub.add_response("list_tasks", {"taskArns": [t["taskArn"] for t in running if t["desiredStatus"] == "RUNNING"]},
                      {"cluster": CLUSTER, "serviceName": SVC, "desiredStatus": "RUNNING"})
    stub.add_response("list_tasks", {"taskArns": [t["taskArn"] for t in stopped]},
                      {"cluster": CLUSTER, "serviceName": SVC, "desiredStatus": "STOPPED"})
    everything = list(running) + list(stopped)
    stub.add_response("describe_tasks", {"tasks": everything},
                      {"cluster": CLUSTER, "tasks": ask if ask is not None else ANY})


# ---- restart as a new deployment -----------------------------------------------------------
def test_restart_by_deployment_call_sequence(clients, td):
    """Tag still names the running digest: UpdateService, follow the service deployment, check digests."""
    cl, (ecs, ecr, _), calls = clients
    t, events, saved = FakeTime(), [], []
    stub_plan(ecs, td, ["arn:t/0", "arn:t/1"])
    stub_ecr(ecr)
    new_dep = deployment("ecs-svc/2", td, "IN_PROGRESS", running=0)
    old_dep = deployment("ecs-svc/1", td, status="ACTIVE")
    ecs.add_response("update_service", {"service": service(td, [new_dep, old_dep], sd=SD_ARN)["services"][0]},
                     {"cluster": CLUSTER, "service": SVC, "forceNewDeployment": True})
    # Poll 1: rolling out, nothing failed yet (no circuit breaker: the job watches for crash loops itself).
    ecs.add_response("describe_services", service(td, [new_dep, old_dep], sd=SD_ARN))
    ecs.add_response("describe_service_deployments", {"serviceDeployments": [
        {"serviceDeploymentArn": SD_ARN, "status": "IN_PROGRESS"}]}, {"serviceDeploymentArns": [SD_ARN]})
    ecs.add_response("list_tasks", {"taskArns": []}, {"cluster": CLUSTER, "serviceName": SVC,
                                                      "desiredStatus": "STOPPED"})
    # Poll 2: SUCCESSFUL; the new tasks are RUNNING, HEALTHY, same digest.
    ecs.add_response("describe_services", service(td, [deployment("ecs-svc/2", td)], sd=SD_ARN))
    ecs.add_response("describe_service_deployments", {"serviceDeployments": [
        {"serviceDeploymentArn": SD_ARN, "status": "SUCCESSFUL"}]})
    stub_look(ecs, [task("arn:t/n0", by="ecs-svc/2"), task("arn:t/n1", by="ecs-svc/2")])
    run = ops(cl, t, events, saved)
    out = run.restart(SVC, {})
    assert out.detail == "HEALTHY after 5s · same image sha:9c0d11"
    assert run.steps == 2 and not [m for k, m in events if k == "resume"]  # suspended once, not "resumed"
    assert calls == ["DescribeServices", "DescribeTaskDefinition", "ListTasks", "DescribeTasks",
                     "DescribeImages", "DescribeImages", "UpdateService",
                     "DescribeServices", "DescribeServiceDeployments", "ListTasks",
                     "DescribeServices", "DescribeServiceDeployments", "ListTasks", "ListTasks", "DescribeTasks"]
    assert t.sleeps == [5]
    # Checkpointed before the mutation (what it is about to do), then what it did.
    assert saved[0]["mechanism"] == "deployment" and saved[0]["deploy_from"] == "ecs-svc/1"
    assert "deployment_id" not in saved[0]
    assert saved[1]["deployment_id"] == "ecs-svc/2" and saved[1]["service_deployment"] == SD_ARN
    assert any(m.startswith("deployment: start a new deployment") for k, m in events if k == "plan")


def test_restart_by_deployment_fails_when_the_tag_moved_meanwhile(clients, td):
    cl, (ecs, ecr, _), _calls = clients
    stub_plan(ecs, td, ["arn:t/0"])
    stub_ecr(ecr)
    ecs.add_response("update_service", {"service": service(td, [deployment("ecs-svc/2", td, "IN_PROGRESS")],
                                                           sd=SD_ARN)["services"][0]})
    ecs.add_response("describe_services", service(td, [deployment("ecs-svc/2", td, desired=1, running=1)],
                                                  desired=1, running=1, sd=SD_ARN))
    ecs.add_response("describe_service_deployments", {"serviceDeployments": [{"status": "SUCCESSFUL"}]})
    stub_look(ecs, [task("arn:t/n0", digest=NEW, by="ecs-svc/2")])
    with pytest.raises(OperationFailed) as e:
        ops(cl, FakeTime()).restart(SVC, {})
    assert e.value.detail.startswith("The image changed during the restart (the tag moved while the deployment "
                                     "ran): app sha:9c0d11 → sha:a3f2b1.")


def test_read_timeout_on_update_service_looks_and_fails_when_nothing_started(clients, td):
    cl, (ecs, ecr, _), calls = clients
    stub_plan(ecs, td, ["arn:t/0", "arn:t/1"])
    stub_ecr(ecr)
    # The request reached ECS (which answered), but the answer never arrived.
    ecs.add_response("update_service", {"service": service(td, [deployment("ecs-svc/1", td)])["services"][0]})
    cl[0].meta.events.register("after-call.ecs.UpdateService", _raise_timeout)
    for _ in range(3):  # three looks; the deployment never shows: fail, never ask again
        ecs.add_response("describe_services", service(td, [deployment("ecs-svc/1", td)]))
    t = FakeTime()
    with pytest.raises(OperationFailed, match="ECS did not answer the request for a new deployment, and none appeared"):
        ops(cl, t).restart(SVC, {})
    assert calls.count("UpdateService") == 1 and t.sleeps == [5, 5]


def _raise_timeout(**_: Any) -> None:
    raise ReadTimeoutError(endpoint_url="https://ecs.us-east-1.amazonaws.com")


def test_resumed_deployment_restart_adopts_the_new_deployment(clients, td):
    """Crashed after UpdateService, before recording its answer: the new PRIMARY is adopted, not re-made."""
    cl, (ecs, _, _), calls = clients
    ecs.add_response("describe_services", service(td, [deployment("ecs-svc/2", td)], sd=SD_ARN))
    ecs.add_response("describe_task_definition", {"taskDefinition": {
        "taskDefinitionArn": td, "containerDefinitions": [{"name": "app", "image": f"{REPO_URI}:latest"}]}})
    ecs.add_response("describe_services", service(td, [deployment("ecs-svc/2", td)], sd=SD_ARN))
    ecs.add_response("describe_service_deployments", {"serviceDeployments": [{"status": "SUCCESSFUL"}]})
    stub_look(ecs, [task("arn:t/n0", by="ecs-svc/2"), task("arn:t/n1", by="ecs-svc/2")])
    params = {"mechanism": "deployment", "deploy_from": "ecs-svc/1", "deploy_from_sd": "arn:old",
              "before": {"container_digests": {"app": OLD}}}
    t = FakeTime()
    o = ops(cl, t)
    o.settle_seconds = 0
    out = o.restart(SVC, params)
    assert out.detail == "HEALTHY after 0s · same image sha:9c0d11" and "UpdateService" not in calls
    assert params["deployment_id"] == "ecs-svc/2" and params["service_deployment"] == SD_ARN


# ---- ECS counts running tasks it does not list yet (ListTasks lags the service) ------------------
def stub_unlisted_plan(stub, td: str) -> None:
    """2 of 2 running by the service's count, none listed RUNNING (eventual consistency)."""
    stub.add_response("describe_services", service(td, [deployment("ecs-svc/1", td)]),
                      {"cluster": CLUSTER, "services": [SVC]})
    stub.add_response("describe_task_definition", {"taskDefinition": {
        "taskDefinitionArn": td, "containerDefinitions": [{"name": "app", "image": f"{REPO_URI}:latest"}]}})
    stub.add_response("list_tasks", {"taskArns": []},
                      {"cluster": CLUSTER, "serviceName": SVC, "desiredStatus": "RUNNING"})
    stub.add_response("update_service", {"service": service(td, [deployment("ecs-svc/2", td, "IN_PROGRESS",
                                                                            running=0)])["services"][0]},
                      {"cluster": CLUSTER, "service": SVC, "forceNewDeployment": True})


def stub_empty_look(stub) -> None:
    """A look that finds no task at all: nothing to describe."""
    for status in ("RUNNING", "STOPPED"):
        stub.add_response("list_tasks", {"taskArns": []},
                          {"cluster": CLUSTER, "serviceName": SVC, "desiredStatus": status})


def test_unlisted_tasks_restart_by_deployment_and_finish_unverified_after_the_grace(clients, td):
    """Batches need the tasks; a deployment does not. ECS then reports the deployment COMPLETED with 2 of 2
    running, but lists none of its tasks: the job waits UNLISTED_GRACE for the list, then finishes on
    ECS' word and says the image was not verified (never a claim of "same image")."""
    from workers.ecs import UNLISTED_GRACE

    cl, (ecs, _, _), calls = clients
    t, events = FakeTime(), []
    stub_unlisted_plan(ecs, td)
    polls = int(UNLISTED_GRACE / 5) + 1  # the first poll starts the grace; it ends UNLISTED_GRACE later
    for _ in range(polls):
        ecs.add_response("describe_services", service(td, [deployment("ecs-svc/2", td)]))
        stub_empty_look(ecs)
    out = ops(cl, t, events).restart(SVC, {})
    assert out.detail.startswith(f"HEALTHY after {int(UNLISTED_GRACE)}s (deployment COMPLETED) · image not "
                                 "verified: ECS listed none of deployment ecs-svc/2's tasks")
    assert "same image" not in out.detail
    assert calls.count("UpdateService") == 1 and "StopTask" not in calls and "DescribeImages" not in calls
    assert any("lists none as RUNNING yet" in m for k, m in events if k == "warning")
    assert any("waiting for ECS to list its tasks" in m for k, m in events if k == "progress")


def test_unlisted_tasks_that_show_up_in_time_are_verified_as_usual(clients, td):
    cl, (ecs, _, _), _calls = clients
    stub_unlisted_plan(ecs, td)
    ecs.add_response("describe_services", service(td, [deployment("ecs-svc/2", td)]))
    stub_empty_look(ecs)
    ecs.add_response("describe_services", service(td, [deployment("ecs-svc/2", td)]))
    stub_look(ecs, [task("arn:t/n0", by="ecs-svc/2"), task("arn:t/n1", by="ecs-svc/2")])
    out = ops(cl, FakeTime()).restart(SVC, {})
    # Nothing to compare with: no digest was readable before, so no claim of "same image".
    assert out.detail == "HEALTHY after 5s · now runs sha:9c0d11 (the image before could not be read)"


def test_no_running_task_by_count_either_is_refused(clients, td):
    cl, (ecs, _, _), calls = clients
    ecs.add_response("describe_services", service(td, [deployment("ecs-svc/1", td, running=0)], running=0),
                     {"cluster": CLUSTER, "services": [SVC]})
    ecs.add_response("describe_task_definition", {"taskDefinition": {
        "taskDefinitionArn": td, "containerDefinitions": [{"name": "app", "image": f"{REPO_URI}:latest"}]}})
    ecs.add_response("list_tasks", {"taskArns": []},
                     {"cluster": CLUSTER, "serviceName": SVC, "desiredStatus": "RUNNING"})
    with pytest.raises(OperationFailed, match=r"no running task to restart \(0/2 running\)"):
        ops(cl, FakeTime()).restart(SVC, {})
    assert "UpdateService" not in calls


# ---- preflight refusals ---------------------------------------------------------------------
@pytest.mark.parametrize("controller,words", [("CODE_DEPLOY", "deploys through AWS CodeDeploy"),
                                              ("EXTERNAL", "uses the EXTERNAL deployment controller")])
def test_code_deploy_and_external_are_refused_before_any_change(clients, td, controller, words):
    cl, (ecs, _, _), calls = clients
    ecs.add_response("describe_services", service(td, [], controller=controller))
    ecs.add_response("describe_task_definition", {"taskDefinition": {
        "taskDefinitionArn": td, "containerDefinitions": [{"name": "app", "image": f"{REPO_URI}:latest"}]}})
    ecs.add_response("describe_services", service(td, [], controller=controller))
    for action in ("restart", "redeploy"):
        with pytest.raises(OperationFailed, match=words):
            getattr(ops(cl, FakeTime()), action)(SVC, {})
    assert calls == ["DescribeServices", "DescribeTaskDefinition", "DescribeServices"]


def test_deployment_in_progress_is_refused(clients, td):
    cl, (ecs, _, _), _calls = clients
    ecs.add_response("describe_services", service(td, [deployment("ecs-svc/2", td, "IN_PROGRESS"),
                                                       deployment("ecs-svc/1", td, status="ACTIVE")]))
    ecs.add_response("describe_task_definition", {"taskDefinition": {
        "taskDefinitionArn": td, "containerDefinitions": [{"name": "app", "image": f"{REPO_URI}:latest"}]}})
    with pytest.raises(OperationFailed, match=r"A deployment of orders-api is in progress \(2 deployments"):
        ops(cl, FakeTime()).restart(SVC, {})


def test_running_digest_gone_from_ecr_is_refused(clients, td):
    cl, (ecs, ecr, _), calls = clients
    stub_plan(ecs, td, ["arn:t/0", "arn:t/1"])
    ecr.add_client_error("describe_images", "ImageNotFoundException", "The image with imageId ... does not exist")
    with pytest.raises(OperationFailed) as e:
        ops(cl, FakeTime()).restart(SVC, {})
    assert "(sha:9c0d11) no longer exists in ECR" in e.value.detail and "Redeploy instead" in e.value.detail
    assert "StopTask" not in calls and "UpdateService" not in calls


# ---- restart in batches ---------------------------------------------------------------------
def test_batches_wait_for_identity_and_health_not_counts(clients, td):
    """Tag moved: 2 tasks at 50% minimum, one at a time. After StopTask the task still reads RUNNING
    (eventual consistency), then STOPPED; its replacement shows up UNKNOWN, then HEALTHY and healthy in the
    target group. Only then is the second task stopped."""
    cl, (ecs, ecr, elb), calls = clients
    t, events = FakeTime(), []
    stub_plan(ecs, td, ["arn:t/0", "arn:t/1"], lb=True)
    stub_ecr(ecr, tag_now=NEW)
    ecs.add_response("list_tasks", {"taskArns": ["arn:old-stopped"]},
                     {"cluster": CLUSTER, "serviceName": SVC, "desiredStatus": "STOPPED"})
    t0, t1 = task("arn:t/0", ip="10.0.0.1"), task("arn:t/1", ip="10.0.0.2")
    svc = service(td, [deployment("ecs-svc/1", td)], lb=True)

    def look(running: list[dict], stopped: list[dict] = (), healthy_ips: list[str] = ()) -> None:
        ecs.add_response("describe_services", svc)
        stub_look(ecs, running, stopped)
        ips = [c["networkInterfaces"][0]["privateIpv4Address"] for x in running
               if x["desiredStatus"] == "RUNNING" and x["lastStatus"] == "RUNNING" and x["healthStatus"] == "HEALTHY"
               for c in x["containers"] if c.get("networkInterfaces")]
        if ips:
            elb.add_response("describe_target_health", {"TargetHealthDescriptions": [
                {"Target": {"Id": ip, "Port": 8080}, "TargetHealth": {"State": "healthy" if ip in healthy_ips
                                                                       else "initial"}} for ip in ips]},
                {"TargetGroupArn": "arn:tg/orders", "Targets": [{"Id": ip, "Port": 8080} for ip in ips]})

    look([t0, t1], healthy_ips=["10.0.0.1", "10.0.0.2"])  # first look: both healthy; batch of 1
    ecs.add_response("stop_task", {"task": {"taskArn": "arn:t/0"}},
                     {"cluster": CLUSTER, "task": "arn:t/0", "reason": "Valet Key"})
    stopping = task("arn:t/0", desired="STOPPED", ip="10.0.0.1")  # lastStatus still RUNNING
    look([t1], [stopping], healthy_ips=["10.0.0.2"])
    gone = task("arn:t/0", last="STOPPED", desired="STOPPED")
    n0 = task("arn:t/n0", health="UNKNOWN", ip="10.0.0.3")
    look([t1, n0], [gone], healthy_ips=["10.0.0.2"])
    n0 = task("arn:t/n0", ip="10.0.0.3")
    look([t1, n0], [gone], healthy_ips=["10.0.0.2"])  # container HEALTHY, target still initial
    look([t1, n0], [gone], healthy_ips=["10.0.0.2", "10.0.0.3"])
    ecs.add_response("stop_task", {"task": {"taskArn": "arn:t/1"}},
                     {"cluster": CLUSTER, "task": "arn:t/1", "reason": "Valet Key"})
    n1 = task("arn:t/n1", ip="10.0.0.4")
    gone1 = task("arn:t/1", last="STOPPED", desired="STOPPED")
    look([n0, n1], [gone, gone1], healthy_ips=["10.0.0.3", "10.0.0.4"])
    look([n0, n1], [gone, gone1], healthy_ips=["10.0.0.3", "10.0.0.4"])  # the final look for the digests
    run = ops(cl, t, events)
    out = run.restart(SVC, {})
    assert out.detail == "HEALTHY after 15s · same image sha:9c0d11"
    assert t.sleeps == [5, 5, 5] and run.steps == 4
    assert [c for c in calls if c == "StopTask"] == ["StopTask", "StopTask"]
    assert calls.index("StopTask") < len(calls) - 1 - calls[::-1].index("StopTask")
    assert any(m.startswith("Batch 1 of 2: stopping 1 old task(s); 1 keep serving") for _, m in events)
    assert not any("briefly at reduced capacity" in m for k, m in events if k == "warning")


def test_batches_fail_fast_on_two_failed_replacements(clients, td):
    cl, (ecs, ecr, _), calls = clients
    stub_plan(ecs, td, ["arn:t/0", "arn:t/1", "arn:t/2", "arn:t/3"])
    stub_ecr(ecr, tag_now=NEW)
    ecs.add_response("list_tasks", {"taskArns": []}, {"cluster": CLUSTER, "serviceName": SVC,
                                                      "desiredStatus": "STOPPED"})
    svc = service(td, [deployment("ecs-svc/1", td, desired=4, running=4)], desired=4, running=4)
    run = [task(f"arn:t/{i}") for i in range(4)]
    ecs.add_response("describe_services", svc)
    stub_look(ecs, run)
    for a in ("arn:t/0", "arn:t/1"):
        ecs.add_response("stop_task", {"task": {"taskArn": a}})
    stopped = [task("arn:t/0", last="STOPPED", desired="STOPPED"), task("arn:t/1", last="STOPPED", desired="STOPPED"),
               task("arn:x/1", last="STOPPED", desired="STOPPED", reason="CannotPullContainerError: pull failed"),
               task("arn:x/2", last="STOPPED", desired="STOPPED", reason="CannotPullContainerError: pull failed")]
    ecs.add_response("describe_services", svc)
    stub_look(ecs, run[2:], stopped)
    with pytest.raises(OperationFailed) as e:
        ops(cl, FakeTime()).restart(SVC, {})
    assert e.value.detail == ("Replacement tasks keep failing: CannotPullContainerError: pull failed. No further task "
                              "was stopped; 2 task(s) still serve.")
    assert calls.count("StopTask") == 2


def test_resumed_batches_never_stop_a_task_twice(clients, td):
    """The crashed attempt stopped arn:t/0 (desiredStatus STOPPED now): only arn:t/1 is stopped, after t/0's
    replacement is healthy."""
    cl, (ecs, _, _), calls = clients
    params = {"mechanism": "batches", "restart_tasks": ["arn:t/0", "arn:t/1"], "stopped_before": [],
              "health_checked": True, "before": {"deployment_id": "ecs-svc/1", "container_digests": {"app": OLD}}}
    svc = service(td, [deployment("ecs-svc/1", td)], min_healthy=100)
    ecs.add_response("describe_services", svc)
    ecs.add_response("describe_task_definition", {"taskDefinition": {
        "taskDefinitionArn": td, "containerDefinitions": [{"name": "app", "image": f"{REPO_URI}:latest"}]}})
    stub_look(ecs, [task("arn:t/1"), task("arn:t/n0")], [task("arn:t/0", last="STOPPED", desired="STOPPED")])
    ecs.add_response("stop_task", {"task": {"taskArn": "arn:t/1"}}, {"cluster": CLUSTER, "task": "arn:t/1",
                                                                     "reason": "Valet Key"})
    ecs.add_response("describe_services", svc)
    stub_look(ecs, [task("arn:t/n0"), task("arn:t/n1")],
              [task("arn:t/0", last="STOPPED", desired="STOPPED"), task("arn:t/1", last="STOPPED", desired="STOPPED")])
    ecs.add_response("describe_services", svc)
    stub_look(ecs, [task("arn:t/n0"), task("arn:t/n1")])
    out = ops(cl, FakeTime()).restart(SVC, params)
    assert out.detail == "HEALTHY after 0s · same image sha:9c0d11" and calls.count("StopTask") == 1


def test_restart_stop_denied(clients, td):
    cl, (ecs, ecr, _), _calls = clients
    stub_plan(ecs, td, ["arn:t/0", "arn:t/1", "arn:t/2", "arn:t/3"])
    stub_ecr(ecr, tag_now=NEW)
    ecs.add_response("list_tasks", {"taskArns": []})
    ecs.add_response("describe_services", service(td, [deployment("ecs-svc/1", td, desired=4)], desired=4))
    stub_look(ecs, [task(f"arn:t/{i}") for i in range(4)])
    ecs.add_client_error("stop_task", "AccessDeniedException", "User is not authorized", 400)
    with pytest.raises(OperationFailed) as e:
        ops(cl, FakeTime()).restart(SVC, {})
    assert e.value.detail.startswith("AccessDenied while stopping a task of orders-api")


# ---- redeploy ---------------------------------------------------------------------------------
def stub_redeploy_start(ecs, td, breaker: bool = False) -> None:
    stub_plan(ecs, td, ["arn:t/0", "arn:t/1"], breaker=breaker)
    ecs.add_response("update_service", {"service": service(
        td, [deployment("ecs-svc/2", td, "IN_PROGRESS", running=0), deployment("ecs-svc/1", td, status="ACTIVE")],
        sd=SD_ARN, breaker=breaker)["services"][0]}, {"cluster": CLUSTER, "service": SVC, "forceNewDeployment": True})


def test_redeploy_reports_digests_old_and_new(clients, td):
    cl, (ecs, _, _), calls = clients
    stub_redeploy_start(ecs, td)
    ecs.add_response("describe_services", service(td, [deployment("ecs-svc/2", td)], sd=SD_ARN))
    ecs.add_response("describe_service_deployments", {"serviceDeployments": [{"status": "SUCCESSFUL"}]})
    stub_look(ecs, [task("arn:t/n0", NEW, by="ecs-svc/2"), task("arn:t/n1", NEW, by="ecs-svc/2")])
    out = ops(cl, FakeTime()).redeploy(SVC, {})
    assert out.detail == "Deployed sha:a3f2b1 (was sha:9c0d11)"
    assert "DescribeImages" not in calls  # a redeploy resolves tags anew: nothing to check in ECR


def test_redeploy_rolled_back_by_the_circuit_breaker(clients, td):
    cl, (ecs, _, _), _calls = clients
    stub_redeploy_start(ecs, td, breaker=True)
    why = "ECS deployment circuit breaker: tasks failed to start."
    rollback = [deployment("ecs-svc/3", td, "IN_PROGRESS"), deployment("ecs-svc/2", td, "FAILED", "ACTIVE", why)]
    ecs.add_response("describe_services", service(td, rollback, sd=SD_ARN, breaker=True))
    ecs.add_response("describe_service_deployments", {"serviceDeployments": [
        {"status": "ROLLBACK_IN_PROGRESS", "statusReason": why}]})
    ecs.add_response("describe_services", service(td, [deployment("ecs-svc/3", td)], sd=SD_ARN, breaker=True))
    ecs.add_response("describe_service_deployments", {"serviceDeployments": [
        {"status": "ROLLBACK_SUCCESSFUL", "statusReason": why}]})
    events: list = []
    with pytest.raises(OperationFailed) as e:
        ops(cl, FakeTime(), events).redeploy(SVC, {})
    assert e.value.detail == f"Rolled back by the deployment circuit breaker: {why}"
    assert ("progress", f"Rolling back: {why}") in events


def test_redeploy_times_out(clients, td):
    cl, (ecs, _, _), _calls = clients
    stub_redeploy_start(ecs, td, breaker=True)
    for _ in range(4):  # at 0, 5, 10, 15 s; past the 12 s timeout it gives up
        ecs.add_response("describe_services", service(td, [deployment("ecs-svc/2", td, "IN_PROGRESS")], sd=SD_ARN,
                                                      breaker=True))
        ecs.add_response("describe_service_deployments", {"serviceDeployments": [{"status": "IN_PROGRESS"}]})
    with pytest.raises(OperationFailed) as e:
        ops(cl, FakeTime(), timeout=12).redeploy(SVC, {})
    assert e.value.detail.startswith("Timed out after 12s waiting for deployment ecs-svc/2")


def test_redeploy_access_denied(clients, td):
    cl, (ecs, _, _), _calls = clients
    stub_plan(ecs, td, ["arn:t/0"])
    ecs.add_client_error("update_service", "AccessDeniedException", "User is not authorized", 400)
    with pytest.raises(OperationFailed) as e:
        ops(cl, FakeTime()).redeploy(SVC, {})
    assert e.value.detail.startswith("AccessDenied while starting a deployment of orders-api")


def test_throttling_is_transient(clients, td):
    cl, (ecs, _, _), _calls = clients
    ecs.add_client_error("describe_services", "ThrottlingException", "Rate exceeded", 400)
    with pytest.raises(TransientError):
        ops(cl, FakeTime()).redeploy(SVC, {})


# ---- the reader -----------------------------------------------------------------------------------
def test_state_record_is_the_full_state_plus_its_primary_deployment():
    import dataclasses

    from cloud.ecs import Deployment, ServiceState

    st = ServiceState(name="orders-api", status="HEALTHY", desired=2, running=2, pending=0,
                      task_definition="orders:7", image="repo/orders:latest",
                      deployments=[Deployment(id="ecs-svc/1", status="PRIMARY", rollout_state="COMPLETED",
                                              task_definition="orders:7", desired=2, running=2, pending=0)],
                      image_digests=["sha256:a3f2b1"], last_deployment_at="2026-11-20T00:00:00+00:00",
                      container_digests={"app": "sha256:a3f2b1"})
    rec = st.record()
    assert rec == {**dataclasses.asdict(st), "deployment_id": "ecs-svc/1", "rollout_state": "COMPLETED"}
    rec["deployments"][0]["id"] = "changed"
    rec["image_digests"].append("sha256:other")
    rec["container_digests"]["app"] = "sha256:other"
    assert st.deployments[0].id == "ecs-svc/1" and st.image_digests == ["sha256:a3f2b1"]  # a copy, not a view
    assert st.container_digests == {"app": "sha256:a3f2b1"}


def test_running_tasks_follows_every_page_of_list_tasks(clients):
    from cloud.ecs import EcsReader

    cl, (ecs, _, _), _calls = clients
    ask = {"cluster": CLUSTER, "serviceName": "orders-api", "desiredStatus": "RUNNING"}
    ecs.add_response("list_tasks", {"taskArns": ["arn:t/1"], "nextToken": "page-2"}, ask)
    ecs.add_response("list_tasks", {"taskArns": ["arn:t/2"]}, {**ask, "nextToken": "page-2"})
    ecs.add_response("describe_tasks", {"tasks": [task("arn:t/1"), task("arn:t/2")]},
                     {"cluster": CLUSTER, "tasks": ["arn:t/1", "arn:t/2"]})
    assert [t["taskArn"] for t in EcsReader(cl[0], CLUSTER).running_tasks("orders-api")] == ["arn:t/1", "arn:t/2"]


@pytest.mark.parametrize("uri,parts", [
    (f"{REPO_URI}:1.4", ("123456789012", "us-east-1", "orders", "1.4", "")),
    (f"{REPO_URI}", ("123456789012", "us-east-1", "orders", "latest", "")),
    (f"{REPO_URI}@{OLD}", ("123456789012", "us-east-1", "orders", "", OLD)),
    ("123456789012.dkr.ecr.eu-central-1.amazonaws.com/team/api:v2", ("123456789012", "eu-central-1", "team/api",
                                                                     "v2", "")),
])
def test_ecr_uri_parsing(uri, parts):
    from cloud.ecr import parse_ecr_uri

    r = parse_ecr_uri(uri)
    assert r is not None and (r.account, r.region, r.repo, r.tag, r.digest) == parts


@pytest.mark.parametrize("uri", ["nginx:1.27", "ghcr.io/acme/api:v1", "public.ecr.aws/acme/api:v1"])
def test_images_outside_ecr_cannot_be_verified(uri):
    from cloud.ecr import EcrImages, ImageCheck, parse_ecr_uri

    assert parse_ecr_uri(uri) is None
    assert EcrImages(object(), "us-east-1").verify("app", uri, OLD).check == ImageCheck.UNKNOWN


# ---- no blind retry of UpdateService -------------------------------------------------------------------
@pytest.fixture
def silent_endpoint():
    """An HTTP endpoint that reads each request and never answers; counts the requests."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    got: list[bytes] = []
    conns: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            conns.append(c)
            got.append(c.recv(65536))

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}", got
    srv.close()
    for c in conns:
        c.close()


@pytest.mark.parametrize("guarded", [True, False])
def test_update_service_is_sent_once_when_its_answer_times_out(silent_endpoint, guarded):
    from botocore.config import Config

    from workers.ecs import no_blind_retry

    url, got = silent_endpoint
    ecs = boto3.client("ecs", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x",
                       endpoint_url=url, config=Config(read_timeout=0.2, connect_timeout=1,
                                                       retries={"total_max_attempts": 3, "mode": "standard"}))
    with pytest.raises(ReadTimeoutError):
        if guarded:
            with no_blind_retry(ecs):
                ecs.update_service(cluster=CLUSTER, service=SVC, forceNewDeployment=True)
        else:
            ecs.update_service(cluster=CLUSTER, service=SVC, forceNewDeployment=True)
    sent = [r for r in got if b"UpdateService" in r]
    assert len(sent) == (1 if guarded else 3)  # botocore alone would have sent it three times
    if guarded:  # outside the block the client retries reads as before
        with pytest.raises(ReadTimeoutError):
            ecs.describe_services(cluster=CLUSTER, services=[SVC])
        assert len([r for r in got if b"DescribeServices" in r]) == 3
