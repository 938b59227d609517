"""Two-person approval, time-boxed grants, access requests and the access review (docs/approvals.md)."""
from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import time
import zlib
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from sqlalchemy import update

from audit.queries import verify_chain
from ecssim.seed import ServiceSpec, seed
from scope.models import Grant, Job, utcnow
from tests import test_saml
from tests.conftest import BASE_TOML, REGION, audit_events
from tests.test_admin_and_login import csrf, login
from tests.test_audit_exporter import export_all
from wiring.access_changes import add_grant, record_grant_expiries, remove_grant
from workers.process import sweep
from workers.runner import JobRunner

keys, sso = test_saml.keys, test_saml.sso  # the SSO fixtures, shared
TOML = BASE_TOML.replace('''webhook_secret_env = "STAGING_WEBHOOK_SECRET"''', '''webhook_secret_env = "STAGING_WEBHOOK_SECRET"
approval = "two-person"''').replace('''[environments.qa]''', '''[environments.qa]
require_reason = true
schedule = { timezone = "UTC", up = "Mon-Fri 07:00-20:00" }''')
RESTART = "/api/v1/environments/staging/services/orders-api/restart"
MSGS = "dramatiq:valetkey.msgs"


@pytest.fixture
def environ(environ: dict[str, str], config_file: Any) -> dict[str, str]:
    environ["VALETKEY_ENVIRONMENTS"] = config_file(TOML)
    # Simulated ECS takes simulated minutes: poll and wait as a worker would.
    return {**environ, "VALETKEY_POLL_INTERVAL": "3", "VALETKEY_STABILITY_TIMEOUT": "900"}


@pytest.fixture
def staging(sim: Any) -> Any:
    """orders-api in the ECS simulator (tasks start, stop and lag as on AWS), and a qa cluster."""
    seed(sim, "qa", [ServiceSpec("search-api")], cidr="10.8")
    return seed(sim, "stg", [ServiceSpec("orders-api", min_percent=50)], cidr="10.9")


@pytest.fixture
def people(make_user: Any) -> dict[str, dict[str, str]]:
    return {"dev": make_user("dev@acme.test", ("staging", "developer"), ("qa", "developer")),
            "dev2": make_user("dev2@acme.test", ("staging", "developer")),
            "op": make_user("op@acme.test", ("staging", "operator")),
            "op_qa": make_user("opqa@acme.test", ("qa", "operator")),
            "admin": make_user("admin@acme.test", ("*", "admin")),
            "auditor": make_user("aud@acme.test", ("*", "auditor")),
            "nobody": make_user("nobody@acme.test")}


def running_tasks() -> set[str]:
    ecs = boto3.client("ecs", region_name=REGION)
    return set(ecs.list_tasks(cluster="stg", desiredStatus="RUNNING")["taskArns"])


def request_restart(client: Any, who: dict[str, str], **body: Any) -> dict[str, Any]:
    r = client.post(RESTART, headers=who, json=body or {"reason": "stuck consumers"})
    assert r.status_code == 202, r.get_json()
    return r.get_json()


def events_of(rt: Any, action: str) -> list[dict[str, Any]]:
    """The entries of ``action`` that were not refusals."""
    return [e for e in audit_events(rt) if e["action"] == action and e["outcome"] != "denied"]


