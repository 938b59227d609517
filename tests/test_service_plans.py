"""POST .../restart and .../redeploy with ``{"dry_run": true}``: 200 {plan}, and nothing happens."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from ecssim.seed import ServiceSpec, seed
from scope.models import Job
from tests.conftest import audit_events
from workers.runner import JobRunner

BASE = "/api/v1/environments/staging/services"


@pytest.fixture
def environ(environ):
    return {**environ, "VALETKEY_POLL_INTERVAL": "3", "VALETKEY_STABILITY_TIMEOUT": "900"}


@pytest.fixture
def dev(make_user):
    return make_user("dev@acme.test", ("staging", "developer"))


@pytest.fixture
def cluster(sim):
    return seed(sim, "stg", [ServiceSpec("orders-api", desired=4, min_percent=50, load_balancer=True,
                                         circuit_breaker=True, rollback=True),
                             ServiceSpec("solo", desired=1, min_percent=100, min_capacity=1, max_capacity=3),
                             ServiceSpec("bg", controller="CODE_DEPLOY")])


def jobs(rt) -> int:
    with rt.sessions() as s:
        return s.scalar(select(func.count()).select_from(Job)) or 0


def nothing_happened(rt, sim) -> None:
    assert jobs(rt) == 0 and audit_events(rt) == []
    assert sim.calls.count("UpdateService") == 0 and sim.calls.count("StopTask") == 0


def test_restart_plan_is_a_new_deployment_when_the_tag_still_names_the_digest(client, rt, dev, cluster, sim):
    r = client.post(f"{BASE}/orders-api/restart", json={"dry_run": True}, headers=dev)
    assert r.status_code == 200, r.get_json()
    plan = r.get_json()
    assert set(plan) == {"mechanism", "steps", "warnings", "blocked"}
    assert plan["mechanism"] == "deployment" and plan["blocked"] is None and plan["warnings"] == []
    digest = cluster.services["orders-api"].digest
    assert plan["steps"][0] == f"start a new deployment of stg-orders-api:1 (same image sha:{digest[7:13]}: every " \
                               "tag still names the running digest)"
    assert "never fewer than 2 healthy; old tasks are drained from the load balancer first" in plan["steps"][1]
    nothing_happened(rt, sim)


def test_restart_plan_in_batches_when_the_tag_moved(client, rt, dev, cluster, sim):
    sim.push_image(cluster.services["orders-api"].repository, "latest")
    plan = client.post(f"{BASE}/orders-api/restart", json={"dry_run": True}, headers=dev).get_json()
    assert plan["mechanism"] == "batches" and plan["blocked"] is None
    assert plan["steps"][0] == "replace 4 task(s), 2 at a time; never fewer than 2 serving; ~90 s"
    assert any("a new deployment would change the image" in w for w in plan["warnings"])
    nothing_happened(rt, sim)


def test_single_task_plan_warns_about_reduced_capacity_and_autoscaling(client, rt, dev, cluster, sim):
    sim.push_image(cluster.services["solo"].repository, "latest")
    plan = client.post(f"{BASE}/solo/restart", json={"dry_run": True}, headers=dev).get_json()
    assert plan["mechanism"] == "batches"
    assert any("briefly at reduced capacity" in w for w in plan["warnings"])
    assert any(w.startswith("Application Auto Scaling manages the task count (min 1, max 3)") for w in plan["warnings"])


def test_blocked_plan_is_200_with_the_reason_a_real_request_gets(client, rt, dev, cluster, sim):
    plan = client.post(f"{BASE}/bg/restart", json={"dry_run": True}, headers=dev).get_json()
    assert plan["blocked"].startswith("bg deploys through AWS CodeDeploy (deployment controller CODE_DEPLOY)")
    nothing_happened(rt, sim)
    job = client.post(f"{BASE}/bg/restart", headers=dev).get_json()
    assert JobRunner(rt, sleep=sim.advance, clock=sim.clock.now).run(job["id"]) == "failed"
    assert rt.jobs.get(job["id"]).detail == f"Refused, nothing was changed: {plan['blocked']}"
    assert sim.calls.count("StopTask") == 0 and sim.calls.count("UpdateService") == 0


def test_redeploy_plan(client, rt, dev, cluster, sim):
    plan = client.post(f"{BASE}/orders-api/redeploy", json={"dry_run": True, "reason": "new build"},
                       headers=dev).get_json()
    assert plan["mechanism"] == "deployment" and plan["blocked"] is None
    assert plan["steps"][0] == "start a new deployment of stg-orders-api:1; ECS resolves every image tag anew"
    nothing_happened(rt, sim)


def test_dry_run_false_and_no_body_start_jobs(client, rt, dev, cluster):
    assert client.post(f"{BASE}/orders-api/restart", json={"dry_run": False}, headers=dev).status_code == 202
    assert client.post(f"{BASE}/solo/redeploy", headers=dev).status_code == 202
    assert jobs(rt) == 2


def test_plan_refusals_are_audited_as_usual(client, rt, make_user, cluster, sim):
    viewer = make_user("vic@acme.test", ("staging", "viewer"))
    r = client.post(f"{BASE}/orders-api/restart", json={"dry_run": True}, headers=viewer)
    assert r.status_code == 403
    qa = make_user("qa@acme.test", ("qa", "developer"))
    assert client.post(f"{BASE}/orders-api/restart", json={"dry_run": True}, headers=qa).status_code == 404
    dev = make_user("dev@acme.test", ("staging", "developer"))
    assert client.post(f"{BASE}/nope/restart", json={"dry_run": True}, headers=dev).status_code == 404
    assert [(e["actor"], e["outcome"], e["target"]) for e in audit_events(rt)] == [
        ("vic@acme.test", "denied", "orders-api"), ("qa@acme.test", "denied", "orders-api"),
        ("dev@acme.test", "denied", "nope")]
    assert jobs(rt) == 0


@pytest.mark.parametrize("body,field", [({"dry_run": "perhaps"}, "dry_run"), ({"reason": "x" * 501}, "reason"),
                                        ({"dry_run": True, "force": True}, "force")])
def test_bad_body_is_400_naming_the_field(client, rt, dev, cluster, body, field):
    r = client.post(f"{BASE}/orders-api/restart", json=body, headers=dev)
    assert r.status_code == 400 and field in r.get_json()["errors"]
    assert jobs(rt) == 0


def test_openapi_documents_the_plan(client, dev):
    doc = client.get("/api/v1/openapi.json").get_json()
    for action in ("restart", "redeploy"):
        op = doc["paths"][f"/api/v1/environments/{{env}}/services/{{svc}}/{action}"]["post"]
        assert {"200", "202"} <= set(op["responses"])
        assert op["requestBody"]["required"] is False  # no body: a real request
    assert "dry_run" in doc["components"]["schemas"]["ServiceActionRequest"]["properties"]
    plan = doc["components"]["schemas"]["Plan"]
    assert set(plan["properties"]) == {"mechanism", "steps", "warnings", "blocked"}
