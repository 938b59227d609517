"""SOC 2 credentials: audited access changes, expiring and revocable tokens, disabled users,
login throttling (also across two real web processes), and the CLI that manages them."""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis as redis_lib
import requests
from sqlalchemy import update

from jobs.audit_stream import AuditLog
from scope.errors import Unavailable
from scope.models import ApiToken, utcnow
from tests.conftest import PASSWORD, audit_events, free_port
from tests.test_admin_and_login import admin_client, cli, csrf, login
from web.login_throttle import LoginThrottle
from wiring import access_changes
from wiring.runtime import Runtime

ME = "/api/v1/me"


def dead_redis() -> redis_lib.Redis:
    """A Redis nobody listens on: a real outage, not a stand-in for our code."""
    return redis_lib.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)


def without_audit(rt: Runtime) -> Runtime:
    return dataclasses.replace(rt, audit=AuditLog(dead_redis()))


def events(rt: Runtime, action: str) -> list[dict[str, Any]]:
    return [e for e in audit_events(rt) if e["action"] == action]


def token_row(rt: Runtime, token_id: int) -> ApiToken:
    with rt.sessions() as s:
        tok = s.get(ApiToken, token_id)
        assert tok is not None
        return tok


# ---- audited access changes ---------------------------------------------------------
def test_admin_revokes_token_and_disables_user_audited_with_actor(client, rt, make_user):
    token = admin_client(client, make_user)
    dev = make_user("dev@acme.test", ("staging", "developer"))
    assert client.get(ME, headers=dev).status_code == 200
    (tok, _), = rt.users.list_tokens("dev@acme.test")
    page = client.get("/admin/").get_data(as_text=True)
    # Each token's expiry and last use are on the page.
    assert tok.expires_at.strftime("%Y-%m-%d %H:%M") in page and "Last used" in page
    assert client.post(f"/admin/tokens/{tok.id}/revoke", data={"csrf_token": token}).status_code == 302
    assert client.get(ME, headers=dev).status_code == 401
    assert "revoked" in client.get("/admin/").get_data(as_text=True)
    # Revoking again changes nothing and records nothing.
    client.post(f"/admin/tokens/{tok.id}/revoke", data={"csrf_token": token})
    revokes = events(rt, "token.revoke")
    assert [(e["actor"], e["source"], e["target"], e["outcome"]) for e in revokes] == [
        ("adm@acme.test", "web", "dev@acme.test", "succeeded")]
    assert f"token {tok.id} " in revokes[0]["detail"]

    assert client.post("/admin/users/disable", data={"email": "dev@acme.test", "csrf_token": token}).status_code == 302
    assert rt.users.by_email("dev@acme.test").disabled
    assert [(e["actor"], e["source"], e["target"]) for e in events(rt, "user.disable")] == [
        ("adm@acme.test", "web", "dev@acme.test")]


def test_admin_token_form_takes_an_expiry_and_refuses_a_bad_one(client, rt, make_user):
    token = admin_client(client, make_user)
    make_user("ci@acme.test")
    before = utcnow()
    r = client.post("/admin/tokens", data={"email": "ci@acme.test", "name": "ci", "expires_in": "2h",
                                           "csrf_token": token})
    assert r.status_code == 200
    tok = next(t for t, _ in rt.users.list_tokens("ci@acme.test") if t.name == "ci")
    assert dt.timedelta(hours=2) <= tok.expires_at - before < dt.timedelta(hours=2, minutes=1)
    created = len(rt.users.list_tokens("ci@acme.test"))
    r = client.post("/admin/tokens", data={"email": "ci@acme.test", "name": "x", "expires_in": "forever",
                                           "csrf_token": token}, follow_redirects=True)
    assert "Expires in: not a duration" in r.get_data(as_text=True)
    assert len(rt.users.list_tokens("ci@acme.test")) == created


