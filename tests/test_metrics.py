"""GET /metrics: Prometheus text that parses, with the families DESIGN.md names, and nothing about people."""
from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Callable

import boto3
import pytest
import redis as redis_lib
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from jobs.kinds import FLUSH, REDEPLOY, RESTART, SUCCEEDED
from scope.catalog import Environment
from jobs.suspended import SuspendedJobs
from scope.models import Job
from tests.conftest import ACCOUNT, SECRET_VALUE, free_port
from wiring.runtime import Runtime, aws_clients

FAMILIES = {"valetkey_jobs", "valetkey_jobs_waiting", "valetkey_job_duration_seconds", "valetkey_queue_depth",
            "valetkey_aws_calls", "valetkey_aws_throttles", "valetkey_aws_budget_refusals",
            "valetkey_aws_budget_tokens", "valetkey_aws_budget_capacity", "valetkey_audit_exporter_lag",
            "valetkey_audit_exporter_pending", "valetkey_metrics_source_up", "valetkey_jobs_suspended"}
EMAIL = "dana.secret-person@example.test"


def scrape(client: Any, **headers: str) -> tuple[str, dict[str, Any]]:
    resp = client.get("/metrics", headers=headers)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.content_type.startswith("text/plain; version=0.0.4")
    text = resp.get_data(as_text=True)
    return text, {f.name: f for f in text_string_to_metric_families(text)}


def sample(families: dict[str, Any], name: str, **labels: str) -> float:
    for fam in families.values():
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise AssertionError(f"no sample {name}{labels}")


def seed_jobs(rt: Runtime) -> None:
    done = rt.jobs.create(action=REDEPLOY, environment="staging", target="web", actor=EMAIL, source="api")
    rt.jobs.claim(done.id)
    rt.jobs.finish(done.id, SUCCEEDED, "Deployed sha:a3f2b1")
    start = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
    with rt.engine.begin() as c:  # a known run time: 42 s
        c.execute(update(Job).where(Job.id == done.id)
                  .values(started_at=start, finished_at=start + dt.timedelta(seconds=42)))
    rt.jobs.create(action=RESTART, environment="staging", target="api", actor=EMAIL, source="api")
    running = rt.jobs.create(action=FLUSH, environment="staging", target="cache", actor=EMAIL, source="api",
                             params={"pattern": "session:*"})
    rt.jobs.claim(running.id)
    # Suspended between two steps: its next one due in a minute (jobs/suspended.py).
    SuspendedJobs(rt.redis).suspend(running.id, 1, 60, None)


def test_metrics_parse_and_hold_every_family_without_people_or_secrets(
        rt: Runtime, client: Any, make_user: Callable[..., dict[str, str]]) -> None:
    make_user(EMAIL, ("staging", "developer"))
    seed_jobs(rt)
    text, fams = scrape(client)
    assert FAMILIES <= set(fams)
    assert sample(fams, "valetkey_jobs", action=REDEPLOY, status="succeeded") == 1
    assert sample(fams, "valetkey_jobs", action=RESTART, status="queued") == 1
    assert sample(fams, "valetkey_jobs_waiting", status="queued") == 1
    assert sample(fams, "valetkey_jobs_waiting", status="running") == 1
    assert sample(fams, "valetkey_jobs_waiting", status="awaiting_approval") == 0
    assert sample(fams, "valetkey_job_duration_seconds_bucket", action=REDEPLOY, le="30.0") == 0
    assert sample(fams, "valetkey_job_duration_seconds_bucket", action=REDEPLOY, le="60.0") == 1
    assert sample(fams, "valetkey_job_duration_seconds_bucket", action=REDEPLOY, le="+Inf") == 1
    assert sample(fams, "valetkey_job_duration_seconds_sum", action=REDEPLOY) == pytest.approx(42)
    assert sample(fams, "valetkey_queue_depth", queue="valetkey", state="ready") == 3  # nobody consumed them
    assert sample(fams, "valetkey_jobs_suspended") == 1
    assert sample(fams, "valetkey_metrics_source_up", source="database") == 1
    assert sample(fams, "valetkey_metrics_source_up", source="redis") == 1
    # Nothing about people, environments or secrets; job ids never become labels.
    for needle in (EMAIL, "dana", "example.test", SECRET_VALUE, rt.settings.secret_key or "-", "staging",
                   "session:"):
        assert needle not in text
    with rt.sessions() as s:
        for job in s.query(Job):
            assert job.id not in text


