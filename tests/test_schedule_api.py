"""POST .../schedule/pause and .../schedule/resume, the schedule state in the API, and the page's buttons."""
from __future__ import annotations

import datetime as dt
import re
from typing import Any, Callable
from zoneinfo import ZoneInfo

import pytest
import redis as redis_lib
from sqlalchemy import delete

from jobs.audit_stream import AuditLog
from jobs.schedule_nudge import NUDGE_KEY
from scope.models import ScheduledService, SchedulePause, SchedulePeriod
from tests.conftest import PASSWORD, audit_events, seed_cluster
from wiring.runtime import Runtime

SCHEDULE = 'schedule = { timezone = "Europe/Berlin", up = "Mon-Fri 07:00-20:00" }'
TOML = f"""
[environments.staging]
region = "us-east-1"
cluster = "stg"
{SCHEDULE}

[environments.qa]
region = "us-east-1"
cluster = "qa"

[environments.off]
enabled = false
region = "us-east-1"
cluster = "off"
{SCHEDULE}

[environments.prod]
class = "prod"
region = "us-east-1"
cluster = "prod"
{SCHEDULE}

[environments.prodon]
class = "prod"
enabled = true
region = "us-east-1"
cluster = "prodon"
{SCHEDULE}
"""
PAUSE = "/api/v1/environments/{}/schedule/pause"
RESUME = "/api/v1/environments/{}/schedule/resume"


@pytest.fixture
def environ(environ: dict[str, str], config_file: Callable[[str], str]) -> dict[str, str]:
    return {**environ, "VALETKEY_ENVIRONMENTS": config_file(TOML)}


@pytest.fixture(autouse=True)
def clean_schedule_tables(rt: Runtime) -> None:
    with rt.sessions.begin() as s:  # the PostgreSQL schema is shared by the whole test session
        for model in (SchedulePause, ScheduledService, SchedulePeriod):
            s.execute(delete(model))


@pytest.fixture
def olga(make_user: Callable[..., dict[str, str]]) -> dict[str, str]:
    return make_user("olga@acme.test", ("staging", "operator"), ("qa", "operator"), ("off", "operator"))


@pytest.fixture
def admin(make_user: Callable[..., dict[str, str]]) -> dict[str, str]:
    return make_user("adam@acme.test", ("*", "admin"))


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def denied(rt: Runtime, actor: str) -> list[dict[str, Any]]:
    return [e for e in audit_events(rt) if e["outcome"] == "denied" and e["actor"] == actor]


# ---- pause and resume -----------------------------------------------------------------
def test_operator_pauses_until_resumed_then_resumes(client, rt, olga):
    r = client.post(PAUSE.format("staging"), headers=olga, json={})
    assert r.status_code == 200, r.json
    s = r.json["schedule"]
    assert s["paused"] is True and s["paused_until"] is None and s["paused_by"] == "olga@acme.test"
    assert s["timezone"] == "Europe/Berlin" and s["up"] == ["Mon-Fri 07:00-20:00"]
    assert isinstance(s["up_now"], bool) and s["next_transition"].endswith("Z")
    assert set(s) == {"timezone", "up", "up_now", "paused", "paused_until", "paused_by", "paused_at",
                      "next_transition"}
    assert s["paused_at"].endswith("Z")

    r = client.post(RESUME.format("staging"), headers=olga)
    assert r.status_code == 200 and r.json["schedule"]["paused"] is False
    assert r.json["schedule"]["paused_by"] is None
    assert rt.redis.lrange(NUDGE_KEY, 0, -1) == [b"staging"]  # the scheduler reconciles at once
    entries = [(e["action"], e["outcome"], e["source"], e["actor"], e["environment"]) for e in audit_events(rt)]
    assert entries == [("schedule.pause", "succeeded", "api", "olga@acme.test", "staging"),
                       ("schedule.resume", "succeeded", "api", "olga@acme.test", "staging")]


def test_pause_without_a_body_pauses_until_resumed(client, olga):
    r = client.post(PAUSE.format("staging"), headers=olga)
    assert r.status_code == 200 and r.json["schedule"]["paused"] and r.json["schedule"]["paused_until"] is None