# ---- two-person jobs --------------------------------------------------------------------
def test_a_job_does_nothing_until_a_second_person_approves(client, rt, people, staging, sim):
    before = running_tasks()
    job = request_restart(client, people["dev"])
    assert job["status"] == "awaiting_approval" and job["reason"] == "stuck consumers"
    assert job["approved_by"] is None and job["approval_expires_at"]
    # Approvers decide on what would happen: the dry run's plan travels with the job.
    assert job["plan"]["mechanism"] in ("deployment", "batches") and job["plan"]["blocked"] is None
    assert job["plan"]["steps"]
    assert rt.redis.hlen(MSGS) == 0  # nothing enqueued
    assert JobRunner(rt).run(job["id"]) is None  # a worker cannot claim it
    assert running_tasks() == before  # no ECS call changed anything
    requested = [e for e in audit_events(rt) if e["job_id"] == job["id"]]
    assert [(e["outcome"], e["reason"]) for e in requested] == [("requested", "stuck consumers")]
    # It holds the service's lock: a second request gets 409 naming it.
    r = client.post(RESTART, headers=people["dev2"], json={})
    assert r.status_code == 409 and job["id"] in r.get_json()["detail"]

    r = client.post(f"/api/v1/jobs/{job['id']}/approve", headers=people["op"], json={"reason": "ok"})
    assert r.status_code == 200, r.get_json()
    approved = r.get_json()
    assert approved["status"] == "queued" and approved["approved_by"] == "op@acme.test" and approved["approved_at"]
    assert rt.redis.hlen(MSGS) == 1
    [ev] = events_of(rt, "approval.approve")
    assert ev["actor"] == "op@acme.test" and ev["job_id"] == job["id"] and ev["reason"] == "ok"
    outcome = JobRunner(rt, sleep=sim.advance, clock=sim.clock.now).run(job["id"])
    assert outcome == "succeeded", rt.jobs.get(job["id"]).detail
    assert running_tasks().isdisjoint(before)


def test_approve_refusals(client, rt, people, staging):
    job = request_restart(client, people["dev"])
    url = f"/api/v1/jobs/{job['id']}"
    assert client.post(url + "/approve", headers=people["dev"], json={}).status_code == 403  # self
    assert client.post(url + "/approve", headers=people["dev2"], json={}).status_code == 403  # developer
    assert client.post(url + "/approve", headers=people["op_qa"], json={}).status_code == 404  # cannot see staging
    assert client.post(url + "/approve", headers=people["nobody"], json={}).status_code == 404
    assert client.post(url + "/approve", headers=people["auditor"], json={}).status_code == 403
    assert client.post(url + "/reject", headers=people["dev"], json={}).status_code == 403
    denied = [e for e in audit_events(rt) if e["outcome"] == "denied"]
    assert {e["actor"] for e in denied} >= {"dev@acme.test", "dev2@acme.test", "aud@acme.test"}
    assert rt.jobs.get(job["id"]).status == "awaiting_approval"
    # An admin may approve; approving twice is 409.
    assert client.post(url + "/approve", headers=people["admin"], json={}).status_code == 200
    r = client.post(url + "/approve", headers=people["op"], json={})
    assert r.status_code == 409 and "not awaiting approval" in r.get_json()["detail"]


def test_reject_ends_the_job_and_frees_the_service(client, rt, people, staging):
    job = request_restart(client, people["dev"])
    r = client.post(f"/api/v1/jobs/{job['id']}/reject", headers=people["op"], json={"reason": "not now"})
    assert r.status_code == 200 and r.get_json()["status"] == "rejected"
    assert "not now" in r.get_json()["detail"] and r.get_json()["finished_at"]
    [ev] = events_of(rt, "approval.reject")
    assert ev["actor"] == "op@acme.test"
    assert rt.redis.hlen(MSGS) == 0
    assert request_restart(client, people["dev2"])["status"] == "awaiting_approval"  # the lock is free


def test_approval_expires_after_30_minutes(client, rt, people, staging):
    job = request_restart(client, people["dev"])
    later = utcnow() + dt.timedelta(minutes=30, seconds=1)
    rt.jobs.clock = lambda: later
    got = client.get(f"/api/v1/jobs/{job['id']}", headers=people["dev"]).get_json()  # lazily on read
    assert got["status"] == "rejected" and "approval expired" in got["detail"]
    r = client.post(f"/api/v1/jobs/{job['id']}/approve", headers=people["op"], json={})
    assert r.status_code == 409 and "approval expired" in r.get_json()["detail"]
    assert rt.redis.hlen(MSGS) == 0
    [ev] = events_of(rt, "approval.reject")
    assert "approval expired" in ev["detail"]


