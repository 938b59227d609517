"""Restart and redeploy through the queue: 202 + job, one job per service, verified outcomes, events."""
from __future__ import annotations

import datetime as dt
import threading
import time

import boto3
import pytest
from sqlalchemy import update

from ecssim.seed import ServiceSpec, seed
from jobs.audit_stream import AuditLog
from jobs.events import JobEvents
from jobs.service import JobService
from scope.models import Job
from tests.conftest import REGION, audit_events
from wiring.runtime import Runtime, redis_client
from workers.runner import JobRunner

RESTART = "/api/v1/environments/staging/services/orders-api/restart"
REDEPLOY = "/api/v1/environments/staging/services/orders-api/redeploy"


@pytest.fixture
def environ(environ):
    # Simulated ECS time: polls at the production interval, each sleep moves the simulator's clock.
    return {**environ, "VALETKEY_POLL_INTERVAL": "3", "VALETKEY_STABILITY_TIMEOUT": "900"}


@pytest.fixture
def staging(sim):
    """orders-api and payments-api, 2 tasks each, in the ECS simulator (tasks start, stop and lag as on AWS)."""
    return seed(sim, "stg", [ServiceSpec("orders-api", min_percent=50), ServiceSpec("payments-api")])


@pytest.fixture
def runner(rt, sim):
    return JobRunner(rt, sleep=sim.advance, clock=sim.clock.now)


@pytest.fixture
def dev(make_user):
    return make_user("dev@acme.test", ("staging", "developer"))


def service_tasks(service: str, status: str = "RUNNING") -> list[dict]:
    ecs = boto3.client("ecs", region_name=REGION)
    arns = ecs.list_tasks(cluster="stg", desiredStatus=status)["taskArns"]
    tasks = ecs.describe_tasks(cluster="stg", tasks=arns)["tasks"] if arns else []
    return [t for t in tasks if t["group"] == f"service:{service}"]


def test_restart_answers_202_with_job_and_location(client, rt, dev, staging):
    r = client.post(RESTART, headers=dev)
    assert r.status_code == 202, r.get_json()
    job = r.get_json()
    assert r.headers["Location"] == f"/api/v1/jobs/{job['id']}" == job["url"]
    assert {k: job[k] for k in ("action", "environment", "target", "status", "actor", "detail")} == {
        "action": "service.restart", "environment": "staging", "target": "orders-api", "status": "queued",
        "actor": "dev@acme.test", "detail": ""}
    assert client.get(job["url"], headers=dev).get_json() == job
    # The job row is committed and the requested audit event and the message exist.
    assert rt.jobs.get(job["id"]).status == "queued"
    requested = [e for e in audit_events(rt) if e["job_id"] == job["id"]]
    assert [e["outcome"] for e in requested] == ["requested"]
    assert rt.redis.hlen("dramatiq:valetkey.msgs") == 1


def test_restart_replaces_tasks_and_reports_healthy(client, rt, dev, staging, runner, sim):
    originals = {t["taskArn"] for t in service_tasks("orders-api")}
    other = {t["taskArn"] for t in service_tasks("payments-api")}
    job = client.post(RESTART, headers=dev).get_json()
    assert runner.run(job["id"]) == "succeeded"
    done = client.get(job["url"], headers=dev).get_json()
    assert done["status"] == "succeeded" and done["detail"].startswith("HEALTHY after ")
    assert done["detail"].endswith(f"· same image sha:{staging.services['orders-api'].digest[7:13]}")
    assert done["started_at"] and done["finished_at"]
    # The tag still names the running digest: one new deployment, ECS replaced the tasks.
    assert sim.calls.count("UpdateService") == 1 and sim.calls.count("StopTask") == 0
    stopped = {t["taskArn"] for t in service_tasks("orders-api", "STOPPED")}
    assert stopped == originals  # exactly the service's own tasks were replaced
    assert other == {t["taskArn"] for t in service_tasks("payments-api")}  # the neighbour untouched
    row = rt.jobs.get(job["id"])
    assert row.before["task_definition"] == row.after["task_definition"] == "stg-orders-api:1"
    assert row.before["desired"] == 2 and "deployment_id" in row.after
    outcome = [e for e in audit_events(rt) if e["job_id"] == job["id"]][-1]
    assert outcome["outcome"] == "succeeded" and outcome["detail"] == done["detail"]
    assert outcome["before"]["running"] == 2 and outcome["after"]["task_definition"] == "stg-orders-api:1"