def test_pause_until_a_time_and_change_it(client, rt, olga):
    until = (now() + dt.timedelta(hours=5)).replace(microsecond=0)
    r = client.post(PAUSE.format("staging"), headers=olga, json={"until": iso(until)})
    assert r.status_code == 200 and r.json["schedule"]["paused_until"] == iso(until)
    later = until + dt.timedelta(hours=1)
    r = client.post(PAUSE.format("staging"), headers=olga, json={"until": iso(later)})
    assert r.json["schedule"]["paused_until"] == iso(later)
    pauses = [e for e in audit_events(rt) if e["action"] == "schedule.pause"]
    assert pauses[1]["before"] == {"paused": True, "until": iso(until)}
    assert pauses[1]["after"] == {"paused": True, "until": iso(later)}


def test_until_without_offset_is_berlin_time(client, olga):
    berlin = dt.datetime.now(dt.timezone.utc).astimezone(ZoneInfo("Europe/Berlin"))
    local = (berlin + dt.timedelta(days=1)).replace(second=0, microsecond=0, tzinfo=None)
    r = client.post(PAUSE.format("staging"), headers=olga, json={"until": local.isoformat(timespec="minutes")})
    assert r.status_code == 200
    expected = local.replace(tzinfo=ZoneInfo("Europe/Berlin"))
    assert r.json["schedule"]["paused_until"] == iso(expected)


@pytest.mark.parametrize("body, message", [
    ({"until": "next tuesday"}, "ISO 8601"),
    ({"until": "2020-01-01T00:00:00Z"}, "in the future"),
    ({"until": "2999-01-01T00:00:00Z"}, "30 days"),
    ({"until": "0001-01-01T00:00:00+01:00"}, "ISO 8601"),
    ({"until": "9999-12-31T23:59:59-14:00"}, "ISO 8601"),
    ({"until": "0001-01-01T00:00"}, "ISO 8601"),
])
def test_bad_until_is_a_400_naming_until(client, rt, olga, body, message):
    r = client.post(PAUSE.format("staging"), headers=olga, json=body)
    assert r.status_code == 400 and r.mimetype == "application/problem+json"
    assert list(r.json["errors"]) == ["until"] and message in r.json["errors"]["until"][0]
    assert client.get("/api/v1/environments/staging/schedule/pause").status_code == 405
    assert [e for e in audit_events(rt) if e["outcome"] == "succeeded"] == []


def test_unknown_fields_are_refused(client, olga):
    r = client.post(PAUSE.format("staging"), headers=olga, json={"until": None, "services": ["api"]})
    assert r.status_code == 400 and "services" in r.json["errors"]


def test_resume_when_not_paused_is_harmless_and_audited(client, rt, olga):
    r = client.post(RESUME.format("staging"), headers=olga)
    assert r.status_code == 200 and r.json["schedule"]["paused"] is False
    (entry,) = audit_events(rt)
    assert entry["action"] == "schedule.resume" and "not paused" in entry["detail"]


def test_admin_may_pause(client, admin):
    assert client.post(PAUSE.format("staging"), headers=admin).status_code == 200


# ---- refusals ------------------------------------------------------------------------------
@pytest.mark.parametrize("role", ["developer", "viewer"])
@pytest.mark.parametrize("url, action", [(PAUSE, "schedule.pause"), (RESUME, "schedule.resume")])
def test_weaker_roles_get_403_and_an_audited_denial(client, rt, make_user, role, url, action):
    who = make_user(f"{role}@acme.test", ("staging", role))
    r = client.post(url.format("staging"), headers=who, json={} if url == PAUSE else None)
    assert r.status_code == 403 and "schedule.pause" in r.json["detail"]
    (entry,) = denied(rt, f"{role}@acme.test")
    assert entry["action"] == action and entry["environment"] == "staging"
    with rt.sessions() as s:
        assert s.get(SchedulePause, "staging") is None


def test_an_environment_you_have_no_role_in_is_404_and_audited(client, rt, make_user):
    who = make_user("stranger@acme.test", ("qa", "operator"))
    r = client.post(PAUSE.format("staging"), headers=who)
    assert r.status_code == 404
    assert [e["action"] for e in denied(rt, "stranger@acme.test")] == ["schedule.pause"]
    assert client.post(PAUSE.format("nope"), headers=who).status_code == 404


