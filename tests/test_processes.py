"""Real processes: a worker killed mid-job, and every Procfile process stopping on SIGTERM."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import boto3
import pytest

from tests.conftest import REGION, audit_events, seed_cluster

RESTART = "/api/v1/environments/staging/services/slow-api/restart"


def start(args: list[str], environ: dict[str, str], log) -> subprocess.Popen:
    env = {**os.environ, **environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "valetkey.cli", *args], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def worker_env(environ, steady_tasks):
    return {**environ, "VALETKEY_JOB_LEASE": "1", "VALETKEY_SWEEP_INTERVAL": "0.5",
            "VALETKEY_POLL_INTERVAL": "0.2", "VALETKEY_STABILITY_TIMEOUT": "60"}


def test_worker_killed_mid_job_is_finished_once_by_another(client, rt, make_user, worker_env, tmp_path):
    ids = seed_cluster("stg", ["orders-api"], family_prefix="staging")
    ecs = boto3.client("ecs", region_name=REGION)
    net = {"awsvpcConfiguration": {"subnets": [ids["subnet"]], "securityGroups": [ids["sg"]]}}
    # Desired 3 while moto runs 2: the restart waits for stability until ECS "catches up" below.
    ecs.create_service(cluster="stg", serviceName="slow-api", taskDefinition="staging-orders-api",
                       desiredCount=3, launchType="FARGATE", networkConfiguration=net)
    ecs.run_task(cluster="stg", taskDefinition="staging-orders-api", count=2, launchType="FARGATE",
                 networkConfiguration=net, group="service:slow-api")
    dev = make_user("dev@acme.test", ("staging", "developer"))
    job = client.post(RESTART, headers=dev).get_json()
    log = open(tmp_path / "worker.log", "wb")
    a = start(["worker", "--threads", "1"], worker_env, log)
    try:
        def a_is_waiting():
            row = rt.jobs.get(job["id"])
            return row.status == "running" and row.params.get("restart_tasks") and any(
                e.type == "progress" and e.message.startswith("Stopped 1 of 2")
                for e in rt.events.read(job["id"], None))
        wait_for(a_is_waiting, 30, "worker A to stop the old tasks and wait")
        os.killpg(a.pid, signal.SIGKILL)
        a.wait(10)
        # ECS catches up: a replacement task runs and the desired count is met again.
        originals = rt.jobs.get(job["id"]).params["restart_tasks"]
        replacement = ecs.run_task(cluster="stg", taskDefinition="staging-orders-api", launchType="FARGATE",
                                   networkConfiguration=net, group="service:slow-api")["tasks"][0]["taskArn"]
        # moto fixes a service's rollout at creation, so "ECS catching up" is a re-created
        # service (same name and task definition) that moto reports as fully running.
        os.environ["MOTO_ECS_SERVICE_RUNNING"] = "3"
        ecs.delete_service(cluster="stg", service="slow-api", force=True)
        ecs.create_service(cluster="stg", serviceName="slow-api", taskDefinition="staging-orders-api",
                           desiredCount=3, launchType="FARGATE", networkConfiguration=net)
        os.environ["MOTO_ECS_SERVICE_RUNNING"] = "2"
        b = start(["worker", "--threads", "1"], worker_env, log)
        try:
            done = wait_for(lambda: (lambda j: j if j.status in ("succeeded", "failed") else None)(
                rt.jobs.get(job["id"])), 40, "worker B to finish the job")
        finally:
            os.killpg(b.pid, signal.SIGTERM)
            b.wait(20)
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
        log.close()
    assert done.status == "succeeded", (done.detail, (tmp_path / "worker.log").read_text()[-3000:])
    assert done.attempts == 2 and done.detail.startswith("HEALTHY after")
    # Resumed, not repeated: the replacement started after A's snapshot was not stopped.
    status = {t["taskArn"]: t["lastStatus"] for t in ecs.describe_tasks(
        cluster="stg", tasks=originals + [replacement])["tasks"]}
    assert status[replacement] == "RUNNING" and all(status[o] == "STOPPED" for o in originals)
    outcomes = [e["outcome"] for e in audit_events(rt) if e["job_id"] == job["id"]]
    assert outcomes == ["requested", "succeeded"]


@pytest.mark.parametrize("command", [["worker"], ["audit", "consume"], ["schedule", "run"],
                                     ["web", "--bind", "127.0.0.1:0", "--workers", "1"]])
def test_process_stops_cleanly_on_sigterm(environ, tmp_path, command):
    log = open(tmp_path / "p.log", "wb")
    p = start(command, environ, log)
    time.sleep(2.5)
    assert p.poll() is None, (tmp_path / "p.log").read_text()
    os.killpg(p.pid, signal.SIGTERM)
    code = p.wait(20)
    log.close()
    out = (tmp_path / "p.log").read_text()
    assert code == 0, out
    assert "Traceback" not in out