@pytest.mark.parametrize("path, data, action", [
    ("/admin/grants", {"subject": "dev@acme.test", "environment": "*", "role": "admin"}, "grant.add"),
    ("/admin/grants/revoke", {"subject": "adm@acme.test", "environment": "*", "role": "admin"}, "grant.remove"),
    ("/admin/tokens", {"email": "adm@acme.test", "name": "mine now"}, "token.create"),
    ("/admin/tokens/1/revoke", {}, "token.revoke"),
    ("/admin/users/disable", {"email": "adm@acme.test"}, "user.disable"),
])
def test_non_admin_access_changes_are_refused_and_audited_denied(client, rt, make_user, path, data, action):
    make_user("adm@acme.test", ("*", "admin"))
    make_user("dev@acme.test", ("staging", "operator"))
    login(client, "dev@acme.test")
    r = client.post(path, data={**data, "csrf_token": csrf(client, "/")})
    assert r.status_code == 403
    denied = [e for e in audit_events(rt) if e["outcome"] == "denied"]
    assert [(e["action"], e["actor"], e["source"]) for e in denied] == [(action, "dev@acme.test", "web")]
    # Nothing changed.
    assert [(g.environment, g.role) for g in rt.users.grants_for(["dev@acme.test"])] == [("staging", "operator")]
    assert len(rt.users.grants_for(["adm@acme.test"])) == 1 and not rt.users.by_email("adm@acme.test").disabled
    assert all(t.revoked_at is None for t, _ in rt.users.list_tokens())
    assert len(rt.users.list_tokens("adm@acme.test")) == 1


def test_logout_is_audited_and_ends_the_session(client, rt, make_user):
    make_user("dev@acme.test", ("staging", "viewer"))
    login(client, "dev@acme.test")
    r = client.post("/logout", data={"csrf_token": csrf(client, "/")})
    assert r.status_code == 302 and client.get(ME).status_code == 401
    assert [(e["actor"], e["source"], e["outcome"]) for e in events(rt, "logout")] == [
        ("dev@acme.test", "web", "succeeded")]


def test_access_changes_whose_audit_cannot_be_written_are_taken_back(rt, make_user):
    dev = make_user("dev@acme.test", ("staging", "developer"))
    (tok, _), = rt.users.list_tokens("dev@acme.test")
    broken = without_audit(rt)
    with pytest.raises(Unavailable):
        access_changes.add_user(broken, "new@acme.test", "New", PASSWORD, actor="adm@acme.test", source="cli")
    assert rt.users.by_email("new@acme.test") is None
    with pytest.raises(Unavailable):
        access_changes.disable_user(broken, "dev@acme.test", actor="adm@acme.test", source="cli")
    assert not rt.users.by_email("dev@acme.test").disabled
    with pytest.raises(Unavailable):
        access_changes.revoke_token(broken, tok.id, actor="adm@acme.test", source="cli")
    assert rt.users.user_for_token(dev["Authorization"][len("Bearer "):]) is not None
    with pytest.raises(Unavailable):
        access_changes.create_token(broken, "dev@acme.test", "new", actor="adm@acme.test", source="cli")
    assert [t.revoked_at is None for t, _ in rt.users.list_tokens("dev@acme.test")] == [False, True]
    assert audit_events(rt) == []


