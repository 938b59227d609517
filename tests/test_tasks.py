"""One-off tasks: allowlist, no overrides, clientToken + checkpoint (one task per job), exit code, timeout."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import time
from typing import Any, Callable, Iterator

import boto3
import pytest
from botocore.config import Config
from botocore.stub import ANY, Stubber
from sqlalchemy import update

from scope.models import Job
from tests.conftest import ACCOUNT, PASSWORD, REGION, SECRET_VALUE, audit_events, boto, seed_cluster
from tests.sim.conftest import NO_RETRY
from workers.runner import JobRunner

TASKS_URL = "/api/v1/environments/{env}/tasks"

TOML = """
[environments.staging]
region = "us-east-1"
cluster = "stg"
run_tasks = ["staging-migrate", "staging-backfill"]

[environments.netcfg]
region = "us-east-1"
cluster = "net"
run_tasks = ["net-migrate"]
network = { subnets = ["subnet-aaa", "subnet-bbb"], security_groups = ["sg-123"], assign_public_ip = true }

[environments.qa]
region = "us-east-1"
cluster = "qa"
run_tasks = ["qa-migrate"]

[environments.prod]
class = "prod"
region = "us-east-1"
cluster = "prod"
run_tasks = ["prod-migrate"]
"""

SERVICE_NET = {"awsvpcConfiguration": {"subnets": ["subnet-svc"], "securityGroups": ["sg-svc"],
                                       "assignPublicIp": "DISABLED"}}


@pytest.fixture
def environ(environ: dict[str, str], config_file: Callable[[str], str]) -> dict[str, str]:
    return {**environ, "VALETKEY_ENVIRONMENTS": config_file(TOML)}


@pytest.fixture
def dev(make_user: Callable[..., dict[str, str]]) -> dict[str, str]:
    return make_user("dev@acme.test", ("staging", "developer"), ("netcfg", "developer"), ("prod", "developer"))


def start(client: Any, headers: dict[str, str], body: Any, env: str = "staging") -> Any:
    return client.post(TASKS_URL.format(env=env), headers=headers, json=body)


def denied(rt: Any) -> list[dict[str, Any]]:
    return [e for e in audit_events(rt) if e["outcome"] == "denied" and e["action"] == "task.run"]


# ---- against moto ------------------------------------------------------------------
def family_tasks(family: str, cluster: str = "stg") -> list[dict[str, Any]]:
    ecs = boto("ecs")
    arns = ecs.list_tasks(cluster=cluster)["taskArns"]
    tasks = ecs.describe_tasks(cluster=cluster, tasks=arns)["tasks"] if arns else []
    return [t for t in tasks if t.get("group") == f"family:{family}"]


def test_runs_an_allowed_family_to_exit_0(client, dev, rt, aws) -> None:
    seed_cluster("stg", ["orders-api"], family_prefix="staging", extra_families=("staging-migrate",))
    r = start(client, dev, {"task_definition": "staging-migrate"})
    assert r.status_code == 202, r.json
    job = r.json
    assert r.headers["Location"] == job["url"]
    assert (job["action"], job["environment"], job["target"], job["status"]) == (
        "task.run", "staging", "staging-migrate", "queued")
    assert family_tasks("staging-migrate") == []  # nothing runs before a worker takes the job

    assert JobRunner(rt, sleep=lambda s: None).run(job["id"]) == "succeeded"
    done = client.get(job["url"], headers=dev).json
    assert re.fullmatch(r"exit 0 after \d+s", done["detail"]), done["detail"]

    [task] = family_tasks("staging-migrate")
    assert task["startedBy"] == f"valetkey/{job['id']}"
    assert task["taskDefinitionArn"].endswith("task-definition/staging-migrate:1")
    assert task["launchType"] == "FARGATE"

    events = client.get(job["url"] + "/events", headers=dev).json["events"]
    task_id = task["taskArn"].rsplit("/", 1)[-1]
    logs = [e["message"] for e in events if e["type"] == "logs"]
    assert logs == [f"Logs of app: CloudWatch log group /ecs/staging-migrate, stream app/app/{task_id}"]
    assert any(e["type"] == "state" and "STOPPED" in e["message"] for e in events)
    outcomes = [(e["outcome"], e["target"]) for e in audit_events(rt) if e["job_id"] == job["id"]]
    assert outcomes == [("requested", "staging-migrate"), ("succeeded", "staging-migrate")]
    # Task definition environment values never leave ECS.
    everything = str(events) + str(audit_events(rt)) + str(done) + str(rt.jobs.get(job["id"]).params)
    assert SECRET_VALUE not in everything and "API_KEY" not in everything


def test_runs_the_latest_revision_and_copies_the_service_network(client, dev, rt, aws) -> None:
    ids = seed_cluster("stg", ["orders-api"], family_prefix="staging", extra_families=("staging-migrate",))
    ecs = boto("ecs")
    td = ecs.describe_task_definition(taskDefinition="staging-migrate")["taskDefinition"]
    ecs.register_task_definition(**{k: td[k] for k in ("family", "networkMode", "requiresCompatibilities", "cpu",
                                                         "memory", "containerDefinitions", "taskRoleArn",
                                                         "executionRoleArn")})
    job = start(client, dev, {"task_definition": "staging-migrate"}).json
    assert JobRunner(rt, sleep=lambda s: None).run(job["id"]) == "succeeded"
    params = rt.jobs.get(job["id"]).params
    assert params["task_definition"].endswith(":2")
    [task] = family_tasks("staging-migrate")
    eni = [d["value"] for a in task.get("attachments", []) for d in a.get("details", [])
           if d["name"] == "subnetId"]
    assert eni == [ids["subnet"]]


def test_refused_family_starts_nothing(client, dev, rt, aws) -> None:
    seed_cluster("stg", ["orders-api"], family_prefix="staging", extra_families=("staging-secret-admin",))
    before = boto("ecs").list_tasks(cluster="stg")["taskArns"]
    r = start(client, dev, {"task_definition": "staging-secret-admin"})
    assert r.status_code == 403
    assert r.headers["Content-Type"].startswith("application/problem+json")
    [entry] = denied(rt)
    assert (entry["environment"], entry["target"]) == ("staging", "staging-secret-admin")
    assert rt.jobs.active_job("staging", "staging-secret-admin") is None
    assert boto("ecs").list_tasks(cluster="stg")["taskArns"] == before


# ---- refusals at the API --------------------------------------------------------------
@pytest.mark.parametrize("extra", [
    {"overrides": {"containerOverrides": [{"name": "app", "command": ["sh", "-c", "id"]}]}},
    {"command": ["rm", "-rf", "/"]}, {"image": "evil:latest"}, {"role": "arn:aws:iam::1:role/admin"},
    {"taskRoleArn": "arn:aws:iam::1:role/admin"}, {"environment": {"A": "b"}}, {"count": 10},
    {"launchType": "EC2"}, {"networkConfiguration": {}}, {"cluster": "prod"},
])
def test_overrides_are_400(client, dev, rt, extra) -> None:
    r = start(client, dev, {"task_definition": "staging-migrate", **extra})
    assert r.status_code == 400, r.json
    assert list(extra)[0] in r.json["errors"]
    assert rt.jobs.active_job("staging", "staging-migrate") is None


@pytest.mark.parametrize("value", [
    "staging-migrate:3", f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/staging-migrate:1",
    f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/staging-migrate", "staging-migrate/x", "", " ", None, 7,
    ["staging-migrate"],
])
def test_only_a_family_name_is_accepted(client, dev, rt, value) -> None:
    r = start(client, dev, {"task_definition": value})
    assert r.status_code == 400, r.json
    assert "task_definition" in r.json["errors"]
    assert rt.jobs.active_job("staging", "staging-migrate") is None


def test_missing_body_is_400(client, dev) -> None:
    r = client.post(TASKS_URL.format(env="staging"), headers=dev)
    assert r.status_code == 400 and "task_definition" in r.json["errors"]


def test_prod_is_403_even_for_its_own_allowlist(client, dev, rt) -> None:
    r = start(client, dev, {"task_definition": "prod-migrate"}, env="prod")
    assert r.status_code == 403
    [entry] = denied(rt)
    assert entry["environment"] == "prod"
    assert rt.jobs.active_job("prod", "prod-migrate") is None


def test_viewer_is_403(client, make_user, rt) -> None:
    viewer = make_user("view@acme.test", ("staging", "viewer"))
    assert start(client, viewer, {"task_definition": "staging-migrate"}).status_code == 403
    assert len(denied(rt)) == 1


def test_unassigned_environment_is_404(client, dev, rt) -> None:
    r = start(client, dev, {"task_definition": "qa-migrate"}, env="qa")
    assert r.status_code == 404
    assert rt.jobs.active_job("qa", "qa-migrate") is None


def test_unauthenticated_is_401(client) -> None:
    assert start(client, {}, {"task_definition": "staging-migrate"}).status_code == 401


def test_a_second_run_of_the_family_while_one_is_queued_is_409(client, dev) -> None:
    first = start(client, dev, {"task_definition": "staging-migrate"})
    second = start(client, dev, {"task_definition": "staging-migrate"})
    assert second.status_code == 409 and first.json["id"] in second.json["detail"]
    # Another family is independent.
    assert start(client, dev, {"task_definition": "staging-backfill"}).status_code == 202


# ---- the operation against botocore's Stubber ---------------------------------------------
@pytest.fixture
def stub() -> Iterator[tuple[Any, Stubber]]:
    # No retries: each stubbed error is seen by our code exactly once.
    ecs = boto3.client("ecs", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x",
                       endpoint_url="https://ecs.stub.invalid",
                       config=Config(retries={"total_max_attempts": 1}))
    with Stubber(ecs) as s:
        yield ecs, s
        s.assert_no_pending_responses()


def td_arn(family: str, rev: int = 3) -> str:
    return f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/{family}:{rev}"


def task_arn(cluster: str = "stg", tid: str = "0f0e0d0c0b0a") -> str:
    return f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/{cluster}/{tid}"


def task_definition(family: str, sidecar: bool = False) -> dict[str, Any]:
    containers: list[dict[str, Any]] = [{
        "name": "app", "essential": True, "image": f"{family}:latest",
        "environment": [{"name": "API_KEY", "value": SECRET_VALUE}],
        "logConfiguration": {"logDriver": "awslogs", "options": {
            "awslogs-group": f"/ecs/{family}", "awslogs-region": REGION, "awslogs-stream-prefix": "run"}}}]
    if sidecar:
        containers.append({"name": "proxy", "essential": False, "image": "envoy:1"})
    return {"taskDefinition": {"taskDefinitionArn": td_arn(family), "family": family, "revision": 3,
                               "networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"],
                               "containerDefinitions": containers}}


def expect_start(s: Stubber, family: str, job_id: str, *, cluster: str = "stg", via_service: bool = True,
                 network: dict[str, Any] | None = None, sidecar: bool = False) -> None:
    s.add_response("describe_task_definition", task_definition(family, sidecar), {"taskDefinition": family})
    if via_service:
        s.add_response("list_services", {"serviceArns": [f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/{cluster}/web"]},
                       {"cluster": cluster})
        s.add_response("describe_services", {"services": [{
            "serviceName": "web", "status": "ACTIVE", "launchType": "FARGATE", "platformVersion": "1.4.0",
            "networkConfiguration": SERVICE_NET}], "failures": []}, {"cluster": cluster, "services": ["web"]})
    expected = {"cluster": cluster, "taskDefinition": td_arn(family), "count": 1, "clientToken": job_id,
                "startedBy": f"valetkey/{job_id}", "launchType": "FARGATE",
                "networkConfiguration": network or SERVICE_NET}
    if via_service:
        expected["platformVersion"] = "1.4.0"
    s.add_response("run_task", {"tasks": [{"taskArn": task_arn(cluster), "lastStatus": "PROVISIONING"}],
                                "failures": []}, expected)


def described(status: str, cluster: str = "stg", containers: list[dict[str, Any]] | None = None,
              reason: str = "", secs: int | None = None) -> dict[str, Any]:
    t: dict[str, Any] = {"taskArn": task_arn(cluster), "lastStatus": status,
                         "containers": containers if containers is not None else [{"name": "app"}]}
    if reason:
        t["stoppedReason"] = reason
    if secs is not None:
        begin = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
        t["startedAt"], t["stoppedAt"] = begin, begin + dt.timedelta(seconds=secs)
    return {"tasks": [t], "failures": []}


def expect_describe(s: Stubber, body: dict[str, Any], cluster: str = "stg") -> None:
    s.add_response("describe_tasks", body, {"cluster": cluster, "tasks": [task_arn(cluster)]})


def unreachable_logs() -> Any:
    """A Logs client whose every call fails (a Stubber with nothing queued): output capture is best effort."""
    logs = boto3.client("logs", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x",
                        endpoint_url="https://logs.stub.invalid", config=Config(retries={"total_max_attempts": 1}))
    Stubber(logs).activate()
    return logs


def runner(rt: Any, ecs: Any, sleep: Callable[[float], None] | None = lambda s: None, logs: Any = None) -> JobRunner:
    """``sleep`` None: a worker's runner, which suspends the job between steps instead of waiting."""
    logs = logs or unreachable_logs()
    return JobRunner(rt, sleep=sleep, ecs_client=lambda env: ecs, logs_client=lambda env: logs)