def test_aws_calls_of_other_processes_are_counted(rt: Runtime, client: Any, aws: str) -> None:
    """A worker's clients (another AwsClients, another Redis connection) count where the web process reads."""
    boto3.client("ecs", region_name="us-east-1").create_cluster(clusterName="stg")
    worker_aws = aws_clients(rt.settings)
    stg = Environment(name="staging", cls="staging", enabled=True, region="us-east-1", cluster="stg")
    for _ in range(3):
        worker_aws.ecs(stg).describe_services(cluster="stg", services=["web"])
    worker_aws.ecs(stg).list_services(cluster="stg")
    text, fams = scrape(client)
    assert sample(fams, "valetkey_aws_calls_total", service="ecs", api="DescribeServices") == 3
    assert sample(fams, "valetkey_aws_calls_total", service="ecs", api="ListServices") == 1
    masked = "****" + ACCOUNT[-4:]
    # 50 of ECS' 100 service reads, 4 spent (each refills at 10/s: allow for the seconds the test took)
    tokens = sample(fams, "valetkey_aws_budget_tokens", account=masked, region="us-east-1", bucket="ecs-service-read")
    assert 46 <= tokens <= 50
    assert sample(fams, "valetkey_aws_budget_capacity", account=masked, region="us-east-1",
                  bucket="ecs-service-read") == 50
    assert ACCOUNT not in text


def test_calls_counted_without_a_token_reach_metrics_when_their_process_closes(rt: Runtime, client: Any,
                                                                             aws: str) -> None:
    """A worker with the budget off (share 0) keeps its counts in the process; a close hands them over."""
    boto3.client("ecs", region_name="us-east-1").create_cluster(clusterName="stg")
    worker_aws = aws_clients(dataclasses.replace(rt.settings, aws_budget_share=0.0))
    assert worker_aws.budget is not None
    worker_aws.budget.flush_seconds = 3600.0  # no timer fires during the test
    stg = Environment(name="staging", cls="staging", enabled=True, region="us-east-1", cluster="stg")
    for _ in range(4):
        worker_aws.ecs(stg).describe_services(cluster="stg", services=["web"])
    _, fams = scrape(client)
    assert not [s for f in fams.values() for s in f.samples if s.name == "valetkey_aws_calls_total"]
    worker_aws.budget.close()
    _, fams = scrape(client)
    assert sample(fams, "valetkey_aws_calls_total", service="ecs", api="DescribeServices") == 4


def test_exporter_lag_and_pending_from_the_consumer_group(rt: Runtime, client: Any) -> None:
    from jobs.audit_stream import GROUP, STREAM

    rt.redis.xadd(STREAM, {"x": "1"})
    rt.redis.xgroup_create(STREAM, GROUP, id="0")
    rt.redis.xadd(STREAM, {"x": "2"})
    rt.redis.xreadgroup(GROUP, "exporter-1", {STREAM: ">"}, count=1)  # one delivered, not acknowledged
    _, fams = scrape(client)
    assert sample(fams, "valetkey_audit_exporter_lag") == 1
    assert sample(fams, "valetkey_audit_exporter_pending") == 1


def test_metrics_token_is_required_when_set(rt: Runtime, client: Any) -> None:
    import dataclasses

    rt.settings = dataclasses.replace(rt.settings, metrics_token="scrape-token-0123456789")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "scrape-token-0123456789"}):
        resp = client.get("/metrics", headers=headers)
        assert resp.status_code == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert resp.content_type == "application/problem+json"
    scrape(client, Authorization="Bearer scrape-token-0123456789")


def test_metrics_without_redis_still_answer_with_the_database_figures(rt: Runtime, client: Any) -> None:
    rt.redis = redis_lib.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)
    with rt.engine.begin() as c:
        c.execute(Job.__table__.insert().values(
            id="a" * 32, action=RESTART, environment="staging", target="web", status="failed", actor=EMAIL,
            source="api", params={}, attempts=1, created_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)))
    _, fams = scrape(client)
    assert sample(fams, "valetkey_metrics_source_up", source="redis") == 0
    assert sample(fams, "valetkey_metrics_source_up", source="database") == 1
    assert sample(fams, "valetkey_jobs", action=RESTART, status="failed") == 1
    assert "valetkey_queue_depth" not in fams