def test_redeploy_starts_new_deployment_and_reports(client, rt, dev, staging, runner):
    ecs = boto3.client("ecs", region_name=REGION)
    before = ecs.describe_services(cluster="stg", services=["orders-api"])["services"][0]["deployments"][0]["id"]
    job = client.post(REDEPLOY, headers=dev).get_json()
    assert runner.run(job["id"]) == "succeeded"
    done = rt.jobs.get(job["id"])
    after = ecs.describe_services(cluster="stg", services=["orders-api"])["services"][0]
    assert after["deployments"][0]["id"] != before
    assert after["taskDefinition"].endswith("stg-orders-api:1")  # no task definition edited
    assert done.detail.startswith("Deployed ") and done.after["deployment_id"] == after["deployments"][0]["id"]


def test_second_job_on_same_service_is_409_naming_the_first(client, rt, dev, staging, runner):
    first = client.post(RESTART, headers=dev).get_json()
    r = client.post(REDEPLOY, headers=dev)
    assert r.status_code == 409
    body = r.get_json()
    assert first["id"] in body["detail"] and body["job_id"] == first["id"]
    refusal = audit_events(rt)[-1]
    assert (refusal["action"], refusal["outcome"], refusal["target"]) == ("service.redeploy", "denied", "orders-api")
    # Another service is not blocked, and the lock is released once the job ends.
    assert client.post("/api/v1/environments/staging/services/payments-api/restart", headers=dev).status_code == 202
    runner.run(first["id"])
    assert client.post(REDEPLOY, headers=dev).status_code == 202


def test_refused_with_503_when_queue_redis_is_down(rt, dev, staging):
    from web import create_app

    broken = Runtime(settings=rt.settings, catalog=rt.catalog, engine=rt.engine, sessions=rt.sessions,
                     redis=rt.redis, broker=rt.broker, aws=rt.aws, users=rt.users, audit=rt.audit,
                     events=rt.events, jobs=rt.jobs)
    dead = redis_client("redis://127.0.0.1:1/0")
    broken.audit = AuditLog(dead)
    broken.jobs = JobService(rt.sessions, broken.audit, JobEvents(dead), rt.broker)
    c = create_app({"TESTING": True}, runtime=broken).test_client()
    r = c.post(RESTART, headers=dev)
    assert r.status_code == 503 and r.headers["Content-Type"].startswith("application/problem+json")
    with rt.sessions() as s:
        rows = s.query(Job).all()
    assert [(j.status, j.active_key) for j in rows] == [("failed", None)]
    assert "nothing was done" in rows[0].detail
    assert rt.redis.hlen("dramatiq:valetkey.msgs") == 0


def test_job_events_poll_without_repeats_and_done(client, rt, dev, staging, runner):
    job = client.post(RESTART, headers=dev).get_json()
    first = client.get(f"{job['url']}/events", headers=dev).get_json()
    assert [e["type"] for e in first["events"]] == ["queued"] and not first["done"]
    runner.run(job["id"])
    seen = [e["id"] for e in first["events"]]
    cursor = first["next"]
    while True:
        page = client.get(f"{job['url']}/events", query_string={"after": cursor}, headers=dev).get_json()
        seen += [e["id"] for e in page["events"]]
        cursor = page["next"]
        if page["done"]:
            break
    assert len(seen) == len(set(seen)) and seen == sorted(seen, key=lambda i: tuple(map(int, i.split("-"))))
    everything = client.get(f"{job['url']}/events", headers=dev).get_json()
    assert [e["id"] for e in everything["events"]] == seen
    assert everything["events"][-1]["type"] == "succeeded" and everything["done"]