def test_redelivery_follows_the_started_task_instead_of_running_another(client, dev, rt, stub) -> None:
    ecs, s = stub
    job = start(client, dev, {"task_definition": "staging-migrate"}).json
    expect_start(s, "staging-migrate", job["id"])
    # AWS throttles the first poll: the job is suspended, and its worker is lost meanwhile.
    s.add_client_error("describe_tasks", service_error_code="ThrottlingException", http_status_code=400)
    assert runner(rt, ecs, sleep=None).run(job["id"]) == "running"
    assert rt.jobs.get(job["id"]).params["task_arn"] == task_arn()
    with rt.engine.begin() as c:
        c.execute(update(Job).where(Job.id == job["id"]).values(
            heartbeat_at=dt.datetime.now(dt.timezone.utc) - rt.jobs.lease - dt.timedelta(seconds=5)))

    # The redelivered message: no describe_task_definition, no RunTask (the Stubber
    # would refuse an unexpected call), only following the task already started.
    expect_describe(s, described("RUNNING"))
    expect_describe(s, described("STOPPED", containers=[{"name": "app", "exitCode": 0}], secs=12))
    assert runner(rt, ecs).run(job["id"]) == "succeeded"
    assert rt.jobs.get(job["id"]).attempts == 2  # taken over from the lost worker
    assert rt.jobs.get(job["id"]).detail == "exit 0 after 12s"
    messages = [e["message"] for e in client.get(job["url"] + "/events", headers=dev).json["events"]]
    assert any("RunTask not repeated" in m for m in messages)


