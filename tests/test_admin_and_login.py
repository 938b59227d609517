"""Local login, the admin page (grants, tokens) and the CLI that does the same."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import PASSWORD, audit_events


def csrf(client, path="/login") -> str:
    page = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def login(client, email, password=PASSWORD, nxt="/"):
    return client.post("/login", data={"email": email, "password": password, "next": nxt,
                                       "csrf_token": csrf(client)})


def test_local_login_success_and_audit(client, rt, make_user):
    make_user("dev@acme.test", ("staging", "developer"))
    r = login(client, "dev@acme.test", nxt="/environments/staging")
    assert r.status_code == 302 and r.headers["Location"] == "/environments/staging"
    assert client.get("/api/v1/me").get_json()["email"] == "dev@acme.test"
    e = audit_events(rt)[-1]
    assert (e["action"], e["outcome"], e["actor"]) == ("login", "succeeded", "dev@acme.test")


def test_wrong_password_is_refused_and_audited(client, rt, make_user):
    make_user("dev@acme.test", ("staging", "developer"))
    r = login(client, "dev@acme.test", "not the password at all")
    assert r.status_code == 401 and "Wrong e-mail or password" in r.get_data(as_text=True)
    assert client.get("/api/v1/me").status_code == 401
    assert audit_events(rt)[-1]["outcome"] == "denied"
    # An unknown account gets the very same answer.
    assert login(client, "nobody@acme.test").status_code == 401


def test_login_form_without_csrf_token_is_refused(client, make_user):
    make_user("dev@acme.test", ("staging", "developer"))
    r = client.post("/login", data={"email": "dev@acme.test", "password": PASSWORD})
    assert r.status_code == 400 and client.get("/api/v1/me").status_code == 401


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example", "/\\evil.example"])
def test_login_never_redirects_off_site(client, make_user, target):
    make_user("dev@acme.test", ("staging", "developer"))
    assert login(client, "dev@acme.test", nxt=target).headers["Location"] == "/"


def test_pages_send_anonymous_visitors_to_sign_in(client):
    r = client.get("/environments/staging")
    assert r.status_code == 302 and r.headers["Location"].startswith("/login?next=")


def test_session_cookie_flags_and_security_headers(client, make_user):
    make_user("dev@acme.test", ("staging", "developer"))
    r = login(client, "dev@acme.test")
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    page = client.get("/")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff" and page.headers["Referrer-Policy"]


def test_session_post_without_csrf_is_refused(client, rt, make_user, steady_tasks):
    make_user("dev@acme.test", ("staging", "developer"))
    login(client, "dev@acme.test")
    r = client.post("/api/v1/environments/staging/services/orders-api/restart")
    assert r.status_code == 400 and "form" in r.get_json()["detail"]


def admin_client(client, make_user):
    make_user("adm@acme.test", ("*", "admin"))
    login(client, "adm@acme.test")
    return csrf(client, "/admin/")


def test_admin_grants_and_revokes_with_audit(client, rt, make_user):
    token = admin_client(client, make_user)
    r = client.post("/admin/grants", data={"subject": "group:qa-team", "environment": "qa", "role": "viewer",
                                           "csrf_token": token})
    assert r.status_code == 302
    assert [(g.subject, g.environment, g.role) for g in rt.users.grants_for(["group:qa-team"])] == [
        ("group:qa-team", "qa", "viewer")]
    page = client.get("/admin/").get_data(as_text=True)
    assert "Granted viewer in qa to group:qa-team" in page and "qa-team" in page
    client.post("/admin/grants/revoke", data={"subject": "group:qa-team", "environment": "qa", "role": "viewer",
                                              "csrf_token": token})
    assert rt.users.grants_for(["group:qa-team"]) == []
    actions = [(e["action"], e["actor"], e["source"], e["target"]) for e in audit_events(rt)
               if e["action"].startswith("grant.") and e["actor"] == "adm@acme.test"]
    assert actions == [("grant.add", "adm@acme.test", "web", "group:qa-team"),
                       ("grant.remove", "adm@acme.test", "web", "group:qa-team")]


def test_admin_bad_grant_is_explained(client, rt, make_user):
    token = admin_client(client, make_user)
    client.post("/admin/grants", data={"subject": "x@acme.test", "environment": "qa", "role": "auditor",
                                       "csrf_token": token})
    page = client.get("/admin/").get_data(as_text=True)
    assert "global role" in page and rt.users.grants_for(["x@acme.test"]) == []


def test_admin_creates_token_shown_once_and_revokes(client, rt, make_user):
    token = admin_client(client, make_user)
    make_user("ci@acme.test", ("staging", "developer"))
    r = client.post("/admin/tokens", data={"email": "ci@acme.test", "name": "ci", "csrf_token": token})
    clear = re.search(r'id="token-value">(vk_[^<]+)<', r.get_data(as_text=True)).group(1)
    assert r.headers["Cache-Control"] == "no-store"
    api = {"Authorization": f"Bearer {clear}"}
    assert client.get("/api/v1/me", headers=api).get_json()["email"] == "ci@acme.test"
    assert clear not in client.get("/admin/").get_data(as_text=True)
    assert audit_events(rt)[-1]["action"] == "token.create" and clear not in str(audit_events(rt))
    tid = re.findall(r'/admin/tokens/(\d+)/revoke', client.get("/admin/").get_data(as_text=True))
    for t in tid:
        client.post(f"/admin/tokens/{t}/revoke", data={"csrf_token": token})
    assert client.get("/api/v1/me", headers=api).status_code == 401


def test_non_admin_cannot_use_admin_page(client, make_user):
    headers = make_user("dev@acme.test", ("staging", "developer"), ("qa", "operator"))
    login(client, "dev@acme.test")
    assert client.get("/admin/").status_code == 403
    assert client.post("/admin/grants", data={"subject": "dev@acme.test", "environment": "*", "role": "admin",
                                              "csrf_token": csrf(client, "/")}).status_code == 403
    assert client.post("/admin/grants", headers=headers,
                       data={"subject": "dev@acme.test", "environment": "*", "role": "admin"}).status_code == 403


def cli(environ, *args, input=None):
    return subprocess.run([sys.executable, "-m", "valetkey.cli", *args], env={**environ, "PATH": "/usr/bin:/bin"},
                          input=input, capture_output=True, text=True, timeout=60)


def test_cli_user_grant_token_revoke(environ, rt):
    r = cli(environ, "user", "add", "Cli@Acme.test", "--name", "Cli", "--password-stdin", input=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    user = rt.users.by_email("cli@acme.test")
    assert user.password_hash.startswith("$argon2") and PASSWORD not in user.password_hash
    assert cli(environ, "grant", "cli@acme.test", "staging", "developer").returncode == 0
    out = cli(environ, "token", "create", "cli@acme.test", "--name", "laptop")
    token = out.stdout.strip().splitlines()[-1]
    assert token.startswith("vk_") and rt.users.user_for_token(token).email == "cli@acme.test"
    assert cli(environ, "revoke", "cli@acme.test", "staging").returncode == 0
    assert rt.users.grants_for(["cli@acme.test"]) == []
    assert [e["action"] for e in audit_events(rt)] == ["user.add", "grant.add", "token.create", "grant.remove"]


@pytest.mark.parametrize("args, message", [
    (("grant", "a@acme.test", "nowhere", "viewer"), "unknown environment"),
    (("grant", "a@acme.test", "staging", "boss"), "unknown role"),
    (("grant", "a@acme.test", "*", "developer"), "per-environment role"),
    (("grant", "not-an-email", "staging", "viewer"), "not an e-mail"),
    (("token", "create", "ghost@acme.test"), "no user"),
    (("revoke", "a@acme.test", "staging"), "no matching grant"),
])
def test_cli_refusals_are_one_line(environ, args, message):
    r = cli(environ, *args)
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr


def test_cli_user_add_refuses_short_password_and_duplicates(environ):
    assert "at least 12" in cli(environ, "user", "add", "a@acme.test", "--password-stdin", input="short\n").stderr
    assert cli(environ, "user", "add", "a@acme.test").returncode == 0
    assert "already exists" in cli(environ, "user", "add", "a@acme.test").stderr
