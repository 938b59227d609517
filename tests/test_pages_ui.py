"""Issue 17 on the server side: 409 as help, the active-jobs state endpoint, the dry-run guard,
times that say their zone, and the shortened image (pages and API through the Flask client)."""
from __future__ import annotations

import re
from typing import Any

import pytest

from ecssim.seed import ServiceSpec, seed
from scope.models import Job
from tests.conftest import PASSWORD, audit_events, seed_cluster
from web.page_base import job_title, short_image, time_tag


def _login(client: Any, email: str) -> str:
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    r = client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token, "next": "/"})
    assert r.status_code == 302
    page = client.get("/").get_data(as_text=True)  # the session (and its token) is new after signing in
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def _jobs(rt: Any) -> list[Job]:
    with rt.sessions() as s:
        return list(s.query(Job).order_by(Job.created_at))


@pytest.mark.parametrize("image, short", [
    ("123456789012.dkr.ecr.us-east-1.amazonaws.com/staging-orders-api:latest", "staging-orders-api:latest"),
    ("123.dkr.ecr.eu-west-1.amazonaws.com/team/orders-api:1.4@sha256:a3f2b1c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1",
     "orders-api:1.4 · sha:a3f2b1c"),
    ("nginx", "nginx"),
    ("", "—"),
])
def test_short_image(image, short):
    assert short_image(image) == short


def test_time_tag_says_utc_and_keeps_the_instant():
    assert str(time_tag("2026-11-27T18:00:05.123Z")) == (
        '<time datetime="2026-11-27T18:00:05Z" title="2026-11-27 18:00:05 UTC">2026-11-27 18:00:05 UTC</time>')
    assert "—" in str(time_tag(None))
    assert str(time_tag("<b>not a time</b>")) == "&lt;b&gt;not a time&lt;/b&gt;"  # escaped, not trusted


def test_job_title_in_words():
    assert job_title({"action": "service.restart", "target": "orders-api", "environment": "staging"}) == \
        "Restart of orders-api in staging"
    assert job_title({"action": "redis.flush", "target": "redis:cache", "environment": "qa"}) == \
        "Redis flush of cache in qa"


def test_second_click_on_restart_shows_the_running_job(client, rt, make_user, aws):
    seed_cluster("stg", ["orders-api"], family_prefix="staging")
    make_user("dev@acme.test", ("staging", "developer"))
    token = _login(client, "dev@acme.test")
    first = client.post("/environments/staging/services/orders-api/restart",
                        data={"csrf_token": token, "reason": "stuck orders"})
    assert first.status_code == 302
    job_id = first.headers["Location"].rsplit("/", 1)[-1]
    again = client.post("/environments/staging/services/orders-api/redeploy", data={"csrf_token": token})
    # Not an error page: the running job, with a notice saying nothing new was started.
    assert again.status_code == 302 and again.headers["Location"] == f"/jobs/{job_id}"
    html = client.get(again.headers["Location"]).get_data(as_text=True)
    assert "Nothing new was started: Restart of orders-api in staging is already queued" in html
    assert "<h1 id=\"job-title\">Restart of orders-api in staging</h1>" in html
    assert [j.id for j in _jobs(rt)] == [job_id]
    # Still a refusal, audited like any other.
    assert any(e["outcome"] == "denied" and e["action"] == "service.redeploy" for e in audit_events(rt))


def test_api_409_names_the_running_job_and_its_url(client, rt, make_user, aws):
    seed_cluster("stg", ["orders-api"], family_prefix="staging")
    headers = make_user("dev@acme.test", ("staging", "developer"))
    first = client.post("/api/v1/environments/staging/services/orders-api/restart", headers=headers)
    assert first.status_code == 202
    r = client.post("/api/v1/environments/staging/services/orders-api/restart", headers=headers)
    assert r.status_code == 409 and r.mimetype == "application/problem+json"
    body = r.get_json()
    assert body["job_id"] == first.get_json()["id"] and body["job_url"] == first.get_json()["url"]


def test_dry_run_answers_the_plan_and_starts_nothing(client, rt, make_user, sim):
    """The confirmation dialog asks for the plan; it must never start a job instead."""
    seed(sim, "stg", [ServiceSpec("orders-api")])
    headers = make_user("dev@acme.test", ("staging", "developer"))
    for action in ("restart", "redeploy"):
        r = client.post(f"/api/v1/environments/staging/services/orders-api/{action}", headers=headers,
                        json={"dry_run": True})
        assert r.status_code == 200, r.get_json()
        plan = r.get_json()
        assert plan["mechanism"] in ("deployment", "batches") and plan["steps"] and plan["blocked"] is None
    assert _jobs(rt) == []