def test_the_sweeper_expires_approvals(client, rt, people, staging):
    job = request_restart(client, people["dev"])
    assert sweep(rt) == 0 and rt.jobs.get(job["id"]).status == "awaiting_approval"
    later = utcnow() + dt.timedelta(minutes=31)
    rt.jobs.clock = lambda: later
    assert sweep(rt) >= 1
    assert rt.jobs.get(job["id"]).status == "rejected"
    assert sweep(rt) == 0 and len(events_of(rt, "approval.reject")) == 1  # once


def test_worker_rechecks_the_approver(client, rt, people, staging):
    before = running_tasks()
    job = request_restart(client, people["dev"])
    assert client.post(f"/api/v1/jobs/{job['id']}/approve", headers=people["op"], json={}).status_code == 200
    rt.users.revoke("op@acme.test", "staging")
    assert JobRunner(rt).run(job["id"]) == "failed"
    assert "op@acme.test no longer holds operator" in rt.jobs.get(job["id"]).detail
    assert running_tasks() == before


def test_a_grant_expiring_between_request_and_run_makes_the_worker_refuse(client, rt, people, staging):
    before = running_tasks()
    rt.users.revoke("dev2@acme.test", "staging")
    rt.users.grant("dev2@acme.test", "staging", "developer", rt.catalog,
                   expires_at=utcnow() + dt.timedelta(minutes=5))
    job = request_restart(client, people["dev2"])
    assert client.post(f"/api/v1/jobs/{job['id']}/approve", headers=people["op"], json={}).status_code == 200
    with rt.sessions.begin() as s:
        s.execute(update(Grant).where(Grant.subject == "dev2@acme.test")
                  .values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    assert JobRunner(rt).run(job["id"]) == "failed"
    assert "Refused at run time" in rt.jobs.get(job["id"]).detail
    assert running_tasks() == before


def test_require_reason_refuses_without_one(client, rt, people, staging):
    url = "/api/v1/environments/qa/services/search-api/restart"
    r = client.post(url, headers=people["dev"], json={})
    assert r.status_code == 400 and "reason" in r.get_json()["errors"]
    assert client.post(url, headers=people["dev"], json={"reason": "x" * 501}).status_code == 400
    r = client.post(url, headers=people["dev"], json={"reason": "cache warm-up"})
    assert r.status_code == 202 and r.get_json()["status"] == "queued"  # qa needs no approval
    assert r.get_json()["reason"] == "cache warm-up"
    assert [e["outcome"] for e in audit_events(rt) if e["environment"] == "qa"] == ["denied", "requested"]


def test_schedule_pause_needs_a_reason_where_required(client, rt, people):
    url = "/api/v1/environments/qa/schedule/pause"
    r = client.post(url, headers=people["op_qa"], json={})
    assert r.status_code == 400 and "reason" in r.get_json()["errors"]
    assert client.post(url, headers=people["op_qa"], json={"reason": "demo tonight"}).status_code == 200
    [ev] = events_of(rt, "schedule.pause")
    assert ev["reason"] == "demo tonight" and ev["actor"] == "opqa@acme.test"


def test_flush_and_tasks_wait_for_approval_too(client, rt, people, staging, target_redis):
    target_redis.set("session:1", "x")
    r = client.post("/api/v1/environments/staging/redis/cache/flush", headers=people["dev"],
                    json={"pattern": "session:*", "dry_run": False})
    assert r.status_code == 202 and r.get_json()["status"] == "awaiting_approval"
    r = client.post("/api/v1/environments/staging/tasks", headers=people["dev"],
                    json={"task_definition": "staging-migrate", "reason": "schema"})
    assert r.status_code == 202 and r.get_json()["status"] == "awaiting_approval"
    assert rt.redis.hlen(MSGS) == 0 and target_redis.get("session:1") == b"x"


# ---- time-boxed grants -----------------------------------------------------------------
def test_time_boxed_grants_lapse_at_the_instant(rt, people):
    exp = utcnow() + dt.timedelta(hours=8)
    g, created = add_grant(rt, "dev2@acme.test", "qa", "viewer", actor="admin@acme.test", source="cli",
                           expires_at=exp, reason="incident 42")
    assert created and g.expires_at == exp
    def qa_roles(now: dt.datetime) -> list[str]:
        st = rt.users.standing("dev2@acme.test", now=now)
        web = rt.users.grants_for(["dev2@acme.test"], now=now)
        assert sorted(r for e, r in st.grants if e == "qa") == sorted(x.role for x in web if x.environment == "qa")
        return [r for e, r in st.grants if e == "qa"]
    assert qa_roles(exp - dt.timedelta(microseconds=1)) == ["viewer"]
    assert qa_roles(exp) == []
    [ev] = events_of(rt, "grant.add")
    assert ev["after"] == {"role": "viewer", "expires_at": exp.isoformat().replace("+00:00", "Z")}
    # The scheduler's step records grant.expire once, however many schedulers run it.
    assert record_grant_expiries(rt, now=exp - dt.timedelta(seconds=1)) == 0
    assert record_grant_expiries(rt, now=exp) == 1
    assert record_grant_expiries(rt, now=exp + dt.timedelta(minutes=10)) == 0
    [ev] = events_of(rt, "grant.expire")
    assert ev["target"] == "dev2@acme.test" and ev["environment"] == "qa" and ev["actor"] == "scheduler"
    assert not [x for x in rt.users.all_grants() if x.subject == "dev2@acme.test" and x.environment == "qa"]


def test_me_shows_expiry(client, rt, people):
    exp = utcnow() + dt.timedelta(hours=1)
    add_grant(rt, "nobody@acme.test", "qa", "viewer", actor="admin@acme.test", source="cli", expires_at=exp)
    grants = client.get("/api/v1/me", headers=people["nobody"]).get_json()["grants"]
    assert grants == [{"environment": "qa", "role": "viewer", "subject": "nobody@acme.test",
                       "expires_at": exp.isoformat().replace("+00:00", "Z")}]


def test_cli_grant_for_duration(rt, environ, monkeypatch, capsys):
    from valetkey.cli import main

    for k, v in environ.items():
        monkeypatch.setenv(k, v)
    rt.users.add_user("cli@acme.test")
    assert main(["grant", "cli@acme.test", "qa", "developer", "--for", "8h", "--reason", "on call"]) == 0
    assert "until" in capsys.readouterr().out
    [g] = rt.users.grants_for(["cli@acme.test"])
    assert dt.timedelta(hours=7, minutes=59) < g.expires_at - utcnow() <= dt.timedelta(hours=8)
    assert main(["grant", "cli@acme.test", "qa", "developer", "--for", "8x"]) != 0


# ---- access requests ---------------------------------------------------------------------
def test_access_request_approval_grant_and_expiry(client, rt, people):
    r = client.post("/api/v1/access-requests", headers=people["nobody"],
                    json={"environment": "staging", "role": "developer", "duration": "2h", "reason": "INC-7"})
    assert r.status_code == 201, r.get_json()
    req = r.get_json()
    assert req["status"] == "pending" and req["duration"] == "2h"
    [ev] = events_of(rt, "access.request")
    assert ev["actor"] == "nobody@acme.test" and ev["environment"] == "staging" and ev["reason"] == "INC-7"
    # The environment's approvers see it; others do not.
    assert [x["id"] for x in client.get("/api/v1/access-requests", headers=people["op"]).get_json()["requests"]] \
        == [req["id"]]
    assert client.get("/api/v1/access-requests", headers=people["op_qa"]).get_json()["requests"] == []
    url = f"/api/v1/access-requests/{req['id']}"
    assert client.post(url + "/approve", headers=people["nobody"], json={}).status_code == 403  # self
    assert client.post(url + "/approve", headers=people["dev"], json={}).status_code == 403  # developer
    assert client.post(url + "/approve", headers=people["op_qa"], json={}).status_code == 404
    r = client.post(url + "/approve", headers=people["op"], json={})
    assert r.status_code == 200 and r.get_json()["status"] == "approved"
    assert client.post(url + "/reject", headers=people["op"], json={}).status_code == 409
    [g] = rt.users.grants_for(["nobody@acme.test"])
    assert (g.environment, g.role, g.created_by) == ("staging", "developer", "op@acme.test")
    assert dt.timedelta(hours=1, minutes=59) < g.expires_at - utcnow() <= dt.timedelta(hours=2)
    [add] = events_of(rt, "grant.add")
    assert add["actor"] == "op@acme.test" and add["target"] == "nobody@acme.test"
    [ok] = events_of(rt, "approval.approve")
    assert ok["actor"] == "op@acme.test" and ok["target"] == "nobody@acme.test"
    assert client.get("/api/v1/environments", headers=people["nobody"]).get_json()["environments"][0]["name"] \
        == "staging"
    assert record_grant_expiries(rt, now=g.expires_at) == 1
    [exp] = events_of(rt, "grant.expire")
    assert exp["target"] == "nobody@acme.test"
    assert client.get("/api/v1/environments", headers=people["nobody"]).get_json()["environments"] == []


def test_access_request_does_not_leak_environment_names(client, rt, people):
    def ask(env: str) -> Any:
        return client.post("/api/v1/access-requests", headers=people["nobody"],
                           json={"environment": env, "role": "viewer", "duration": "1h", "reason": "r"})
    unknown, disabled = ask("nope"), ask("prod")
    assert unknown.status_code == disabled.status_code == 404
    assert unknown.get_json()["detail"].replace("nope", "X") == disabled.get_json()["detail"].replace("prod", "X")


@pytest.mark.parametrize("body,field", [
    ({"role": "admin"}, "role"), ({"duration": "8d"}, "duration"), ({"duration": "soon"}, "duration"),
    ({"reason": ""}, "reason"), ({"reason": None}, "reason")])
def test_access_request_validation_names_the_field(client, people, body, field):
    base = {"environment": "staging", "role": "viewer", "duration": "1h", "reason": "r"}
    r = client.post("/api/v1/access-requests", headers=people["nobody"], json={**base, **body})
    assert r.status_code == 400 and field in r.get_json()["errors"], r.get_json()


def test_a_second_pending_request_for_one_environment_is_409_until_the_first_is_decided(client, rt, people):
    def ask(role: str = "viewer") -> Any:
        return client.post("/api/v1/access-requests", headers=people["nobody"],
                           json={"environment": "qa", "role": role, "duration": "1h", "reason": "r"})
    first = ask().get_json()
    again = ask("developer")
    assert again.status_code == 409 and again.get_json()["request_url"] == first["url"]
    assert len(events_of(rt, "access.request")) == 1  # nothing filed, nothing for approvers to see twice
    client.post(first["url"] + "/reject", headers=people["op_qa"], json={"reason": "no"})
    assert ask("developer").status_code == 201  # decided: asking again is fine


def test_an_undecided_request_expires_after_seven_days(client, rt, people):
    from scope.models import AccessRequest

    r = client.post("/api/v1/access-requests", headers=people["nobody"],
                    json={"environment": "qa", "role": "viewer", "duration": "1h", "reason": "r"})
    assert r.status_code == 201, r.get_json()
    req = r.get_json()
    with rt.sessions.begin() as s:
        s.execute(update(AccessRequest).where(AccessRequest.id == req["id"])
                  .values(created_at=utcnow() - dt.timedelta(days=7, minutes=1)))
    mine = client.get("/api/v1/access-requests", headers=people["nobody"]).get_json()["requests"]
    assert [(x["id"], x["status"]) for x in mine] == [(req["id"], "expired")]
    assert client.get("/api/v1/access-requests", headers=people["op_qa"]).get_json()["requests"] == []
    r = client.post(req["url"] + "/approve", headers=people["op_qa"], json={})
    assert r.status_code == 409 and "expired" in r.get_json()["detail"]
    assert rt.users.grants_for(["nobody@acme.test"]) == []  # no grant on a stale reason
    assert client.post("/api/v1/access-requests", headers=people["nobody"],
                       json={"environment": "qa", "role": "viewer", "duration": "1h", "reason": "r"}).status_code == 201


def test_access_request_reject(client, rt, people):
    req = client.post("/api/v1/access-requests", headers=people["nobody"],
                      json={"environment": "qa", "role": "viewer", "duration": "1h", "reason": "r"}).get_json()
    r = client.post(f"/api/v1/access-requests/{req['id']}/reject", headers=people["op_qa"], json={"reason": "no"})
    assert r.status_code == 200 and r.get_json()["status"] == "rejected"
    assert rt.users.grants_for(["nobody@acme.test"]) == []
    [ev] = events_of(rt, "approval.reject")
    assert ev["actor"] == "opqa@acme.test"


# ---- the access review -----------------------------------------------------------------
def test_access_review_at_a_past_instant(client, rt, people):
    add_grant(rt, "temp@acme.test", "qa", "developer", actor="admin@acme.test", source="cli")
    export_all(rt)
    middle = utcnow()
    remove_grant(rt, "temp@acme.test", "qa", None, actor="=HYPERLINK(\"x\")", source="cli")
    add_grant(rt, "late@acme.test", "qa", "viewer", actor="=HYPERLINK(\"x\")", source="cli")
    export_all(rt)

    def subjects(at: str | None) -> set[tuple[str, str, str]]:
        r = client.get("/api/v1/access-review", headers=people["auditor"], query_string={"at": at} if at else {})
        assert r.status_code == 200, r.get_json()
        return {(g["subject"], g["environment"], g["role"]) for g in r.get_json()["grants"]}

    past, now = subjects(middle.isoformat()), subjects(None)
    assert ("temp@acme.test", "qa", "developer") in past and ("late@acme.test", "qa", "viewer") not in past
    assert ("temp@acme.test", "qa", "developer") not in now and ("late@acme.test", "qa", "viewer") in now
    assert ("op@acme.test", "staging", "operator") in past  # made before the trail: from the grants table
    r = client.get("/api/v1/access-review.csv", headers=people["admin"])
    assert r.status_code == 200 and r.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(r.get_data(as_text=True))))
    assert rows[0] == ["subject", "environment", "role", "granted_by", "granted_at", "expires_at"]
    late = [row for row in rows if row[0] == "late@acme.test"]
    assert late[0][3] == "'=HYPERLINK(\"x\")"  # formula-safe
    assert client.get("/api/v1/access-review", headers=people["dev"]).status_code == 403
    assert client.get("/api/v1/access-review", headers=people["auditor"],
                      query_string={"at": "yesterday-ish"}).status_code == 400
    assert verify_chain(rt.sessions).ok  # valetkey audit verify still passes