def test_exit_1_fails_the_job_with_the_code_and_reason(client, dev, rt, stub) -> None:
    ecs, s = stub
    job = start(client, dev, {"task_definition": "net-migrate"}, env="netcfg").json
    configured = {"awsvpcConfiguration": {"subnets": ["subnet-aaa", "subnet-bbb"], "securityGroups": ["sg-123"],
                                          "assignPublicIp": "ENABLED"}}
    expect_start(s, "net-migrate", job["id"], cluster="net", via_service=False, network=configured)
    expect_describe(s, described("RUNNING", "net"), "net")
    expect_describe(s, described("STOPPED", "net", [{"name": "app", "exitCode": 1}],
                                 reason="Essential container in task exited", secs=5), "net")
    assert runner(rt, ecs).run(job["id"]) == "failed"
    done = client.get(job["url"], headers=dev).json
    assert done["detail"] == "exit 1 after 5s: Essential container in task exited"
    assert [e["outcome"] for e in audit_events(rt) if e["job_id"] == job["id"]] == ["requested", "failed"]


def test_the_essential_container_decides(client, dev, rt, stub) -> None:
    ecs, s = stub
    job = start(client, dev, {"task_definition": "staging-migrate"}).json
    expect_start(s, "staging-migrate", job["id"], sidecar=True)
    expect_describe(s, described("STOPPED", containers=[{"name": "app", "exitCode": 0},
                                                         {"name": "proxy", "exitCode": 137}], secs=3))
    assert runner(rt, ecs).run(job["id"]) == "succeeded"
    assert rt.jobs.get(job["id"]).detail == "exit 0 after 3s"


