"""Request hardening (issue 18): body limits, bounded JSON, authentication before validation,
disabled environments refuse reading logs too."""
from __future__ import annotations

import time

import pytest
from flask import request

from scope.errors import ValidationFailed
from tests.conftest import audit_events, seed_cluster
from web import json_body

PROBLEM = "application/problem+json"
DEEP = "[" * 50_000 + "]" * 50_000
JSON_ROUTES = [
    "/api/v1/environments/staging/services/orders-api/restart",
    "/api/v1/environments/staging/services/orders-api/redeploy",
    "/api/v1/environments/staging/redis/cache/flush",
    "/api/v1/environments/staging/tasks",
    "/api/v1/environments/staging/schedule/pause",
    "/api/v1/environments/staging/schedule/resume",
]


@pytest.fixture
def admin(make_user):
    return make_user("adm@acme.test", ("*", "admin"))


def assert_problem(r, status):
    assert r.status_code == status, r.get_data(as_text=True)
    assert r.headers["Content-Type"].startswith(PROBLEM)
    text = r.get_data(as_text=True)
    assert "Traceback" not in text and 'File "' not in text
    return r.get_json(force=True)


# ---- the parser ----------------------------------------------------------------------------
@pytest.mark.parametrize("text, depth", [("{}", 1), ('{"a": [1, {"b": []}]}', 4), ('"[[[["', 0),
                                         ('["\\"[[", {"k": "]]"}]', 2), ("5", 0)])
def test_nesting_ignores_brackets_in_strings(text, depth):
    assert json_body.nesting(text) == depth


@pytest.mark.parametrize("text", ['"' + '\\"' * 500_000, '"a' * 500_000, '["\\' * 300_000, "[" * 1_000_000])
def test_nesting_is_linear_on_hostile_megabytes(text):
    # Unmatched quotes made a pattern that needs the closing quote rescan the rest from each one.
    t0 = time.monotonic()
    json_body.nesting(text)
    assert time.monotonic() - t0 < 5


def test_loads_refuses_deep_invalid_and_unencodable_bodies():
    assert json_body.loads(b'{"a": [[1]]}') == {"a": [[1]]}
    assert json_body.loads("[" * 32 + "]" * 32)
    for bad, field in ((DEEP, "body"), ("[" * 33 + "]" * 33, "body"), (b"\xff\xfe", "body"), ("{", "body"),
                       ('{"pattern": "\\ud800"}', "pattern"), ('{"a": {"b": ["ok", "\\udfff"]}}', "a.b.1"),
                       ('{"\\ud800": 1}', "\ud800")):
        with pytest.raises(ValidationFailed) as e:
            json_body.loads(bad)
        assert list(e.value.fields) == [field]


def test_request_get_json_is_bounded(app):
    with app.test_request_context(method="POST", data=DEEP, content_type="application/json"):
        with pytest.raises(ValidationFailed) as e:
            request.get_json()
        assert list(e.value.fields) == ["body"]


# ---- every JSON route -----------------------------------------------------------------------
@pytest.mark.parametrize("path", JSON_ROUTES)
def test_deep_json_is_401_anonymous_and_400_naming_body_authenticated(client, rt, admin, path):
    assert_problem(client.post(path, data=DEEP, content_type="application/json"), 401)
    body = assert_problem(client.post(path, data=DEEP, content_type="application/json", headers=admin), 400)
    assert list(body["errors"]) == ["body"]
    assert not rt.jobs.active_job("staging", "orders-api")


@pytest.mark.parametrize("path", JSON_ROUTES)
def test_invalid_json_is_400_naming_body(client, admin, path):
    body = assert_problem(client.post(path, data=b'{"pattern": ', content_type="application/json",
                                      headers=admin), 400)
    assert list(body["errors"]) == ["body"]


def test_deep_json_to_the_webhook_is_400_after_its_signature(client, rt):
    import hashlib
    import hmac

    raw = ("[" * 30_000 + "]" * 30_000).encode()  # within the webhook's 64 KiB
    sig = "sha256=" + hmac.new(b"whsec-test", raw, hashlib.sha256).hexdigest()
    body = assert_problem(client.post("/hooks/redeploy", data=raw, content_type="application/json",
                                      headers={"X-Hub-Signature-256": sig}), 400)
    assert list(body["errors"]) == ["body"]
    assert_problem(client.post("/hooks/redeploy", data=raw, content_type="application/json"), 401)
    assert [e["outcome"] for e in audit_events(rt)] == ["denied", "denied"]