def test_openapi_documents_the_new_routes(client):
    paths = client.get("/api/v1/openapi.json").get_json()["paths"]
    for p in ("/api/v1/jobs/{job_id}/approve", "/api/v1/jobs/{job_id}/reject", "/api/v1/access-requests",
              "/api/v1/access-requests/{request_no}/approve", "/api/v1/access-review", "/api/v1/access-review.csv"):
        assert p in paths


# ---- pages --------------------------------------------------------------------------------
def test_the_job_page_shows_who_and_lets_an_approver_decide(app, rt, people, staging):
    job = request_restart(app.test_client(), people["dev"])
    browser = app.test_client()
    assert login(browser, "op@acme.test").status_code == 302
    index = browser.get("/").get_data(as_text=True)
    assert "Waiting for your approval" in index and job["id"] in index
    page = browser.get(f"/jobs/{job['id']}").get_data(as_text=True)
    assert "Requested by</dt><dd>dev@acme.test" in page and "stuck consumers" in page and "Approve" in page
    mine = app.test_client()  # the requester sees no buttons on their own job
    login(mine, "dev@acme.test")
    assert "formaction" not in mine.get(f"/jobs/{job['id']}").get_data(as_text=True)
    r = browser.post(f"/jobs/{job['id']}/approve", data={"csrf_token": csrf(browser, f"/jobs/{job['id']}")})
    assert r.status_code == 302 and r.headers["Location"] == f"/jobs/{job['id']}"
    page = browser.get(f"/jobs/{job['id']}").get_data(as_text=True)
    assert "Approved by</dt><dd>op@acme.test" in page and rt.jobs.get(job["id"]).status == "queued"
    assert 'id="job-approval"' not in page  # decided: no buttons any more