def test_a_task_that_never_ran_fails_with_its_reason(client, dev, rt, stub) -> None:
    ecs, s = stub
    job = start(client, dev, {"task_definition": "staging-migrate"}).json
    expect_start(s, "staging-migrate", job["id"])
    expect_describe(s, described("STOPPED", containers=[{"name": "app", "reason": "CannotPullContainerError"}],
                                 reason="Task failed to start"))
    assert runner(rt, ecs).run(job["id"]) == "failed"
    assert re.fullmatch(r"no exit code after \d+s: Task failed to start", rt.jobs.get(job["id"]).detail)


def test_past_the_timeout_the_task_is_stopped_and_the_job_fails(client, dev, rt, stub) -> None:
    ecs, s = stub
    rt.settings = dataclasses.replace(rt.settings, task_timeout=1.0)
    job = start(client, dev, {"task_definition": "staging-migrate"}).json
    expect_start(s, "staging-migrate", job["id"])
    expect_describe(s, described("RUNNING"))
    expect_describe(s, described("RUNNING"))
    s.add_response("stop_task", {"task": {"taskArn": task_arn(), "lastStatus": "RUNNING"}},
                   {"cluster": "stg", "task": task_arn(), "reason": ANY})
    # One poll interval that outlasts the timeout: the second poll sees it expired.
    assert runner(rt, ecs, sleep=lambda _: time.sleep(1.1)).run(job["id"]) == "failed"
    assert re.fullmatch(r"Timed out after \d+s \(RUNNING\); the task was stopped\.", rt.jobs.get(job["id"]).detail)