def test_the_reason_typed_in_the_dialog_reaches_the_job_and_the_audit_entry(client, rt, make_user, aws):
    seed_cluster("stg", ["orders-api"], family_prefix="staging")
    make_user("dev@acme.test", ("staging", "developer"))
    token = _login(client, "dev@acme.test")
    r = client.post("/environments/staging/services/orders-api/restart",
                    data={"csrf_token": token, "reason": "  orders stuck after the 18:30 deploy "})
    assert r.status_code == 302
    [job] = _jobs(rt)
    assert job.reason == "orders stuck after the 18:30 deploy"
    [entry] = [e for e in audit_events(rt) if e["action"] == "service.restart"]
    assert entry["outcome"] == "requested" and entry["reason"] == "orders stuck after the 18:30 deploy"
    page = client.get(f"/jobs/{job.id}").get_data(as_text=True)
    assert '<dd id="job-reason">orders stuck after the 18:30 deploy</dd>' in page


def test_active_jobs_lists_unfinished_jobs_of_visible_environments_only(client, rt, make_user, aws):
    seed_cluster("stg", ["orders-api", "payments-api"], family_prefix="staging")
    dev = make_user("dev@acme.test", ("staging", "developer"))
    outsider = make_user("out@acme.test", ("qa", "viewer"))
    assert client.get("/api/v1/environments/staging/active-jobs", headers=dev).get_json() == {"jobs": []}
    started = client.post("/api/v1/environments/staging/services/orders-api/restart", headers=dev).get_json()
    body = client.get("/api/v1/environments/staging/active-jobs", headers=dev).get_json()
    assert [(j["id"], j["target"], j["status"]) for j in body["jobs"]] == [(started["id"], "orders-api", "queued")]
    rt.jobs.finish(started["id"], "succeeded", "HEALTHY after 1s")
    assert client.get("/api/v1/environments/staging/active-jobs", headers=dev).get_json() == {"jobs": []}
    # An environment one holds no role in does not exist.
    assert client.get("/api/v1/environments/staging/active-jobs", headers=outsider).status_code == 404
    assert client.get("/api/v1/environments/staging/active-jobs").status_code == 401


def test_environment_page_marks_the_running_job_and_renders_utc_times(client, rt, make_user, aws):
    seed_cluster("stg", ["orders-api", "payments-api"], family_prefix="staging")
    make_user("dev@acme.test", ("staging", "developer"))
    token = _login(client, "dev@acme.test")
    job_id = client.post("/environments/staging/services/payments-api/restart",
                         data={"csrf_token": token}).headers["Location"].rsplit("/", 1)[-1]
    html = client.get("/environments/staging").get_data(as_text=True)
    card = re.search(r'<li class="svc" id="svc-payments-api".*?</li>', html, re.S).group(0)
    assert f'href="/jobs/{job_id}">Restart queued — view</a>' in card
    assert 'data-field="image-short">staging-payments-api:latest</code>' in card
    assert 'aria-label="Restart payments-api"' in card and 'data-confirm="Restart payments-api in staging?"' in card
    job_page = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert re.search(r'Requested by</dt><dd>dev@acme.test · <time datetime="[0-9T:-]+Z" title="[0-9 :-]+ UTC">'
                     r'[0-9 :-]+ UTC</time>', job_page)


def test_the_audit_page_shows_an_operation_as_one_row_with_its_outcome():
    from web.services.audit import one_row_per_operation

    def entry(i: int, outcome: str, job: str | None, action: str = "service.restart", reason: str = "") -> dict[str, Any]:
        return {"id": i, "time": f"2026-11-27T18:00:0{i}Z", "actor": "dev@acme.test", "action": action,
                "outcome": outcome, "job_id": job, "reason": reason, "detail": ""}
    newest_first = [entry(6, "succeeded", "j1"), entry(5, "succeeded", "j1", action="approval.approve"),
                    entry(4, "failed", "j2"), entry(3, "requested", "j2", reason="INC-1"),
                    entry(2, "requested", "j1", reason="stuck"), entry(1, "denied", None), entry(0, "requested", "j3")]
    rows = one_row_per_operation(newest_first)
    assert [(r["id"], [x["id"] for x in r["earlier"]]) for r in rows] == [(6, [5, 2]), (4, [3]), (1, []), (0, [])]
    assert rows[0]["reason"] == "stuck" and rows[1]["reason"] == "INC-1"
    # Outcomes of one job are never folded into each other (two failed entries stay two rows).
    assert len(one_row_per_operation([entry(2, "failed", "j"), entry(1, "failed", "j")])) == 2