def test_a_restart_from_the_page_awaits_approval_on_the_job_page_and_its_card(app, rt, people, staging):
    browser = app.test_client()
    login(browser, "dev@acme.test")
    env_page = browser.get("/environments/staging").get_data(as_text=True)
    # The dialog says it waits for a second person; the page says so before anyone clicks.
    assert "data-two-person" in env_page and "wait for a second person's approval" in env_page
    r = browser.post("/environments/staging/services/orders-api/restart",
                     data={"csrf_token": csrf(browser, "/environments/staging"), "reason": "INC-12"})
    assert r.status_code == 302
    job_id = r.headers["Location"].rsplit("/", 1)[-1]
    job = rt.jobs.get(job_id)
    assert (job.status, job.reason) == ("awaiting_approval", "INC-12")
    page = browser.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert "Waiting for a second person's approval: nothing has run yet." in page
    assert '<strong id="job-status" class="status status-awaiting_approval">awaiting approval</strong>' in page
    assert "formaction" not in page  # the requester cannot approve their own job
    card = browser.get("/environments/staging").get_data(as_text=True)
    assert f'href="/jobs/{job_id}">Restart awaiting approval — view</a>' in card
    active = browser.get("/api/v1/environments/staging/active-jobs").get_json()["jobs"]
    assert [(j["id"], j["status"]) for j in active] == [(job_id, "awaiting_approval")]
    # A second click while it waits shows the waiting job, not an error page.
    again = browser.post("/environments/staging/services/orders-api/restart",
                         data={"csrf_token": csrf(browser, "/environments/staging"), "reason": "again"})
    assert again.status_code == 302 and again.headers["Location"] == f"/jobs/{job_id}"
    assert "is already awaiting approval" in browser.get(f"/jobs/{job_id}").get_data(as_text=True)