def test_ecs_refusing_to_start_fails_clearly(client, dev, rt, stub) -> None:
    ecs, s = stub
    job = start(client, dev, {"task_definition": "staging-migrate"}).json
    s.add_response("describe_task_definition", task_definition("staging-migrate"), {"taskDefinition": "staging-migrate"})
    s.add_response("list_services", {"serviceArns": []}, {"cluster": "stg"})
    assert runner(rt, ecs).run(job["id"]) == "failed"
    assert "no [network] config and no service" in rt.jobs.get(job["id"]).detail

    job2 = start(client, dev, {"task_definition": "staging-backfill"}).json
    s.add_response("describe_task_definition", task_definition("staging-backfill"), {"taskDefinition": "staging-backfill"})
    s.add_response("list_services", {"serviceArns": [f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/stg/web"]},
                   {"cluster": "stg"})
    s.add_response("describe_services", {"services": [{"serviceName": "web", "status": "ACTIVE",
                                                       "launchType": "FARGATE", "networkConfiguration": SERVICE_NET}],
                                         "failures": []}, {"cluster": "stg", "services": ["web"]})
    s.add_response("run_task", {"tasks": [], "failures": [{"reason": "RESOURCE:MEMORY"}]}, {
        "cluster": "stg", "taskDefinition": td_arn("staging-backfill"), "count": 1, "clientToken": job2["id"],
        "startedBy": f"valetkey/{job2['id']}", "launchType": "FARGATE", "networkConfiguration": SERVICE_NET})
    assert runner(rt, ecs).run(job2["id"]) == "failed"
    assert rt.jobs.get(job2["id"]).detail == "ECS did not start a task of staging-backfill:3: RESOURCE:MEMORY"


def test_family_removed_from_the_allowlist_is_refused_at_run_time(client, dev, rt, stub, config_file) -> None:
    from scope.catalog import load_catalog

    ecs, _ = stub
    job = start(client, dev, {"task_definition": "staging-backfill"}).json
    rt.catalog = load_catalog(config_file(TOML.replace(', "staging-backfill"', "")), rt.settings.environ,
                              own_redis_url=rt.settings.redis_url)
    assert runner(rt, ecs).run(job["id"]) == "failed"  # the Stubber has nothing queued: no AWS call was made
    assert rt.jobs.get(job["id"]).detail.startswith("Refused at run time")


def test_access_denied_is_reported_without_aws_detail(client, dev, rt, stub) -> None:
    ecs, s = stub
    job = start(client, dev, {"task_definition": "staging-migrate"}).json
    s.add_client_error("describe_task_definition", service_error_code="AccessDeniedException",
                       service_message=f"User arn:aws:sts::{ACCOUNT}:assumed-role/x is not authorized",
                       http_status_code=400)
    assert runner(rt, ecs).run(job["id"]) == "failed"
    detail = rt.jobs.get(job["id"]).detail
    assert detail.startswith("AccessDenied while reading task definition staging-migrate")
    assert "assumed-role" not in detail


# ---- the page -----------------------------------------------------------------------------
def _login(client: Any, email: str) -> None:
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token,
                                       "next": "/"}).status_code == 302


def test_page_run_button(client, dev, rt, aws) -> None:
    seed_cluster("stg", ["orders-api"], family_prefix="staging")
    _login(client, "dev@acme.test")
    html = client.get("/environments/staging").get_data(as_text=True)
    form = re.search(r'<form method="post" action="/environments/staging/tasks"[^>]*>(.*?)</form>', html, re.S)
    assert form is not None
    options = re.findall(r'<option value="([^"]+)">', form.group(1))
    assert options == ["staging-migrate", "staging-backfill"]
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.group(1)).group(1)
    r = client.post("/environments/staging/tasks", data={"task_definition": "staging-backfill", "csrf_token": token})
    assert r.status_code == 302 and "/jobs/" in r.headers["Location"]
    job_id = r.headers["Location"].rsplit("/", 1)[-1]
    assert rt.jobs.get(job_id).target == "staging-backfill"
    # A family that is not in the select is refused the same way as through the API.
    r = client.post("/environments/staging/tasks", data={"task_definition": "staging-orders-api", "csrf_token": token})
    assert r.status_code == 403