def test_no_schedule_is_a_409_with_a_clear_detail(client, olga):
    for url in (PAUSE, RESUME):
        r = client.post(url.format("qa"), headers=olga)
        assert r.status_code == 409 and "has no schedule" in r.json["detail"]


@pytest.mark.parametrize("env", ["off", "prod", "prodon"])
def test_disabled_and_prod_environments_are_refused(client, rt, olga, admin, env):
    who = olga if env == "off" else admin
    actor = "olga@acme.test" if env == "off" else "adam@acme.test"
    for url in (PAUSE, RESUME):
        r = client.post(url.format(env), headers=who)
        assert r.status_code == 403, r.json
    assert [e["action"] for e in denied(rt, actor)] == ["schedule.pause", "schedule.resume"]
    with rt.sessions() as s:
        assert s.get(SchedulePause, env) is None


def test_without_credentials_401(client):
    assert client.post(PAUSE.format("staging")).status_code == 401


def test_audit_trail_down_refuses_the_pause(client, rt, olga):
    rt.audit = AuditLog(redis_lib.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5))
    r = client.post(PAUSE.format("staging"), headers=olga)
    assert r.status_code == 503
    with rt.sessions() as s:
        assert s.get(SchedulePause, "staging") is None  # fail closed: no unaudited pause


# ---- the state where people read it -------------------------------------------------------
def test_environment_api_carries_the_real_pause_state(client, olga, aws):
    seed_cluster("stg", ["orders-api"], family_prefix="staging", running=0)
    assert client.get("/api/v1/environments/staging", headers=olga).json["schedule"]["paused"] is False
    client.post(PAUSE.format("staging"), headers=olga)
    s = client.get("/api/v1/environments/staging", headers=olga).json["schedule"]
    assert s["paused"] is True and s["paused_by"] == "olga@acme.test"
    seed_cluster("qa", ["search-api"], running=0)
    assert client.get("/api/v1/environments/qa", headers=olga).json["schedule"] is None


def test_an_expired_pause_is_not_shown_as_paused(client, rt, olga, aws):
    seed_cluster("stg", ["orders-api"], family_prefix="staging", running=0)
    with rt.sessions.begin() as s:
        s.add(SchedulePause(environment="staging", until=now() - dt.timedelta(minutes=1),
                            paused_by="olga@acme.test", paused_at=now() - dt.timedelta(hours=1)))
    assert client.get("/api/v1/environments/staging", headers=olga).json["schedule"]["paused"] is False


def test_openapi_documents_pause_and_resume(client):
    paths = client.get("/api/v1/openapi.json").json["paths"]
    assert "200" in paths["/api/v1/environments/{env}/schedule/pause"]["post"]["responses"]
    assert "200" in paths["/api/v1/environments/{env}/schedule/resume"]["post"]["responses"]


# ---- the page ------------------------------------------------------------------------------------
def _login(client: Any, email: str) -> str:
    """Sign in with the form; returns a CSRF token of the signed-in session."""
    token = _csrf(client.get("/login").get_data(as_text=True))
    r = client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token, "next": "/"})
    assert r.status_code == 302
    return _csrf(client.get("/environments/staging").get_data(as_text=True))


def _csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def test_page_pause_and_resume_for_operators(client, rt, olga, aws):
    seed_cluster("stg", ["orders-api"], family_prefix="staging", running=0)
    _login(client, "olga@acme.test")
    html = client.get("/environments/staging").get_data(as_text=True)
    assert 'id="schedule"' in html and "Mon-Fri 07:00-20:00" in html and "Next scheduled change" in html
    assert 'type="datetime-local"' in html and "Pause until (Europe/Berlin time" in html
    assert "Resume schedule now" not in html
    token = _csrf(html)

    # Without the CSRF token the form is refused.
    assert client.post("/environments/staging/schedule/pause", data={"until": ""}).status_code == 400
    r = client.post("/environments/staging/schedule/pause", data={"until": "", "csrf_token": token})
    assert r.status_code == 302 and r.headers["Location"].endswith("/environments/staging#schedule")
    html = client.get("/environments/staging").get_data(as_text=True)
    assert "<strong>Paused</strong>" in html and "olga@acme.test" in html and "Resume schedule now" in html

    r = client.post("/environments/staging/schedule/resume", data={"csrf_token": token})
    assert r.status_code == 302
    html = client.get("/environments/staging").get_data(as_text=True)
    assert "<strong>Paused</strong>" not in html
    assert [(e["action"], e["source"]) for e in audit_events(rt) if e["action"] != "login"] == [
        ("schedule.pause", "web"), ("schedule.resume", "web")]