def test_an_approval_window_that_lapsed_is_not_an_active_job(client, rt, people, staging):
    job = request_restart(client, people["dev"])
    with rt.sessions() as s, s.begin():
        s.execute(update(Job).where(Job.id == job["id"]).values(created_at=utcnow() - dt.timedelta(days=2)))
    assert client.get("/api/v1/environments/staging/active-jobs", headers=people["dev"]).get_json() == {"jobs": []}
    assert rt.jobs.get(job["id"]).status == "rejected"


def test_a_page_request_without_a_required_reason_is_refused_and_audited(app, rt, people, staging):
    browser = app.test_client()
    login(browser, "dev@acme.test")
    page = browser.get("/environments/qa").get_data(as_text=True)
    assert "data-require-reason" in page
    r = browser.post("/environments/qa/services/search-api/restart",
                     data={"csrf_token": csrf(browser, "/environments/qa"), "reason": "   "})
    assert r.status_code == 400 and "reason" in r.get_data(as_text=True)
    with rt.sessions() as s:
        assert s.query(Job).count() == 0
    assert not [e for e in audit_events(rt) if e["outcome"] == "requested"]
    [denied] = [e for e in audit_events(rt) if e["action"] == "service.restart"]
    assert denied["outcome"] == "denied" and "reason" in denied["detail"]
    r = browser.post("/environments/qa/services/search-api/restart",
                     data={"csrf_token": csrf(browser, "/environments/qa"), "reason": "cache warm-up"})
    assert r.status_code == 302
    assert rt.jobs.get(r.headers["Location"].rsplit("/", 1)[-1]).reason == "cache warm-up"