def test_viewer_page_has_no_run_form(client, make_user, aws) -> None:
    seed_cluster("stg", ["orders-api"], family_prefix="staging")
    make_user("view@acme.test", ("staging", "viewer"))
    _login(client, "view@acme.test")
    html = client.get("/environments/staging").get_data(as_text=True)
    assert "staging-migrate" in html and 'action="/environments/staging/tasks"' not in html


# ---- on the ECS simulator: idempotency, exit codes, output ---------------------------------------
def _sim_world(sim: Any, family: str = "staging-migrate") -> Any:
    """Cluster stg with one awsvpc service (network to copy) and a one-off family logging to awslogs."""
    from ecssim.seed import ServiceSpec, seed

    seed(sim, "stg", [ServiceSpec("web", desired=1)])
    ecs = boto3.client("ecs", region_name=REGION, config=NO_RETRY)
    ecs.register_task_definition(
        family=family, networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
        containerDefinitions=[{"name": "app", "essential": True, "image": "busybox", "memory": 512,
                               "logConfiguration": {"logDriver": "awslogs", "options": {
                                   "awslogs-group": f"/ecs/{family}", "awslogs-region": REGION,
                                   "awslogs-stream-prefix": "run"}}}])
    boto3.client("logs", region_name=REGION).create_log_group(logGroupName=f"/ecs/{family}")
    return ecs


def _printing(sim: Any, family: str, lines: list[str]) -> Callable[[float], None]:
    """The worker's sleep: time passes in the simulator, and the running task prints ``lines`` once."""
    logs, done = boto3.client("logs", region_name=REGION), []

    def sleep(seconds: float) -> None:
        if not done:
            running = [t for t in sim.tasks("stg") if t.service is None and t.started_at is not None]
            if running:
                stream = f"run/app/{running[0].id}"
                logs.create_log_stream(logGroupName=f"/ecs/{family}", logStreamName=stream)
                now = int(time.time() * 1000)
                logs.put_log_events(logGroupName=f"/ecs/{family}", logStreamName=stream,
                                    logEvents=[{"timestamp": now + i, "message": m} for i, m in enumerate(lines)])
                done.append(stream)
        sim.advance(seconds)
    return sleep


def _events(client: Any, job: dict[str, Any], dev: dict[str, str]) -> list[dict[str, Any]]:
    return client.get(job["url"] + "/events", headers=dev).json["events"]


def test_sim_conflict_adopts_the_task_the_client_token_already_started(client, dev, rt, sim) -> None:
    ecs = _sim_world(sim)
    sim.set_one_off("staging-migrate", duration=8, exit_code=0)
    job = start(client, dev, {"task_definition": "staging-migrate"}).json
    # An earlier attempt of this job started revision 1 with its token, then died before checkpointing;
    # since then revision 2 was registered, so this attempt's RunTask differs: ConflictException.
    first = ecs.run_task(cluster="stg", taskDefinition="staging-migrate:1", count=1, clientToken=job["id"],
                         launchType="FARGATE", startedBy=f"valetkey/{job['id']}",
                         networkConfiguration=sim.service("stg", "web").network)["tasks"][0]["taskArn"]
    ecs.register_task_definition(**{k: v for k, v in ecs.describe_task_definition(
        taskDefinition="staging-migrate")["taskDefinition"].items()
        if k in ("family", "networkMode", "requiresCompatibilities", "cpu", "memory", "containerDefinitions")})
    assert runner(rt, ecs, sleep=sim.advance, logs=boto3.client("logs", region_name=REGION)).run(job["id"]) == "succeeded"
    conflicts = [c for c in sim.calls.of("RunTask") if c.error == "ConflictException"]
    assert len(conflicts) == 1
    assert rt.jobs.get(job["id"]).params["task_arn"] == first  # adopted, not a second task
    assert [t.arn for t in sim.tasks("stg") if t.service is None] == [first]
    assert re.fullmatch(r"exit 0 after \d+s", rt.jobs.get(job["id"]).detail)
    assert any("already started task" in e["message"] for e in _events(client, job, dev))


