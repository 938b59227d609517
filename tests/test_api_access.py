"""Who sees what: authentication, scoping (404 not 403), roles, problem+json everywhere."""
from __future__ import annotations

import json

import pytest

from tests.conftest import SECRET_VALUE, audit_events, seed_cluster

PROBLEM = "application/problem+json"


@pytest.fixture
def seeded(aws):
    seed_cluster("stg", ["orders-api", "payments-api"], family_prefix="staging")
    seed_cluster("qa", ["search-api"])
    seed_cluster("prod", ["orders-api"])


def assert_problem(r, status):
    assert r.status_code == status, r.get_data(as_text=True)
    assert r.headers["Content-Type"].startswith(PROBLEM)
    body = r.get_json(force=True)
    assert body["status"] == status and body["title"] and body["detail"]
    text = r.get_data(as_text=True)
    assert "Traceback" not in text and 'File "' not in text
    return body


def test_unauthenticated_is_401_problem(client):
    body = assert_problem(client.get("/api/v1/environments"), 401)
    assert "token" in body["detail"].lower()


def test_unknown_token_is_401(client):
    assert_problem(client.get("/api/v1/me", headers={"Authorization": "Bearer vk_nonsense"}), 401)


def test_revoked_token_is_401(client, rt, make_user):
    headers = make_user("a@acme.test", ("staging", "viewer"))
    tok = rt.users.by_email("a@acme.test").id
    from sqlalchemy import select

    from scope.models import ApiToken
    with rt.sessions() as s:
        token_id = s.scalar(select(ApiToken.id).where(ApiToken.user_id == tok))
    assert client.get("/api/v1/me", headers=headers).status_code == 200
    rt.users.revoke_token(token_id)
    assert_problem(client.get("/api/v1/me", headers=headers), 401)


def test_me_lists_direct_and_group_grants(client, rt, make_user):
    headers = make_user("a@acme.test", ("staging", "developer"))
    rt.users.upsert_sso_user("a@acme.test", "A", ["platform"])
    rt.users.grant("group:platform", "qa", "viewer", rt.catalog)
    me = client.get("/api/v1/me", headers=headers).get_json()
    assert me["email"] == "a@acme.test"
    pairs = {(g["environment"], g["role"]) for g in me["grants"]}
    assert pairs == {("staging", "developer"), ("qa", "viewer")}


def test_environments_are_scoped_to_grants(client, make_user):
    dev = make_user("dev@acme.test", ("staging", "developer"))
    envs = client.get("/api/v1/environments", headers=dev).get_json()["environments"]
    assert envs == [{"name": "staging", "class": "staging", "enabled": True, "role": "developer"}]


def test_admin_and_auditor_see_every_environment(client, make_user):
    admin = make_user("adm@acme.test", ("*", "admin"))
    auditor = make_user("aud@acme.test", ("*", "auditor"))
    for h, role in ((admin, "admin"), (auditor, "auditor")):
        envs = client.get("/api/v1/environments", headers=h).get_json()["environments"]
        assert {e["name"] for e in envs} == {"staging", "qa", "prod"}
        assert {e["role"] for e in envs} == {role}
    prod = next(e for e in client.get("/api/v1/environments", headers=admin).get_json()["environments"]
                if e["name"] == "prod")
    assert prod == {"name": "prod", "class": "prod", "enabled": False, "role": "admin"}


def test_environment_detail_reads_ecs_and_leaks_no_secret(client, make_user, seeded):
    dev = make_user("dev@acme.test", ("staging", "developer"))
    r = client.get("/api/v1/environments/staging", headers=dev)
    assert r.status_code == 200
    body = r.get_json()
    services = {s["name"]: s for s in body["services"]}
    assert set(services) == {"orders-api", "payments-api"}
    s = services["orders-api"]
    assert s["running"] == 2 and s["desired"] == 2 and s["status"] == "HEALTHY"
    assert s["task_definition"] == "staging-orders-api:1"
    assert s["image"].endswith("/staging-orders-api:latest")
    assert body["redis"] == ["cache"] and body["run_tasks"] == ["staging-migrate"]
    assert "service.restart" in body["permissions"]
    text = r.get_data(as_text=True)
    assert SECRET_VALUE not in text and "secretsmanager" not in text and "redis://" not in text


def test_unknown_and_unassigned_environment_are_the_same_404(client, make_user, seeded):
    dev = make_user("dev@acme.test", ("staging", "developer"))
    unknown = assert_problem(client.get("/api/v1/environments/nope", headers=dev), 404)
    unassigned = assert_problem(client.get("/api/v1/environments/qa", headers=dev), 404)
    assert unknown["detail"].replace("nope", "X") == unassigned["detail"].replace("qa", "X")


def test_restart_in_unassigned_environment_is_404_and_audited(client, rt, make_user, seeded):
    dev = make_user("dev@acme.test", ("staging", "developer"))
    assert_problem(client.post("/api/v1/environments/qa/services/search-api/restart", headers=dev), 404)
    denied = [e for e in audit_events(rt) if e["outcome"] == "denied"]
    assert denied and denied[-1]["environment"] == "qa" and denied[-1]["action"] == "service.restart"