def test_access_request_page(app, rt, people):
    browser = app.test_client()
    login(browser, "nobody@acme.test")
    token = csrf(browser, "/access-requests")
    r = browser.post("/access-requests", data={"csrf_token": token, "environment": "nope", "role": "viewer",
                                               "duration": "1h", "reason": "r"})
    assert r.status_code == 404 and "takes access requests" in r.get_data(as_text=True)
    r = browser.post("/access-requests", data={"csrf_token": token, "environment": "qa", "role": "viewer",
                                               "duration": "1h", "reason": "INC-9"})
    assert r.status_code == 302
    assert "INC-9" in browser.get("/access-requests").get_data(as_text=True)
    approver = app.test_client()
    login(approver, "opqa@acme.test")
    assert "Access requests waiting for you" in approver.get("/").get_data(as_text=True)


def test_admin_grant_form_has_expiry_and_no_preselected_environment(app, rt, people):
    browser = app.test_client()
    login(browser, "admin@acme.test")
    page = browser.get("/admin/").get_data(as_text=True)
    assert '<option value="" selected disabled>' in page and 'name="duration"' in page
    r = browser.post("/admin/grants", data={"csrf_token": csrf(browser, "/admin/"), "subject": "x@acme.test",
                                            "environment": "qa", "role": "viewer", "duration": "2h",
                                            "reason": "pairing"})
    assert r.status_code == 302
    [g] = rt.users.grants_for(["x@acme.test"])
    assert g.expires_at is not None and g.reason == "pairing"
    assert g.expires_at.strftime("%Y-%m-%d %H:%M:%S UTC") in browser.get("/admin/").get_data(as_text=True)