def test_body_over_the_limit_is_413(client, admin):
    big = b'{"pattern": "' + b"a" * (1024 * 1024) + b'"}'
    assert_problem(client.post(JSON_ROUTES[2], data=big, content_type="application/json", headers=admin), 413)


# ---- authenticate before validating or looking anything up -----------------------------------
@pytest.mark.parametrize("method, path, kwargs", [
    ("post", "/api/v1/environments/staging/redis/cache/flush", {"json": {"pattern": "*", "bogus": 1}}),
    ("post", "/api/v1/environments/staging/tasks", {"json": {"task_definition": "no/such:1"}}),
    ("post", "/api/v1/environments/staging/schedule/pause", {"json": {"until": "never"}}),
    ("get", "/api/v1/jobs/no-such-job", {}),
    ("get", "/api/v1/jobs/no-such-job/events", {"query_string": {"after": "x", "wait": 99}}),
    ("get", "/api/v1/environments/nope", {}),
    ("get", "/api/v1/environments/staging/services/orders-api/logs", {"query_string": {"limit": -1}}),
    ("get", "/api/v1/audit", {"query_string": {"since": "garbage"}}),
    ("get", "/api/v1/audit/export.csv", {"query_string": {"action": "nope"}}),
])
def test_anonymous_bad_requests_are_401_not_400_or_404(client, method, path, kwargs):
    body = assert_problem(getattr(client, method)(path, **kwargs), 401)
    assert "errors" not in body


def test_unknown_and_existing_job_read_alike_to_anonymous(client, rt, admin, aws):
    seed_cluster("stg", ["orders-api"], family_prefix="staging")
    job = client.post(JSON_ROUTES[0], headers=admin).get_json()
    for path in (job["url"], "/api/v1/jobs/0000-nope", f"{job['url']}/events", "/api/v1/jobs/0000-nope/events"):
        r = client.get(path)
        assert r.status_code == 401 and r.get_json()["detail"] == client.get("/api/v1/me").get_json()["detail"]


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/api/v1/openapi.json"])
def test_public_routes_need_no_credentials(client, path):
    assert client.get(path).status_code == 200


# ---- a disabled environment refuses reading its logs --------------------------------------
@pytest.mark.parametrize("role", ["admin", "auditor"])
def test_logs_of_a_disabled_environment_are_refused_and_audited(client, rt, make_user, aws, role):
    seed_cluster("prod", ["orders-api"])
    headers = make_user(f"{role}@acme.test", ("*", role))
    body = assert_problem(client.get("/api/v1/environments/prod/services/orders-api/logs", headers=headers), 403)
    assert "prod" in body["detail"]
    [entry] = [e for e in audit_events(rt) if e["action"] == "logs.view"]
    assert (entry["outcome"], entry["environment"], entry["actor"]) == ("denied", "prod", f"{role}@acme.test")
    detail = client.get("/api/v1/environments/prod", headers=headers).get_json()
    assert "logs.view" not in detail["permissions"]


# ---- every documented query parameter: once only, and within its documented length ---------
KNOWN_PATH = {"env": "staging", "svc": "orders-api", "target": "cache", "job_id": "0000-nope"}


def _query_parameters(client):
    """(path, parameter schema) for every GET operation's documented query parameters."""
    doc = client.get("/api/v1/openapi.json").get_json()
    for path, ops in doc["paths"].items():
        op = ops.get("get")
        if not op:
            continue
        url = path
        for name, value in KNOWN_PATH.items():
            url = url.replace("{" + name + "}", value)
        for param in op.get("parameters", []):
            if param["in"] == "query":
                yield url, param


def test_each_query_parameter_given_twice_is_a_400_naming_it(client, admin, aws):
    seed_cluster("stg", ["orders-api"], family_prefix="staging")
    seen = 0
    for url, param in _query_parameters(client):
        name = param["name"]
        r = client.get(url, query_string=[(name, "1"), (name, "2")], headers=admin)
        body = assert_problem(r, 400)
        assert body["errors"][name] == ["given more than once; give it once"], (url, name)
        seen += 1
    assert seen >= 10  # logs, audit, export and job events all take query parameters


def test_each_string_query_parameter_over_its_length_is_a_400_naming_it(client, admin, aws):
    seed_cluster("stg", ["orders-api"], family_prefix="staging")
    seen = 0
    for url, param in _query_parameters(client):
        limit = param["schema"].get("maxLength")
        if limit is None:
            continue
        r = client.get(url, query_string={param["name"]: "a" * (limit + 1)}, headers=admin)
        body = assert_problem(r, 400)
        assert param["name"] in body["errors"], (url, param["name"], body)
        seen += 1
    assert seen >= 2  # at least the log filter and cursor