def test_job_events_long_poll_wakes_on_new_event(client, rt, dev, staging):
    job = client.post(RESTART, headers=dev).get_json()
    first = client.get(f"{job['url']}/events", headers=dev).get_json()
    threading.Timer(0.5, lambda: rt.events.append(job["id"], "progress", "hello")).start()
    t0 = time.monotonic()
    page = client.get(f"{job['url']}/events", query_string={"after": first["next"], "wait": 10},
                      headers=dev).get_json()
    assert [e["message"] for e in page["events"]] == ["hello"]
    assert time.monotonic() - t0 < 9  # woke on the event, not at the deadline


def test_job_events_empty_parameters_mean_not_given(client, dev, staging):
    job = client.post(RESTART, headers=dev).get_json()
    page = client.get(f"{job['url']}/events?after=&wait=", headers=dev)
    assert page.status_code == 200 and [e["type"] for e in page.get_json()["events"]] == ["queued"]


@pytest.mark.parametrize("query, field", [
    ({"wait": 26}, "wait"), ({"after": "yesterday"}, "after"),
    ({"wait": "nan"}, "wait"), ({"wait": "inf"}, "wait"),
    # Out of Redis' range (each part is an unsigned 64-bit number): was a 500.
    ({"after": "99999999999999999999999-0"}, "after"),
    ({"after": "18446744073709551616-0"}, "after"),
    ({"after": "0-18446744073709551616"}, "after"),
    # Control characters (the regex's $ let a trailing newline through) and non-ASCII digits.
    ({"after": "1-0\n"}, "after"), ({"after": "1-0\x00"}, "after"), ({"after": "1\t-0"}, "after"),
    ({"after": "\u0661\u0662-0"}, "after"), ({"after": "\uff11-0"}, "after"),
])
def test_job_events_bad_query_is_400_naming_field(client, dev, staging, query, field):
    job = client.post(RESTART, headers=dev).get_json()
    r = client.get(f"{job['url']}/events", query_string=query, headers=dev)
    assert r.status_code == 400 and field in r.get_json()["errors"]


def test_job_events_at_the_last_possible_id_are_empty(client, dev, staging):
    job = client.post(RESTART, headers=dev).get_json()
    last = f"{2**64 - 1}-{2**64 - 1}"
    r = client.get(f"{job['url']}/events", query_string={"after": last}, headers=dev)
    assert r.status_code == 200 and r.get_json()["events"] == [] and r.get_json()["next"] == last


def test_job_events_tiny_wait_does_not_block(client, dev, staging):
    # int(0.0001 * 1000) == 0 was XREAD BLOCK 0: block forever (a web thread held until a timeout, then 500).
    job = client.post(RESTART, headers=dev).get_json()
    first = client.get(f"{job['url']}/events", headers=dev).get_json()
    t0 = time.monotonic()
    r = client.get(f"{job['url']}/events", query_string={"after": first["next"], "wait": "0.0001"}, headers=dev)
    assert r.status_code == 200 and r.get_json()["events"] == []
    assert time.monotonic() - t0 < 10


def test_job_events_reader_refuses_bad_cursors_naming_after(rt):
    from scope.errors import ValidationFailed

    for bad in ("1-0\n", "99999999999999999999999-0", "\u0661-0"):
        with pytest.raises(ValidationFailed) as e:
            rt.events.read("some-job", bad)
        assert list(e.value.fields) == ["after"]


def test_job_of_another_environment_is_404(client, rt, dev, make_user, staging):
    job = client.post(RESTART, headers=dev).get_json()
    qa = make_user("qa@acme.test", ("qa", "developer"))
    assert client.get(job["url"], headers=qa).status_code == 404
    assert client.get(f"{job['url']}/events", headers=qa).status_code == 404


def test_worker_rechecks_scope(client, rt, dev, staging, runner):
    job = client.post(RESTART, headers=dev).get_json()
    rt.users.revoke("dev@acme.test", "staging")
    assert runner.run(job["id"]) == "failed"
    done = rt.jobs.get(job["id"])
    assert done.detail.startswith("Refused at run time") and service_tasks("orders-api", "STOPPED") == []