def test_with_sso_a_browser_approval_needs_a_recent_sign_in(sso, keys, people, staging):
    good, post, start_login = test_saml.good, test_saml.post, test_saml.start_login
    app, rt = sso
    rt.users.grant("sam@acme.test", "staging", "operator", rt.catalog)
    job = request_restart(app.test_client(), people["dev"])
    browser = app.test_client()
    assert post(browser, good(keys, start_login(browser))).status_code == 302
    with browser.session_transaction() as s:
        s["auth_at"] = time.time() - 301
    r = browser.post(f"/jobs/{job['id']}/approve", data={"csrf_token": csrf(browser, f"/jobs/{job['id']}")})
    assert r.status_code == 302 and r.headers["Location"] == f"/saml/login?force=1&next=/jobs/{job['id']}"
    assert rt.jobs.get(job["id"]).status == "awaiting_approval"
    idp_url = browser.get(r.headers["Location"]).headers["Location"]
    xml = zlib.decompress(base64.b64decode(parse_qs(urlsplit(idp_url).query)["SAMLRequest"][0]), -15)
    assert b'ForceAuthn="true"' in xml
    # A fresh sign-in approves.
    assert post(browser, good(keys, start_login(browser))).status_code == 302
    r = browser.post(f"/jobs/{job['id']}/approve", data={"csrf_token": csrf(browser, f"/jobs/{job['id']}")})
    assert r.status_code == 302 and rt.jobs.get(job["id"]).approved_by == "sam@acme.test"


def test_with_sso_an_api_token_approval_is_allowed(sso, people, staging):
    app, rt = sso
    job = request_restart(app.test_client(), people["dev"])
    r = app.test_client().post(f"/api/v1/jobs/{job['id']}/approve", headers=people["op"], json={})
    assert r.status_code == 200 and r.get_json()["status"] == "queued"


@pytest.mark.parametrize("line,key", [('approval = "three-person"', "approval"), ('require_reason = "yes"', "require_reason")])
def test_catalog_validates_approval_keys(tmp_path, line, key):
    from scope.catalog import load_catalog
    from scope.errors import ConfigError

    p = tmp_path / "e.toml"
    p.write_text(f'[environments.x]\ncluster = "x"\n{line}\n')
    with pytest.raises(ConfigError) as e:
        load_catalog(str(p), {})
    assert e.value.key == f"environments.x.{key}"
    p.write_text('[environments.x]\ncluster = "x"\n')
    env = load_catalog(str(p), {}).get("x")
    assert (env.approval, env.require_reason, env.two_person) == ("none", False, False)