def test_sim_exit_code_stop_reason_and_output_are_reported(client, dev, rt, sim) -> None:
    ecs = _sim_world(sim)
    sim.set_one_off("staging-migrate", duration=6, exit_code=3)
    job = start(client, dev, {"task_definition": "staging-migrate"}).json
    lines = [f"migrating table {i}" for i in range(70)] + ["ERROR: column 'currency' already exists"]
    assert runner(rt, ecs, sleep=_printing(sim, "staging-migrate", lines),
                  logs=boto3.client("logs", region_name=REGION)).run(job["id"]) == "failed"
    assert re.fullmatch(r"exit 3 after \d+s: Essential container in task exited", rt.jobs.get(job["id"]).detail)
    [out] = [e["message"] for e in _events(client, job, dev) if e["type"] == "output"]
    head, *shown = out.split("\n")
    assert head == "Last 50 line(s) of app's output:"
    assert shown == lines[-50:]  # the newest 50, oldest first, ending with the error
    # The task was launched on on-demand capacity (FARGATE), with its parameters checkpointed first.
    assert len(sim.calls.of("RunTask")) == 1
    params = rt.jobs.get(job["id"]).params
    assert params["launch"]["args"]["launchType"] == "FARGATE"
    assert params["launch"]["task_definition"].endswith("staging-migrate:1")


def test_sim_exit_0_shows_the_output_but_keeps_it_out_of_the_audit_trail(client, dev, rt, sim) -> None:
    ecs = _sim_world(sim)
    sim.set_one_off("staging-migrate", duration=4, exit_code=0)
    job = start(client, dev, {"task_definition": "staging-migrate"}).json
    assert runner(rt, ecs, sleep=_printing(sim, "staging-migrate", ["3 migrations applied"]),
                  logs=boto3.client("logs", region_name=REGION)).run(job["id"]) == "succeeded"
    events = _events(client, job, dev)
    assert any(e["type"] == "output" and e["message"].endswith("\n3 migrations applied") for e in events)
    assert "output" not in rt.jobs.get(job["id"]).after
    assert not any("3 migrations applied" in json.dumps(e, default=str) for e in audit_events(rt))


def test_sim_a_task_that_logged_nothing_says_so(client, dev, rt, sim) -> None:
    ecs = _sim_world(sim)
    sim.set_one_off("staging-migrate", duration=2, exit_code=0)
    job = start(client, dev, {"task_definition": "staging-migrate"}).json
    assert runner(rt, ecs, sleep=sim.advance, logs=boto3.client("logs", region_name=REGION)).run(job["id"]) == "succeeded"
    outs = [e["message"] for e in _events(client, job, dev) if e["type"] == "output"]
    assert outs == ["Output of app: no output was logged"]