def test_stale_job_never_runs(client, rt, dev, staging, runner):
    job = client.post(RESTART, headers=dev).get_json()
    with rt.sessions.begin() as s:
        s.execute(update(Job).where(Job.id == job["id"]).values(
            created_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)))
    assert runner.run(job["id"]) == "failed"
    assert rt.jobs.get(job["id"]).detail.startswith("Expired")
    assert service_tasks("orders-api", "STOPPED") == []


def test_a_job_runs_once(client, rt, dev, staging, runner):
    job = client.post(RESTART, headers=dev).get_json()
    assert runner.run(job["id"]) == "succeeded"
    assert runner.run(job["id"]) is None  # redelivered after success: nothing happens
    outcomes = [e["outcome"] for e in audit_events(rt) if e["job_id"] == job["id"]]
    assert outcomes == ["requested", "succeeded"]


def test_transient_failure_suspends_with_backoff_then_gives_up(client, rt, dev, staging):
    """5xx from ECS: the job is not failed at once, nor does a thread wait. It stays running under its claim,
    its next step due later and later (backoff) in Redis; after three retries in a row it fails."""
    from botocore.stub import Stubber

    job = client.post(REDEPLOY, headers=dev).get_json()
    ecs = boto3.client("ecs", region_name=REGION)
    stub = Stubber(ecs)
    for _ in range(4):
        stub.add_client_error("describe_services", "ServiceUnavailableException", http_status_code=503)
    stub.activate()
    runner = JobRunner(rt, ecs_client=lambda env: ecs)  # no sleep: a worker's runner, suspending
    delays = []
    for step in range(3):
        before = time.time()
        got = runner.run(job["id"]) if step == 0 else runner.run(job["id"], attempt=1)
        assert got == "running"
        row = rt.jobs.get(job["id"])
        assert (row.status, row.attempts, row.params["retries"]) == ("running", 1, step + 1)
        delays.append(runner.suspended.due_at(job["id"], 1) - before)
    assert 1.5 <= delays[0] < delays[1] < delays[2] <= 8.5  # 2, 4, 8 s, less up to 20% jitter
    assert runner.run(job["id"], attempt=1) == "failed"
    stub.assert_no_pending_responses()
    assert "Gave up after 3 retries" in rt.jobs.get(job["id"]).detail
    assert runner.suspended.due_at(job["id"], 1) is None  # nothing left to send
    retries = [e.message for e in rt.events.read(job["id"], None) if e.type == "retry"]
    assert len(retries) == 3 and retries[0].endswith("(1 of 3).")


def test_a_worker_that_lost_its_claim_stops_before_touching_the_service(client, rt, dev, staging):
    """The first worker stalls past its lease; a second one takes the job over. When the first wakes
    up, its next checkpoint fails, and it stops: no task stopped, no outcome recorded by it."""
    originals = {t["taskArn"] for t in service_tasks("orders-api")}
    job = client.post(RESTART, headers=dev).get_json()

    def stall_then_ecs(env):  # the moment the first worker reaches for ECS, another takes over
        with rt.engine.begin() as c:
            c.execute(update(Job).where(Job.id == job["id"]).values(
                heartbeat_at=dt.datetime.now(dt.timezone.utc) - rt.jobs.lease - dt.timedelta(seconds=5)))
        assert rt.jobs.claim(job["id"]).attempts == 2
        return rt.aws.ecs(env)

    assert JobRunner(rt, ecs_client=stall_then_ecs).run(job["id"]) is None
    row = rt.jobs.get(job["id"])
    assert (row.status, row.attempts) == ("running", 2)  # the new owner's to finish
    assert "restart_tasks" not in row.params  # the stalled worker's checkpoint did not land
    assert {t["taskArn"] for t in service_tasks("orders-api")} == originals  # nothing was stopped
    assert [e["outcome"] for e in audit_events(rt) if e["job_id"] == job["id"]] == ["requested"]