def test_cli_access_change_without_audit_trail_is_refused(environ, rt):
    broken = {**environ, "VALETKEY_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    r = cli(broken, "user", "add", "new@acme.test")
    assert r.returncode == 1 and "audit trail cannot be written" in r.stderr and "Traceback" not in r.stderr
    assert rt.users.by_email("new@acme.test") is None


# ---- tokens: expiry, revocation, disabled users, last use ----------------------------------
def test_expired_token_is_refused_at_once(client, rt, make_user):
    dev = make_user("dev@acme.test", ("staging", "viewer"))
    assert client.get(ME, headers=dev).status_code == 200
    with rt.sessions.begin() as s:
        s.execute(update(ApiToken).values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    r = client.get(ME, headers=dev)
    assert r.status_code == 401 and r.mimetype == "application/problem+json"


def test_token_lifetime_must_be_positive_and_bounded(rt, make_user):
    make_user("dev@acme.test")
    for ttl in (dt.timedelta(0), dt.timedelta(days=3651)):
        with pytest.raises(Exception, match="lifetime"):
            rt.users.create_token("dev@acme.test", "x", ttl)


def test_disabled_user_token_and_browser_session_stop_at_once(client, rt, make_user):
    dev = make_user("dev@acme.test", ("staging", "viewer"))
    login(client, "dev@acme.test")
    assert client.get(ME).status_code == 200 and client.get(ME, headers=dev).status_code == 200
    access_changes.disable_user(rt, "dev@acme.test", actor="adm@acme.test", source="cli")
    assert client.get(ME).status_code == 401
    assert client.get(ME, headers=dev).status_code == 401
    page = client.get("/environments/staging")
    assert page.status_code == 302 and "/login" in page.headers["Location"]
    # And the password no longer signs them in.
    assert login(client, "dev@acme.test").status_code == 401


def test_last_used_is_written_at_most_once_a_minute(client, rt, make_user):
    dev = make_user("dev@acme.test", ("staging", "viewer"))
    (tok, _), = rt.users.list_tokens("dev@acme.test")
    assert tok.last_used_at is None
    client.get(ME, headers=dev)
    first = token_row(rt, tok.id).last_used_at
    assert first is not None
    client.get(ME, headers=dev)
    assert token_row(rt, tok.id).last_used_at == first
    stale = utcnow() - dt.timedelta(minutes=2)
    with rt.sessions.begin() as s:
        s.execute(update(ApiToken).where(ApiToken.id == tok.id).values(last_used_at=stale))
    client.get(ME, headers=dev)
    assert token_row(rt, tok.id).last_used_at > stale + dt.timedelta(minutes=1)


# ---- CLI ------------------------------------------------------------------------------
def test_cli_token_create_list_revoke(environ, rt, make_user):
    make_user("dev@acme.test", ("staging", "viewer"))
    make_user("ops@acme.test")
    env = {**environ, "VALETKEY_CLI_ACTOR": "root@ops-box"}
    before = utcnow()
    out = cli(env, "token", "create", "dev@acme.test", "--name", "laptop", "--expires-in", "2h")
    assert out.returncode == 0, out.stderr
    clear = out.stdout.strip().splitlines()[-1]
    assert rt.users.user_for_token(clear).email == "dev@acme.test"
    laptop = next(t for t, _ in rt.users.list_tokens("dev@acme.test") if t.name == "laptop")
    assert dt.timedelta(hours=2) <= laptop.expires_at - before < dt.timedelta(hours=2, minutes=1)

    listing = cli(env, "token", "list")
    assert listing.returncode == 0
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["ID", "USER", "NAME", "STATUS", "CREATED", "EXPIRES", "LAST", "USED"]
    assert any(re.match(rf"{laptop.id}\s+dev@acme\.test\s+laptop\s+active\s", line) for line in lines)
    assert "ops@acme.test" in listing.stdout
    # Never the secret, nor its hash.
    assert clear not in listing.stdout and laptop.token_hash not in listing.stdout
    only_dev = cli(env, "token", "list", "dev@acme.test").stdout
    assert "ops@acme.test" not in only_dev and "laptop" in only_dev
    assert cli(env, "token", "list", "ghost@acme.test").returncode == 1

    r = cli(env, "token", "revoke", str(laptop.id))
    assert r.returncode == 0 and f"revoked token {laptop.id} of dev@acme.test" in r.stdout
    assert rt.users.user_for_token(clear) is None
    assert re.search(rf"^{laptop.id}\s+dev@acme\.test\s+laptop\s+revoked\s", cli(env, "token", "list").stdout, re.M)
    assert "already revoked" in cli(env, "token", "revoke", str(laptop.id)).stdout
    assert [(e["actor"], e["source"], e["target"]) for e in events(rt, "token.revoke")] == [
        ("root@ops-box", "cli", "dev@acme.test")]
    assert [e["actor"] for e in events(rt, "token.create")] == ["root@ops-box"]
    missing = cli(env, "token", "revoke", "99999")
    assert missing.returncode == 1 and "no token 99999" in missing.stderr


def test_cli_token_lifetime_default_setting_and_refusals(environ, rt, make_user):
    make_user("dev@acme.test")
    before = utcnow()
    assert cli(environ, "token", "create", "dev@acme.test", "--name", "default").returncode == 0
    assert cli({**environ, "VALETKEY_TOKEN_TTL_DAYS": "7"}, "token", "create", "dev@acme.test",
               "--name", "week").returncode == 0
    life = {t.name: t.expires_at - before for t, _ in rt.users.list_tokens("dev@acme.test")}
    assert dt.timedelta(days=90) <= life["default"] < dt.timedelta(days=90, minutes=1)
    assert dt.timedelta(days=7) <= life["week"] < dt.timedelta(days=7, minutes=1)
    bad = cli(environ, "token", "create", "dev@acme.test", "--expires-in", "3 days")
    assert bad.returncode == 1 and "--expires-in: not a duration" in bad.stderr
    zero = cli(environ, "token", "create", "dev@acme.test", "--expires-in", "0d")
    assert zero.returncode == 1 and "lifetime" in zero.stderr
    conf = cli({**environ, "VALETKEY_TOKEN_TTL_DAYS": "soon"}, "token", "create", "dev@acme.test")
    assert conf.returncode == 2 and "VALETKEY_TOKEN_TTL_DAYS" in conf.stderr
    assert len(rt.users.list_tokens("dev@acme.test")) == 3  # make_user's and the two above


def test_cli_user_list_and_disable(environ, rt, make_user):
    dev = make_user("dev@acme.test", ("staging", "viewer"))
    rt.users.upsert_sso_user("sso@acme.test", "Sso", ["qa"])
    env = {**environ, "VALETKEY_CLI_ACTOR": "root@ops-box"}
    listing = cli(env, "user", "list").stdout.splitlines()
    assert listing[0].split()[:3] == ["EMAIL", "NAME", "STATUS"]
    assert re.match(r"dev@acme\.test\s+Dev\s+active\s+password\s", listing[1])
    assert re.match(r"sso@acme\.test\s+Sso\s+active\s+sso\s", listing[2])
    r = cli(env, "user", "disable", "dev@acme.test")
    assert r.returncode == 0 and "disabled dev@acme.test" in r.stdout
    assert rt.users.user_for_token(dev["Authorization"][len("Bearer "):]) is None
    assert re.match(r"dev@acme\.test\s+Dev\s+disabled\s", cli(env, "user", "list").stdout.splitlines()[1])
    assert "already disabled" in cli(env, "user", "disable", "dev@acme.test").stdout
    assert [(e["actor"], e["source"], e["target"]) for e in events(rt, "user.disable")] == [
        ("root@ops-box", "cli", "dev@acme.test")]
    missing = cli(env, "user", "disable", "ghost@acme.test")
    assert missing.returncode == 1 and "no user ghost@acme.test" in missing.stderr


def test_cli_user_add_is_audited_with_the_cli_actor(environ, rt):
    r = cli({**environ, "VALETKEY_CLI_ACTOR": "root@ops-box"}, "user", "add", "new@acme.test")
    assert r.returncode == 0
    assert [(e["actor"], e["source"], e["target"]) for e in events(rt, "user.add")] == [
        ("root@ops-box", "cli", "new@acme.test")]


def test_cli_version_and_help_on_every_option(tmp_path):
    from importlib.metadata import version

    r = subprocess.run([sys.executable, "-m", "valetkey.cli", "--version"], capture_output=True, text=True,
                       timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and r.stdout.strip() == f"valetkey {version('valetkey')}"
    from valetkey.cli import parser

    missing: list[str] = []

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not action.help:
                missing.append(f"{path} {action.dest}")
    walk(parser(), "valetkey")
    assert missing == []


# ---- login throttling ------------------------------------------------------------------
def post_login(client, email: str, password: str, **kw: Any):
    return client.post("/login", data={"email": email, "password": password, "next": "/",
                                       "csrf_token": csrf(client)}, **kw)


def test_five_failures_lock_the_account_even_for_the_right_password(client, rt, make_user):
    make_user("dev@acme.test", ("staging", "viewer"))
    for _ in range(5):
        assert post_login(client, "dev@acme.test", "wrong password guess").status_code == 401
    r = post_login(client, "dev@acme.test", PASSWORD)
    assert r.status_code == 429 and 890 <= int(r.headers["Retry-After"]) <= 900
    page = r.get_data(as_text=True)
    assert "Too many failed sign-in attempts" in page and "Try again in 15 minutes" in page
    assert client.get(ME).status_code == 401
    locked = [e for e in events(rt, "login") if "too many" in e["detail"]]
    assert [(e["actor"], e["outcome"]) for e in locked] == [("dev@acme.test", "denied")]
    # Another account from another address is not affected.
    make_user("ops@acme.test")
    other = post_login(client, "ops@acme.test", PASSWORD, environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert other.status_code == 302


def test_a_success_clears_the_account_count(client, make_user):
    make_user("dev@acme.test")
    for _ in range(4):
        assert post_login(client, "dev@acme.test", "wrong password guess").status_code == 401
    assert post_login(client, "dev@acme.test", PASSWORD).status_code == 302
    client.post("/logout", data={"csrf_token": csrf(client, "/")})
    for _ in range(4):
        assert post_login(client, "dev@acme.test", "wrong password guess").status_code == 401
    assert post_login(client, "dev@acme.test", PASSWORD).status_code == 302


def test_twenty_failures_from_one_address_lock_the_address(client, rt, make_user):
    make_user("dev@acme.test")
    for i in range(20):
        assert post_login(client, f"guess{i}@acme.test", "wrong password guess").status_code == 401
    r = post_login(client, "dev@acme.test", PASSWORD)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    # The same account from elsewhere still signs in: the address is locked, not the account.
    assert post_login(client, "dev@acme.test", PASSWORD, environ_base={"REMOTE_ADDR": "10.9.9.9"}).status_code == 302


def test_lock_lifts_when_the_window_has_passed(rt):
    throttle = LoginThrottle(rt.redis, window=1, account_limit=2, address_limit=100)
    assert throttle.begin("a@acme.test", "10.0.0.1").retry_after == 0
    assert throttle.begin("a@acme.test", "10.0.0.1").retry_after == 0
    assert throttle.begin("a@acme.test", "10.0.0.1").retry_after == 1
    time.sleep(1.1)
    assert throttle.begin("a@acme.test", "10.0.0.1").retry_after == 0


def test_login_fails_closed_without_redis(rt, make_user):
    from web import create_app

    make_user("dev@acme.test")
    app = create_app({"TESTING": True}, runtime=dataclasses.replace(rt, redis=dead_redis()))
    c = app.test_client()
    r = post_login(c, "dev@acme.test", PASSWORD)
    assert r.status_code == 503


def _start_web(environ: dict[str, str], port: int, log) -> subprocess.Popen:
    env = {**os.environ, **environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "valetkey.cli", "web", "--bind", f"127.0.0.1:{port}",
                             "--workers", "1", "--threads", "8"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def test_throttle_holds_across_two_web_processes_under_concurrent_guessing(environ, rt, make_user, tmp_path):
    make_user("dev@acme.test", ("staging", "viewer"))
    ports = [free_port(), free_port()]
    log = open(tmp_path / "web.log", "wb")
    procs = [_start_web(environ, p, log) for p in ports]
    try:
        for p in ports:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if requests.get(f"http://127.0.0.1:{p}/healthz", timeout=10).status_code == 200:
                        break
                except requests.RequestException:  # not listening yet, or still importing
                    pass
                assert time.monotonic() < deadline, (tmp_path / "web.log").read_text()[-3000:]
                time.sleep(0.2)

        def attempt(i: int, password: str = "wrong password guess") -> requests.Response:
            base = f"http://127.0.0.1:{ports[i % 2]}"
            with requests.Session() as s:
                page = s.get(f"{base}/login", timeout=30).text
                token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
                return s.post(f"{base}/login", data={"email": "dev@acme.test", "password": password,
                                                     "next": "/", "csrf_token": token},
                              allow_redirects=False, timeout=30)

        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(attempt, range(30)))
        codes = sorted(r.status_code for r in results)
        # Exactly five guesses reached the password check, however the 30 raced.
        assert codes == [401] * 5 + [429] * 25, codes
        assert all(0 < int(r.headers["Retry-After"]) <= 900 for r in results if r.status_code == 429)
        right = [attempt(0, PASSWORD), attempt(1, PASSWORD)]
        assert [r.status_code for r in right] == [429, 429]
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait(20)
        log.close()
    logins = events(rt, "login")
    assert len(logins) == 32 and all(e["outcome"] == "denied" for e in logins)
    assert sum("too many" in e["detail"] for e in logins) == 27