# ---- launch parameters and capacity (Stubber: exact calls) ---------------------------------------
def test_launch_parameters_are_checkpointed_before_run_task_and_reused(client, dev, rt, stub) -> None:
    ecs, s = stub
    job = start(client, dev, {"task_definition": "staging-migrate"}).json
    s.add_response("describe_task_definition", task_definition("staging-migrate"), {"taskDefinition": "staging-migrate"})
    s.add_response("list_services", {"serviceArns": [f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/stg/web"]},
                   {"cluster": "stg"})
    s.add_response("describe_services", {"services": [{
        "serviceName": "web", "status": "ACTIVE", "launchType": "FARGATE", "platformVersion": "1.4.0",
        "networkConfiguration": SERVICE_NET}], "failures": []}, {"cluster": "stg", "services": ["web"]})
    expected = {"cluster": "stg", "taskDefinition": td_arn("staging-migrate"), "count": 1, "clientToken": job["id"],
                "startedBy": f"valetkey/{job['id']}", "launchType": "FARGATE", "networkConfiguration": SERVICE_NET,
                "platformVersion": "1.4.0"}
    # RunTask times out on the wire: did ECS start the task? The job cannot know, and retries.
    s.add_client_error("run_task", service_error_code="ServerException", http_status_code=500,
                       expected_params=expected)
    assert runner(rt, ecs, sleep=None).run(job["id"]) == "running"  # suspended, to try again after a backoff
    launch = rt.jobs.get(job["id"]).params["launch"]
    assert launch["task_definition"] == td_arn("staging-migrate") and launch["args"]["launchType"] == "FARGATE"
    # The redelivered attempt resolves nothing again (a newer revision or another service could have
    # appeared meanwhile): the very same RunTask, which ECS answers with the task the token started.
    s.add_response("run_task", {"tasks": [{"taskArn": task_arn(), "lastStatus": "RUNNING"}], "failures": []}, expected)
    expect_describe(s, described("STOPPED", containers=[{"name": "app", "exitCode": 0}], secs=4))
    assert runner(rt, ecs, sleep=None).run(job["id"], attempt=1) == "succeeded"


def test_conflict_without_resource_ids_fails_the_job(client, dev, rt, stub) -> None:
    ecs, s = stub
    job = start(client, dev, {"task_definition": "net-migrate"}, env="netcfg").json
    s.add_response("describe_task_definition", task_definition("net-migrate"), {"taskDefinition": "net-migrate"})
    s.add_client_error("run_task", service_error_code="ConflictException", http_status_code=400,
                       service_message="token reused")
    assert runner(rt, ecs).run(job["id"]) == "failed"
    assert rt.jobs.get(job["id"]).detail == "AWS refused starting a task of net-migrate: ConflictException."


@pytest.mark.parametrize(("service", "catalog_key", "expected"), [
    # A Spot-weighted service strategy is not copied: on-demand FARGATE.
    ({"capacityProviderStrategy": [{"capacityProvider": "FARGATE_SPOT", "weight": 4},
                                   {"capacityProvider": "FARGATE", "weight": 1}]}, None, {"launchType": "FARGATE"}),
    # The cluster's own EC2 providers are its only capacity: copied.
    ({"capacityProviderStrategy": [{"capacityProvider": "asg-ondemand", "weight": 1}]}, None,
     {"capacityProviderStrategy": [{"capacityProvider": "asg-ondemand", "weight": 1}]}),
    # Configured: the environment's provider, whatever the service uses.
    ({"capacityProviderStrategy": [{"capacityProvider": "FARGATE_SPOT", "weight": 1}]}, "FARGATE",
     {"capacityProviderStrategy": [{"capacityProvider": "FARGATE", "weight": 1}]}),
])
def test_one_off_capacity(client, dev, rt, stub, config_file, service, catalog_key, expected) -> None:
    from scope.catalog import load_catalog

    ecs, s = stub
    if catalog_key:
        rt.catalog = load_catalog(config_file(TOML.replace('cluster = "stg"\n', f'cluster = "stg"\n'
                                                           f'task_capacity_provider = "{catalog_key}"\n', 1)),
                                  rt.settings.environ, own_redis_url=rt.settings.redis_url)
    job = start(client, dev, {"task_definition": "staging-migrate"}).json
    s.add_response("describe_task_definition", task_definition("staging-migrate"), {"taskDefinition": "staging-migrate"})
    s.add_response("list_services", {"serviceArns": [f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/stg/web"]},
                   {"cluster": "stg"})
    s.add_response("describe_services", {"services": [{
        "serviceName": "web", "status": "ACTIVE", "networkConfiguration": SERVICE_NET, **service}], "failures": []},
        {"cluster": "stg", "services": ["web"]})
    s.add_response("run_task", {"tasks": [{"taskArn": task_arn(), "lastStatus": "PROVISIONING"}], "failures": []},
                   {"cluster": "stg", "taskDefinition": td_arn("staging-migrate"), "count": 1, "clientToken": job["id"],
                    "startedBy": f"valetkey/{job['id']}", "networkConfiguration": SERVICE_NET, **expected})
    expect_describe(s, described("STOPPED", containers=[{"name": "app", "exitCode": 0}], secs=2))
    assert runner(rt, ecs).run(job["id"]) == "succeeded"


@pytest.mark.parametrize("value", ['"FARGATE SPOT"', "3", '""', '"' + "a" * 256 + '"'])
def test_task_capacity_provider_is_validated(config_file, value) -> None:
    from scope.catalog import load_catalog
    from scope.errors import ConfigError

    path = config_file(TOML.replace('cluster = "stg"\n', f'cluster = "stg"\ntask_capacity_provider = {value}\n', 1))
    with pytest.raises(ConfigError, match="task_capacity_provider"):
        load_catalog(path, {})


def test_last_lines_are_bounded_by_count_and_bytes() -> None:
    from workers.tasks import last_lines

    assert last_lines([f"l{i}" for i in range(80)]) == [f"l{i}" for i in range(30, 80)]
    big = ["x" * 1000 for _ in range(20)]
    kept = last_lines(big)
    assert len(kept) == 8 and sum(len(k) for k in kept) <= 8 * 1024
    one = last_lines(["y" * 20000])
    assert len(one) == 1 and len(one[0].encode()) <= 8 * 1024 + 3 and one[0].startswith("…")
