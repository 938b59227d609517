"""SAML SSO: signed responses from a test IdP key, and every way a response must be refused."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from onelogin.saml2.constants import OneLogin_Saml2_Constants as C

from scope.settings import Settings
from tests import saml_idp as idp
from tests.conftest import audit_events
from wiring.runtime import Runtime

BASE = "http://localhost"


@pytest.fixture(scope="module")
def keys():
    return idp.make_keypair(), idp.make_keypair("evil.example")


def saml_folder(tmp_path: Path, cert: str) -> str:
    folder = tmp_path / "saml"
    (folder / "certs").mkdir(parents=True)
    s, adv = idp.settings(BASE, cert)
    (folder / "settings.json").write_text(json.dumps(s))
    (folder / "advanced_settings.json").write_text(json.dumps(adv))
    return str(folder)


@pytest.fixture
def sso(environ, tmp_path, keys):
    (key, cert), _ = keys
    env = {**environ, "VALETKEY_SAML_PATH": saml_folder(tmp_path, cert), "VALETKEY_BASE_URL": BASE}
    rt = Runtime.from_settings(Settings.from_env(env))
    from web import create_app

    app = create_app({"TESTING": True}, runtime=rt)
    yield app, rt
    rt.close()


def start_login(client, nxt: str = "/") -> str:
    r = client.get("/saml/login", query_string={"next": nxt})
    assert r.status_code == 302 and r.headers["Location"].startswith("https://idp.test.example/sso?")
    return idp.request_id(r.headers["Location"])


def post(client, xml: str, relay: str | None = None):
    data = {"SAMLResponse": idp.b64(xml)}
    if relay is not None:
        data["RelayState"] = relay
    return client.post("/saml/acs", data=data)


def good(keys, rid, email="sam@acme.test", groups=("platform",), **kw) -> str:
    (key, cert), _ = keys
    return idp.wrap(BASE, idp.sign(idp.assertion_xml(BASE, email, list(groups), in_response_to=rid, **kw),
                                   key, cert), rid)


def signed_in_as(client) -> str | None:
    r = client.get("/api/v1/me")
    return r.get_json()["email"] if r.status_code == 200 else None


def test_login_creates_user_maps_groups_and_redirects(sso, keys):
    app, rt = sso
    rt.users.grant("group:platform", "staging", "viewer", rt.catalog)
    c = app.test_client()
    rid = start_login(c, "/environments/staging")
    r = post(c, good(keys, rid))
    assert r.status_code == 302 and r.headers["Location"] == "/environments/staging"
    me = c.get("/api/v1/me").get_json()
    assert me["email"] == "sam@acme.test" and me["groups"] == ["platform"]
    assert {(g["environment"], g["role"], g["subject"]) for g in me["grants"]} == {
        ("staging", "viewer", "group:platform")}
    ok = [e for e in audit_events(rt) if e["action"] == "login"][-1]
    assert ok["outcome"] == "succeeded" and ok["actor"] == "sam@acme.test"


def test_group_membership_is_replaced_at_each_login(sso, keys):
    app, rt = sso
    rt.users.grant("group:platform", "staging", "viewer", rt.catalog)
    c = app.test_client()
    post(c, good(keys, start_login(c)))
    assert c.get("/api/v1/environments").get_json()["environments"]
    c2 = app.test_client()
    post(c2, good(keys, start_login(c2), groups=()))
    assert c2.get("/api/v1/environments").get_json()["environments"] == []


def refused(c, r, rt):
    assert r.status_code == 401, r.get_data(as_text=True)
    assert r.headers["Content-Type"].startswith("application/problem+json")
    assert signed_in_as(c) is None
    assert [e for e in audit_events(rt) if e["action"] == "login"][-1]["outcome"] == "denied"


def test_unsigned_is_refused(sso, keys):
    app, rt = sso
    c = app.test_client()
    rid = start_login(c)
    refused(c, post(c, idp.wrap(BASE, idp.assertion_xml(BASE, "sam@acme.test", [], in_response_to=rid), rid)), rt)


def test_foreign_key_is_refused(sso, keys):
    app, rt = sso
    _, (evil_key, evil_cert) = keys
    c = app.test_client()
    rid = start_login(c)
    xml = idp.wrap(BASE, idp.sign(idp.assertion_xml(BASE, "sam@acme.test", [], in_response_to=rid),
                                  evil_key, evil_cert), rid)
    refused(c, post(c, xml), rt)


def test_tampered_after_signing_is_refused(sso, keys):
    app, rt = sso
    c = app.test_client()
    rid = start_login(c)
    xml = good(keys, rid, email="sam@acme.test").replace("sam@acme.test", "boss@acme.test")
    refused(c, post(c, xml), rt)


def test_wrong_audience_is_refused(sso, keys):
    app, rt = sso
    c = app.test_client()
    rid = start_login(c)
    refused(c, post(c, good(keys, rid, audience="https://other.example/saml/metadata")), rt)


def test_expired_is_refused(sso, keys):
    app, rt = sso
    c = app.test_client()
    rid = start_login(c)
    refused(c, post(c, good(keys, rid, offset=-dt.timedelta(hours=1))), rt)


def test_unsolicited_is_refused(sso, keys):
    app, rt = sso
    c = app.test_client()
    refused(c, post(c, good(keys, None)), rt)


def test_response_without_in_response_to_after_a_login_is_refused(sso, keys):
    app, rt = sso
    c = app.test_client()
    start_login(c)
    refused(c, post(c, good(keys, None)), rt)


def test_other_requests_in_response_to_is_refused(sso, keys):
    app, rt = sso
    other = app.test_client()
    other_rid = start_login(other)
    c = app.test_client()
    start_login(c)
    refused(c, post(c, good(keys, other_rid)), rt)


def test_replay_is_refused(sso, keys):
    app, rt = sso
    c = app.test_client()
    rid = start_login(c)
    xml = good(keys, rid, assertion_id="_fixed-assertion-id")
    assert post(c, xml).status_code == 302
    thief = app.test_client()
    start_login(thief)
    # Even with a fresh login of its own, the same assertion does not work twice.
    with thief.session_transaction() as s:
        s["saml_request_id"] = rid
    refused(thief, post(thief, xml), rt)


def test_sha1_signature_is_refused(sso, keys):
    app, rt = sso
    (key, cert), _ = keys
    c = app.test_client()
    rid = start_login(c)
    xml = idp.wrap(BASE, idp.sign(idp.assertion_xml(BASE, "sam@acme.test", [], in_response_to=rid), key, cert,
                                  algorithm=C.RSA_SHA1, digest=C.SHA1), rid)
    refused(c, post(c, xml), rt)


def test_comment_in_name_id_is_refused(sso, keys):
    app, rt = sso
    (key, cert), _ = keys
    c = app.test_client()
    rid = start_login(c)
    signed = idp.sign(idp.assertion_xml(BASE, "boss@acme.test.evil.example", [], in_response_to=rid), key, cert)
    # Exclusive c14n drops comments, so the signature still holds after this edit;
    # a naive text read of the NameID would now stop at "boss@acme.test".
    forged = signed.replace(">boss@acme.test.evil.example</saml:NameID>", ">boss@acme.test<!---->.evil.example</saml:NameID>")
    assert forged != signed
    refused(c, post(c, idp.wrap(BASE, forged, rid)), rt)


def test_doctype_and_entities_are_refused(sso, keys):
    app, rt = sso
    c = app.test_client()
    rid = start_login(c)
    prolog = '<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd"><!ENTITY y "&x;&x;&x;">]>'
    refused(c, post(c, idp.wrap(BASE, good(keys, rid).replace("sam@acme.test", "&y;"), rid, prolog)), rt)


def test_other_signature_transforms_are_refused(sso, keys):
    app, rt = sso
    c = app.test_client()
    rid = start_login(c)
    xml = good(keys, rid).replace("http://www.w3.org/2001/10/xml-exc-c14n#",
                                  "http://www.w3.org/2006/12/xml-c14n11#WithComments", 1)
    refused(c, post(c, xml), rt)


@pytest.mark.parametrize("size", [400_000, 300_000])  # over the body limit; within it, but the XML is too large
def test_oversized_body_is_413_and_audited(sso, keys, size):
    app, rt = sso
    c = app.test_client()
    rid = start_login(c)
    padding = "<!-- " + "x" * size + " -->"
    r = post(c, good(keys, rid) + padding)
    assert r.status_code == 413 and r.headers["Content-Type"].startswith("application/problem+json")
    assert signed_in_as(c) is None
    last = [e for e in audit_events(rt) if e["action"] == "login"][-1]
    assert last["outcome"] == "denied" and "too large" in last["detail"]


# ---- who signs in: the NameID decides ---------------------------------------------------------
def test_email_attribute_does_not_override_an_email_name_id(sso, keys):
    app, rt = sso
    rt.users.add_user("root@acme.test", "Root", "a long enough password")
    rt.users.grant("root@acme.test", "*", "admin", rt.catalog)
    c = app.test_client()
    rid = start_login(c)
    # The IdP vouches for mallory (the NameID); the editable e-mail attribute claims to be the admin.
    r = post(c, good(keys, rid, email="root@acme.test", name_id="mallory@acme.test"))
    assert r.status_code == 302 and signed_in_as(c) == "mallory@acme.test"
    assert c.get("/api/v1/environments").get_json()["environments"] == []


def test_email_attribute_counts_when_the_name_id_is_not_an_email(sso, keys):
    app, _ = sso
    c = app.test_client()
    rid = start_login(c)
    r = post(c, good(keys, rid, email="sam@acme.test", name_id="00u1ab2cd3EfGh4ij5k6",
                     name_id_format=C.NAMEID_PERSISTENT))
    assert r.status_code == 302 and signed_in_as(c) == "sam@acme.test"


def test_no_email_anywhere_is_refused(sso, keys):
    app, rt = sso
    c = app.test_client()
    rid = start_login(c)
    r = post(c, good(keys, rid, email="not-an-address", name_id="00u1ab2cd3", name_id_format=C.NAMEID_PERSISTENT))
    refused(c, r, rt)


@pytest.mark.parametrize("name_id, attribute, expected", [
    ("a@x.example", ["b@x.example"], "a@x.example"),
    ("opaque-id", ["b@x.example"], "b@x.example"),
    ("opaque-id", [], None),
    ("", ["b@x.example"], "b@x.example"),
    ("a@", ["b@x.example"], "b@x.example"),
    ("opaque", ["no address"], None),
])
def test_login_email_rule(name_id, attribute, expected):
    from web.saml import login_email

    assert login_email(name_id, attribute) == expected


# ---- single logout: no logout CSRF ----------------------------------------------------------------
def signed_in_client(app, keys):
    c = app.test_client()
    post(c, good(keys, start_login(c)))
    assert signed_in_as(c) == "sam@acme.test"
    return c


@pytest.mark.parametrize("query", [{}, {"foo": "bar"}, {"SAMLRequest": "garbage"}])
def test_sls_without_a_signed_message_does_not_end_the_session(sso, keys, query):
    app, _ = sso
    c = signed_in_client(app, keys)
    r = c.get("/saml/sls", query_string=query)
    assert r.status_code == 400
    assert signed_in_as(c) == "sam@acme.test"


def test_sls_with_an_unsigned_or_foreign_signed_request_does_not_end_the_session(sso, keys):
    app, _ = sso
    (key, _), (evil_key, _) = keys
    c = signed_in_client(app, keys)
    assert c.get("/saml/sls", query_string=idp.logout_query(BASE, key, "sam@acme.test", signed=False)).status_code == 400
    assert c.get("/saml/sls", query_string=idp.logout_query(BASE, evil_key, "sam@acme.test")).status_code == 400
    other = idp.logout_query(BASE, key, "sam@acme.test", destination="https://other.example/saml/sls")
    assert c.get("/saml/sls", query_string=other).status_code == 400
    assert signed_in_as(c) == "sam@acme.test"


def test_sls_with_the_idps_signed_logout_request_ends_the_session(sso, keys):
    app, _ = sso
    (key, _), _ = keys
    c = signed_in_client(app, keys)
    r = c.get("/saml/sls", query_string=idp.logout_query(BASE, key, "sam@acme.test"))
    assert r.status_code == 302 and r.headers["Location"].startswith("https://idp.test.example/slo?SAMLResponse=")
    assert signed_in_as(c) is None


def test_sls_with_the_idps_signed_logout_response_ends_the_session(sso, keys):
    app, _ = sso
    (key, _), _ = keys
    c = signed_in_client(app, keys)
    r = c.get("/saml/sls", query_string=idp.logout_query(BASE, key, "", kind="SAMLResponse"))
    assert r.status_code == 302 and r.headers["Location"] == "/login"
    assert signed_in_as(c) is None


def test_sls_post_needs_the_csrf_token(sso, keys):
    app, _ = sso
    c = signed_in_client(app, keys)
    assert c.post("/saml/sls").status_code == 400
    assert signed_in_as(c) == "sam@acme.test"
    page = c.get("/").get_data(as_text=True)
    token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    assert c.post("/saml/sls", data={"csrf_token": token}).status_code == 302
    assert signed_in_as(c) is None


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example",
                                    "javascript:alert(1)"])
def test_next_and_relay_state_never_leave_the_site(sso, keys, target):
    app, _ = sso
    c = app.test_client()
    rid = start_login(c, target)
    r = post(c, good(keys, rid), relay=target)
    assert r.status_code == 302 and r.headers["Location"] == "/"


def test_session_is_rotated_and_logout_ends_it_server_side(sso, keys):
    app, _ = sso
    c = app.test_client()
    c.get("/login")
    before = c.get_cookie("session").value
    post(c, good(keys, start_login(c)))
    cookie = c.get_cookie("session").value
    assert cookie != before and signed_in_as(c) == "sam@acme.test"
    # Log out through the form (CSRF token from the page), then replay the old cookie.
    page = c.get("/").get_data(as_text=True)
    token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    assert c.post("/logout", data={"csrf_token": token}).status_code == 302
    replay = app.test_client()
    replay.set_cookie("session", cookie)
    assert signed_in_as(replay) is None


def test_metadata_names_base_url(sso):
    app, _ = sso
    r = app.test_client().get("/saml/metadata", headers={"Host": "attacker.example",
                                                         "X-Forwarded-Host": "attacker.example"})
    assert r.status_code == 200
    text = r.get_data(as_text=True)
    assert f'entityID="{BASE}/saml/metadata"' in text and f"{BASE}/saml/acs" in text
    assert "attacker.example" not in text


def test_local_login_can_be_switched_off(environ, tmp_path, keys):
    (key, cert), _ = keys
    env = {**environ, "VALETKEY_SAML_PATH": saml_folder(tmp_path, cert), "VALETKEY_LOCAL_LOGIN": "false"}
    rt = Runtime.from_settings(Settings.from_env(env))
    from web import create_app

    app = create_app({"TESTING": True, "WTF_CSRF_ENABLED": False}, runtime=rt)
    c = app.test_client()
    page = c.get("/login").get_data(as_text=True)
    assert "single sign-on" in page and 'name="password"' not in page
    rt.users.add_user("adm@acme.test", "A", "a long enough password")
    assert c.post("/login", data={"email": "adm@acme.test", "password": "a long enough password"}).status_code == 404
    rt.close()


def test_a_disabled_account_cannot_sign_in_by_sso(sso, keys):
    app, rt = sso
    c = app.test_client()
    post(c, good(keys, start_login(c)))  # first sign-in creates sam
    rt.users.set_disabled("sam@acme.test")
    c2 = app.test_client()
    r = post(c2, good(keys, start_login(c2)))
    assert r.status_code == 403 and r.headers["Content-Type"].startswith("application/problem+json")
    assert signed_in_as(c2) is None
    last = [e for e in audit_events(rt) if e["action"] == "login"][-1]
    assert last["outcome"] == "denied" and last["actor"] == "sam@acme.test" and "disabled" in last["detail"]