def test_page_until_in_the_environment_time_zone(client, rt, olga, aws):
    seed_cluster("stg", ["orders-api"], family_prefix="staging", running=0)
    token = _login(client, "olga@acme.test")
    zone = ZoneInfo("Europe/Berlin")
    local = (now().astimezone(zone) + dt.timedelta(days=2)).replace(second=0, microsecond=0, tzinfo=None)
    r = client.post("/environments/staging/schedule/pause",
                    data={"until": local.strftime("%Y-%m-%dT%H:%M"), "csrf_token": token})
    assert r.status_code == 302
    with rt.sessions() as s:
        assert s.get(SchedulePause, "staging").until == local.replace(tzinfo=zone).astimezone(dt.timezone.utc)
    html = client.get("/environments/staging").get_data(as_text=True)
    assert local.strftime("%H:%M") in html  # shown in Berlin time


def test_page_bad_until_shows_the_reason(client, rt, olga, aws):
    seed_cluster("stg", ["orders-api"], family_prefix="staging", running=0)
    token = _login(client, "olga@acme.test")
    r = client.post("/environments/staging/schedule/pause", data={"until": "2020-01-01T10:00", "csrf_token": token})
    assert r.status_code == 400
    assert "Not paused: must be in the future" in r.get_data(as_text=True)
    with rt.sessions() as s:
        assert s.get(SchedulePause, "staging") is None


def test_page_has_no_buttons_for_developers_and_refuses_their_post(client, rt, make_user, aws):
    seed_cluster("stg", ["orders-api"], family_prefix="staging", running=0)
    make_user("dev@acme.test", ("staging", "developer"))
    token = _login(client, "dev@acme.test")
    html = client.get("/environments/staging").get_data(as_text=True)
    assert 'id="schedule"' in html and "Pause schedule" not in html and "datetime-local" not in html
    r = client.post("/environments/staging/schedule/pause", data={"csrf_token": token})
    assert r.status_code == 403
    assert [e["action"] for e in denied(rt, "dev@acme.test") if e["action"] != "login"] == ["schedule.pause"]


def test_pause_up_to_thirty_days_and_without_until(client, rt, olga):
    later = (now() + dt.timedelta(days=29)).replace(microsecond=0)
    r = client.post(PAUSE.format("staging"), headers=olga, json={"until": iso(later)})
    assert r.status_code == 200 and r.json["schedule"]["paused_until"] == iso(later)
    assert r.json["schedule"]["paused_by"] == "olga@acme.test" and r.json["schedule"]["paused_at"]
    r = client.post(PAUSE.format("staging"), headers=olga, json={})
    assert r.status_code == 200 and r.json["schedule"]["paused"] is True
    assert r.json["schedule"]["paused_until"] is None  # until resumed


def test_page_shows_the_pause_author_and_age(client, rt, olga, aws):
    seed_cluster("stg", ["orders-api"], family_prefix="staging", running=0)
    with rt.sessions.begin() as s:
        s.add(SchedulePause(environment="staging", until=None, paused_by="pat@acme.test",
                            paused_at=now() - dt.timedelta(hours=5)))
    _login(client, "olga@acme.test")
    html = client.get("/environments/staging").get_data(as_text=True)
    assert '<span class="pause-author">pat@acme.test</span>' in html
    assert re.search(r'<time class="pause-age" datetime="[^"]+"[^>]*>5 h ago</time>', html)
    assert "until resumed" in html