def test_viewer_cannot_restart_403_and_audited(client, rt, make_user, seeded):
    viewer = make_user("vic@acme.test", ("staging", "viewer"))
    body = assert_problem(client.post("/api/v1/environments/staging/services/orders-api/restart",
                                      headers=viewer), 403)
    assert "viewer" in body["detail"]
    e = audit_events(rt)[-1]
    assert (e["actor"], e["action"], e["outcome"], e["target"], e["source"]) == \
        ("vic@acme.test", "service.restart", "denied", "orders-api", "api")
    assert rt.redis.llen("dramatiq:valetkey") == 0  # nothing enqueued


def test_viewer_detail_offers_no_actions(client, make_user, seeded):
    viewer = make_user("vic@acme.test", ("staging", "viewer"))
    perms = client.get("/api/v1/environments/staging", headers=viewer).get_json()["permissions"]
    assert "service.restart" not in perms and "view" in perms and "logs.view" in perms


@pytest.mark.parametrize("action", ["restart", "redeploy"])
def test_prod_refuses_admins_too(client, rt, make_user, seeded, action):
    admin = make_user("adm@acme.test", ("*", "admin"))
    body = assert_problem(client.post(f"/api/v1/environments/prod/services/orders-api/{action}",
                                      headers=admin), 403)
    assert "production" in body["detail"]
    assert audit_events(rt)[-1]["outcome"] == "denied"
    perms = client.get("/api/v1/environments/prod", headers=admin).get_json()["permissions"]
    assert "service.restart" not in perms


def test_unknown_service_is_404(client, rt, make_user, seeded):
    dev = make_user("dev@acme.test", ("staging", "developer"))
    assert_problem(client.post("/api/v1/environments/staging/services/nope-api/restart", headers=dev), 404)
    assert audit_events(rt)[-1]["outcome"] == "denied"


def test_aws_failure_is_a_clean_502(client, make_user, aws):
    # No cluster exists in moto: ECS answers ClusterNotFoundException.
    dev = make_user("dev@acme.test", ("staging", "developer"))
    body = assert_problem(client.get("/api/v1/environments/staging", headers=dev), 502)
    assert "ClusterNotFound" in body["detail"]


def test_aws_throttling_on_a_read_is_a_503_with_retry_after(client, make_user, sim):
    """Throttling is an outage from the caller's side, not a bad gateway: 503 and when to come back."""
    import boto3
    from ecssim.seed import ServiceSpec, seed

    seed(sim, "stg", [ServiceSpec("orders-api", desired=1)])
    sim.throttle.enabled, sim.throttle.scale = True, 0.0001  # a bucket of 1, refilled every few hours
    ecs = boto3.client("ecs", region_name="us-east-1")
    for _ in range(2):  # drain the account's buckets, as CI or the console would
        for call in (lambda: ecs.list_services(cluster="stg"),
                     lambda: ecs.describe_services(cluster="stg", services=["orders-api"])):
            try:
                call()
            except ecs.exceptions.ClientError:
                pass
    dev = make_user("dev@acme.test", ("staging", "developer"))
    r = client.get("/api/v1/environments/staging", headers=dev)
    body = assert_problem(r, 503)
    assert 0 < int(r.headers["Retry-After"]) <= 60 and body["retry_after"] == int(r.headers["Retry-After"])
    assert "Throttl" in body["detail"] and "Traceback" not in body["detail"]


def test_flask_404_and_405_are_problems(client):
    assert_problem(client.get("/api/v1/nothing-here"), 404)
    r = client.delete("/healthz")
    assert_problem(r, 405)
    assert "GET" in r.headers["Allow"]


def test_unexpected_error_is_a_500_problem_without_trace(app, make_user):
    @app.get("/api/v1/_boom")
    def boom():
        raise RuntimeError("secret internals /etc/passwd")

    r = app.test_client().get("/api/v1/_boom")
    body = assert_problem(r, 500)
    assert "secret internals" not in r.get_data(as_text=True) and body["request_id"]


def test_openapi_is_generated_from_schemas(client):
    doc = client.get("/api/v1/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    assert "/api/v1/environments/{env}/services/{svc}/restart" in doc["paths"]
    assert {"Job", "EnvironmentDetail", "Problem"} <= set(doc["components"]["schemas"])
    json.dumps(doc)


def test_openapi_documents_the_400_that_validation_errors_get(client, make_user):
    """The document says what clients receive: 400 problem+json naming the field, never 422."""
    doc = client.get("/api/v1/openapi.json").get_json()
    documented = {(m, p): set(op["responses"]) for p, ops in doc["paths"].items()
                  for m, op in ops.items() if isinstance(op, dict) and "responses" in op}
    # 422 only where it means something else than validation: logs Valet Key cannot read.
    assert [k for k, codes in documented.items() if "422" in codes] == [
        ("get", "/api/v1/environments/{env}/services/{svc}/logs")]
    assert "not readable" in doc["paths"]["/api/v1/environments/{env}/services/{svc}/logs"]["get"][
        "responses"]["422"]["description"]
    assert "400" in documented[("get", "/api/v1/jobs/{job_id}/events")]
    assert "400" in documented[("post", "/api/v1/environments/{env}/redis/{target}/flush")]
    r = client.get("/api/v1/jobs/0123/events?wait=soon", headers=make_user("v@acme.test", ("staging", "viewer")))
    assert r.status_code == 400 and "wait" in r.get_json()["errors"]
