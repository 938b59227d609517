"""POST /hooks/redeploy: HMAC and GitHub Actions OIDC callers, every refusal, replay and delivery idempotency.

OIDC tokens are signed with RSA keys generated here and served from a local
JWKS endpoint (a tiny http.server in a thread), so the real PyJWKClient path
runs, including its caching and our once-a-minute refresh on an unknown kid.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask_login import user_loaded_from_request
from jwt.algorithms import RSAAlgorithm
from sqlalchemy import func, select

from jobs.kinds import FAILED
from scope.errors import ConfigError, Conflict, Unauthorized
from scope.models import Job
from scope.settings import GITHUB_OIDC_ISSUER, Settings
from tests.conftest import BASE_TOML, audit_events, free_port, seed_cluster
from web.webhook_service import DeliveryLedger, JwksKeys, OidcVerifier
from wiring.runtime import Runtime

AUDIENCE = "https://valetkey.test"
SECRETS = {"STAGING_WEBHOOK_SECRET": "whsec-staging", "OFF_WEBHOOK_SECRET": "whsec-off",
           "PROD_WEBHOOK_SECRET": "whsec-prod", "STAMPED_WEBHOOK_SECRET": "whsec-stamped"}
HOOK_TOML = """
[environments.staging]
region = "us-east-1"
cluster = "stg"
webhook_secret_env = "STAGING_WEBHOOK_SECRET"

[environments.staging.github]
repository = "acme/orders-api"
ref = "refs/heads/main"

[environments.ci]
region = "us-east-1"
cluster = "ci"

[environments.ci.github]
repository_owner_id = 4242
environment = "ci"
job_workflow_ref = "acme/workflows/.github/workflows/deploy.yml@refs/heads/main"

[environments.qa]
region = "us-east-1"
cluster = "qa"

[environments.unset]
region = "us-east-1"
cluster = "unset"
webhook_secret_env = "UNSET_WEBHOOK_SECRET"

[environments.off]
region = "us-east-1"
cluster = "off"
enabled = false
webhook_secret_env = "OFF_WEBHOOK_SECRET"

[environments.prod]
class = "prod"
region = "us-east-1"
cluster = "prod"
webhook_secret_env = "PROD_WEBHOOK_SECRET"

[environments.prod.github]
repository = "acme/orders-api"

[environments.stamped]
region = "us-east-1"
cluster = "stg"
webhook_secret_env = "STAMPED_WEBHOOK_SECRET"
webhook_require_timestamp = true
"""


# ---- a local JWKS endpoint ----------------------------------------------------------
def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Jwks:
    """Keys k1 (served), k2 (served only after a rotation); counts fetches."""

    def __init__(self) -> None:
        self.private = {"k1": _rsa(), "k2": _rsa()}
        self.served = ["k1"]
        self.hits = 0
        self.url = ""

    def document(self) -> dict[str, Any]:
        keys = []
        for kid in self.served:
            jwk = RSAAlgorithm.to_jwk(self.private[kid].public_key(), as_dict=True)
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": keys}


@pytest.fixture(scope="module")
def jwks_server() -> Iterator[Jwks]:
    state = Jwks()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            state.hits += 1
            body = json.dumps(state.document()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield state
    server.shutdown()


@pytest.fixture
def jwks(jwks_server: Jwks) -> Jwks:
    jwks_server.served, jwks_server.hits = ["k1"], 0
    return jwks_server


# ---- app with the webhook configuration -----------------------------------------------
@pytest.fixture
def hrt(environ: dict[str, str], config_file: Callable[[str], str], jwks: Jwks, aws: str) -> Iterator[Runtime]:
    env = {k: v for k, v in environ.items() if k != "STAGING_CACHE_REDIS_URL"}
    env.update(SECRETS)
    env.update({"VALETKEY_ENVIRONMENTS": config_file(HOOK_TOML), "VALETKEY_OIDC_JWKS_URL": jwks.url,
                "VALETKEY_OIDC_AUDIENCE": AUDIENCE})
    seed_cluster("stg", ["orders-api", "payments-api"], running=0)
    seed_cluster("ci", ["orders-api"], running=0)
    runtime = Runtime.from_settings(Settings.from_env(env))
    yield runtime
    runtime.close()


@pytest.fixture
def happ(hrt: Runtime) -> Any:
    from web import create_app

    return create_app({"TESTING": True}, runtime=hrt)


@pytest.fixture
def hc(happ: Any) -> Any:
    return happ.test_client()


def body_of(environment: str = "staging", service: str = "orders-api") -> bytes:
    return json.dumps({"environment": environment, "service": service}).encode()


def sign(body: bytes, secret: str = SECRETS["STAGING_WEBHOOK_SECRET"]) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post(client: Any, body: bytes, headers: dict[str, str]) -> Any:
    return client.post("/hooks/redeploy", data=body, headers={"Content-Type": "application/json", **headers})


def post_hmac(client: Any, body: bytes | None = None, secret: str = SECRETS["STAGING_WEBHOOK_SECRET"],
              delivery: str | None = None) -> Any:
    body = body_of() if body is None else body
    headers = {"X-Hub-Signature-256": sign(body, secret)}
    if delivery:
        headers["X-GitHub-Delivery"] = delivery
    return post(client, body, headers)


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    c = {"iss": GITHUB_OIDC_ISSUER, "aud": AUDIENCE, "iat": now, "nbf": now - 5, "exp": now + 300,
         "jti": uuid.uuid4().hex, "sub": "repo:acme/orders-api:ref:refs/heads/main",
         "repository": "acme/orders-api", "repository_owner": "acme", "repository_owner_id": "4242",
         "ref": "refs/heads/main", "workflow": "deploy", "run_id": "987", "sha": "a3f2b1c0ffee",
         "job_workflow_ref": "acme/orders-api/.github/workflows/deploy.yml@refs/heads/main"}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def mint(jw: Jwks, kid: str = "k1", **over: Any) -> str:
    return jwt.encode(claims(**over), jw.private[kid], algorithm="RS256", headers={"kid": kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(alg: str, key: bytes, **over: Any) -> str:
    """A token with the given alg built by hand (PyJWT refuses to make these, rightly)."""
    head = _b64(json.dumps({"alg": alg, "typ": "JWT", "kid": "k1"}).encode())
    payload = _b64(json.dumps(claims(**over)).encode())
    signing_input = f"{head}.{payload}".encode()
    sig = _b64(hmac.new(key, signing_input, hashlib.sha256).digest()) if alg == "HS256" else ""
    return f"{head}.{payload}.{sig}"


def post_oidc(client: Any, token: str, body: bytes | None = None, delivery: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    if delivery:
        headers["X-GitHub-Delivery"] = delivery
    return post(client, body_of() if body is None else body, headers)


def jobs_in_db(rt: Runtime) -> int:
    with rt.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(Job)) or 0)


def enqueued(rt: Runtime) -> int:
    return int(rt.redis.hlen("dramatiq:valetkey.msgs"))


def denied(rt: Runtime) -> list[dict[str, Any]]:
    return [e for e in audit_events(rt) if e["outcome"] == "denied"]


def assert_refused(rt: Runtime, r: Any, status: int, actor: str = "webhook:unauthenticated") -> dict[str, Any]:
    assert r.status_code == status, r.json
    assert r.mimetype == "application/problem+json"
    assert jobs_in_db(rt) == 0 and enqueued(rt) == 0
    events = denied(rt)
    assert len(events) == 1, events
    ev = events[0]
    assert (ev["actor"], ev["source"], ev["action"]) == (actor, "webhook", "service.redeploy")
    return ev


# ---- HMAC ---------------------------------------------------------------------------------
def test_hmac_signed_redeploy_starts_one_job(hc: Any, hrt: Runtime) -> None:
    r = post_hmac(hc, delivery="run-1-1")
    assert r.status_code == 202, r.json
    job = r.json
    assert (job["action"], job["environment"], job["target"], job["status"]) == \
        ("service.redeploy", "staging", "orders-api", "queued")
    assert (job["actor"], job["source"]) == ("webhook:staging", "webhook")
    assert r.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    assert "Set-Cookie" not in r.headers  # no session for a CI caller
    assert jobs_in_db(hrt) == 1 and enqueued(hrt) == 1
    requested = [e for e in audit_events(hrt) if e["outcome"] == "requested"]
    assert len(requested) == 1
    ev = requested[0]
    assert (ev["actor"], ev["source"], ev["environment"], ev["target"], ev["job_id"]) == \
        ("webhook:staging", "webhook", "staging", "orders-api", job["id"])
    assert "run-1-1" in ev["detail"]
    assert SECRETS["STAGING_WEBHOOK_SECRET"] not in json.dumps(audit_events(hrt)) + r.get_data(as_text=True)
    with hrt.sessions() as s:
        row = s.get(Job, job["id"])
        assert row is not None and row.params["requested_task_definition"].startswith("stg-orders-api:")


def test_wrong_secret_is_refused(hc: Any, hrt: Runtime) -> None:
    ev = assert_refused(hrt, post_hmac(hc, secret="not-the-secret"), 401)
    assert "signature" in ev["detail"]


def test_signature_of_another_body_is_refused(hc: Any, hrt: Runtime) -> None:
    r = post(hc, body_of(service="payments-api"), {"X-Hub-Signature-256": sign(body_of())})
    assert_refused(hrt, r, 401)


def test_sha1_signature_alone_is_refused(hc: Any, hrt: Runtime) -> None:
    body = body_of()
    sha1 = "sha1=" + hmac.new(SECRETS["STAGING_WEBHOOK_SECRET"].encode(), body, hashlib.sha1).hexdigest()
    r = post(hc, body, {"X-Hub-Signature": sha1})
    assert_refused(hrt, r, 401)
    assert "X-Hub-Signature-256" in r.json["detail"]


@pytest.mark.parametrize("header", [
    "sha256=" + "0" * 63,
    "sha256=" + "z" * 64,
    "sha1=" + "0" * 64,
    "0" * 64,
    "sha256 " + "0" * 64,
    "",
])
def test_malformed_signature_header_is_refused(hc: Any, hrt: Runtime, header: str) -> None:
    r = post(hc, body_of(), {"X-Hub-Signature-256": header})
    assert_refused(hrt, r, 401)


def test_valid_digest_with_wrong_prefix_is_refused(hc: Any, hrt: Runtime) -> None:
    body = body_of()
    r = post(hc, body, {"X-Hub-Signature-256": sign(body).replace("sha256=", "sha512=")})
    assert_refused(hrt, r, 401)


def test_missing_authentication_is_refused(hc: Any, hrt: Runtime) -> None:
    r = post(hc, body_of(), {"X-GitHub-Delivery": "x-1"})
    assert_refused(hrt, r, 401)
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_both_signature_and_token_is_refused(hc: Any, hrt: Runtime, jwks: Jwks) -> None:
    body = body_of()
    r = post(hc, body, {"X-Hub-Signature-256": sign(body), "Authorization": f"Bearer {mint(jwks)}"})
    assert_refused(hrt, r, 401)


def test_environment_without_secret_or_rules_is_refused(hc: Any, hrt: Runtime) -> None:
    # qa has neither a secret nor [github] rules: no signature can open it.
    assert_refused(hrt, post_hmac(hc, body_of("qa"), secret="anything"), 401)


def test_environment_with_unset_secret_variable_accepts_no_signature(hc: Any, hrt: Runtime) -> None:
    # UNSET_WEBHOOK_SECRET is not in the environment: an empty key must not verify.
    assert_refused(hrt, post_hmac(hc, body_of("unset"), secret=""), 401)


def test_body_environment_must_be_the_signed_one(hc: Any, hrt: Runtime) -> None:
    ev = assert_refused(hrt, post_hmac(hc, body_of("qa")), 401, actor="webhook:staging")
    assert ev["environment"] == "qa" and "not valid for environment" in ev["detail"]


def test_staging_secret_cannot_open_another_signed_environment(hc: Any, hrt: Runtime) -> None:
    assert_refused(hrt, post_hmac(hc, body_of("off")), 401, actor="webhook:staging")


@pytest.mark.parametrize("raw,field", [
    (b"{not json", "body"),
    (b"[1, 2]", "body"),
    (b"\xff\xfe", "body"),
    (json.dumps({"environment": "staging"}).encode(), "service"),
    (json.dumps({"service": "orders-api"}).encode(), "environment"),
    (json.dumps({"environment": "staging", "service": "a b"}).encode(), "service"),
    (json.dumps({"environment": "staging", "service": 7}).encode(), "service"),
    (json.dumps({"environment": "staging", "service": "orders-api", "force": True}).encode(), "force"),
])
def test_invalid_body_after_a_valid_signature_is_400_naming_the_field(hc: Any, hrt: Runtime, raw: bytes,
                                                                       field: str) -> None:
    r = post_hmac(hc, raw)
    ev = assert_refused(hrt, r, 400, actor="webhook:staging")
    assert field in r.json["errors"]
    assert field in ev["detail"]


def test_unknown_service_is_404_and_audited(hc: Any, hrt: Runtime) -> None:
    r = post_hmac(hc, body_of(service="ghost-api"), delivery="d-404")
    ev = assert_refused(hrt, r, 404, actor="webhook:staging")
    assert (ev["environment"], ev["target"]) == ("staging", "ghost-api")


def test_disabled_environment_is_403_and_audited(hc: Any, hrt: Runtime) -> None:
    r = post_hmac(hc, body_of("off"), secret=SECRETS["OFF_WEBHOOK_SECRET"])
    ev = assert_refused(hrt, r, 403, actor="webhook:off")
    assert ev["environment"] == "off"


def test_prod_environment_is_403_and_audited(hc: Any, hrt: Runtime) -> None:
    r = post_hmac(hc, body_of("prod"), secret=SECRETS["PROD_WEBHOOK_SECRET"])
    assert_refused(hrt, r, 403, actor="webhook:prod")


def test_invalid_delivery_id_is_400(hc: Any, hrt: Runtime) -> None:
    r = post_hmac(hc, delivery="has spaces and ünïcode")
    assert_refused(hrt, r, 400, actor="webhook:staging")
    assert "X-GitHub-Delivery" in r.json["errors"]


# ---- delivery idempotency and conflicts -------------------------------------------------------
def test_same_delivery_twice_answers_with_the_same_job(hc: Any, hrt: Runtime) -> None:
    first = post_hmac(hc, delivery="123-1")
    second = post_hmac(hc, delivery="123-1")
    assert first.status_code == second.status_code == 202
    assert second.json["id"] == first.json["id"]
    assert second.headers["X-Valetkey-Repeated-Delivery"] == "true"
    assert jobs_in_db(hrt) == 1 and enqueued(hrt) == 1
    assert len([e for e in audit_events(hrt) if e["outcome"] == "requested"]) == 1


def test_same_delivery_for_another_service_is_its_own_job(hc: Any, hrt: Runtime) -> None:
    a = post_hmac(hc, body_of(service="orders-api"), delivery="123-1")
    b = post_hmac(hc, body_of(service="payments-api"), delivery="123-1")
    assert a.status_code == b.status_code == 202
    assert a.json["id"] != b.json["id"] and jobs_in_db(hrt) == 2


def test_second_redeploy_while_one_runs_is_409(hc: Any, hrt: Runtime) -> None:
    first = post_hmac(hc, delivery="run-a")
    second = post_hmac(hc, delivery="run-b")
    assert first.status_code == 202
    assert second.status_code == 409
    assert first.json["id"] in second.json["detail"]
    assert jobs_in_db(hrt) == 1


def test_refused_delivery_can_be_redelivered_later(hc: Any, hrt: Runtime) -> None:
    first = post_hmac(hc, delivery="run-a")
    assert post_hmac(hc, delivery="run-b").status_code == 409
    hrt.jobs.finish(first.json["id"], FAILED, "done for the test")
    again = post_hmac(hc, delivery="run-b")  # GitHub's "Redeliver" reuses the id
    assert again.status_code == 202 and again.json["id"] != first.json["id"]


def test_delivery_ledger_refuses_a_concurrent_duplicate(hrt: Runtime) -> None:
    ledger = DeliveryLedger(hrt.redis)
    key = ledger.delivery_key("staging", "orders-api", "d-1")
    job_id, marker = ledger.claim(key)
    assert job_id is None and marker
    with pytest.raises(Conflict):
        ledger.claim(key)  # the first request has not finished
    ledger.record(key, "job-1")
    assert ledger.claim(key) == ("job-1", "")
    ledger.release(key, marker)  # a stale marker must not delete the recorded job
    assert ledger.claim(key) == ("job-1", "")
    assert 0 < hrt.redis.ttl(key) <= 24 * 3600


def test_concurrent_duplicate_delivery_409_is_audited(hc: Any, hrt: Runtime) -> None:
    ledger = DeliveryLedger(hrt.redis)
    ledger.claim(ledger.delivery_key("staging", "orders-api", "d-busy"))  # another request is on it
    r = post_hmac(hc, delivery="d-busy")
    ev = assert_refused(hrt, r, 409, actor="webhook:staging")
    assert (ev["environment"], ev["target"]) == ("staging", "orders-api") and "being processed" in ev["detail"]


def test_oversized_body_is_413_and_audited(hc: Any, hrt: Runtime) -> None:
    body = json.dumps({"environment": "staging", "service": "orders-api", "pad": "x" * 70_000}).encode()
    r = post_hmac(hc, body)
    ev = assert_refused(hrt, r, 413)
    assert "65536 bytes" in r.json["detail"] and "65536 bytes" in ev["detail"]


# ---- signed timestamps (webhook_require_timestamp) ---------------------------------------------
def stamped(timestamp: Any = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"environment": "stamped", "service": "orders-api", **extra}
    if timestamp is not None:
        body["timestamp"] = timestamp
    return json.dumps(body).encode()


def post_stamped(client: Any, body: bytes, delivery: str | None = None) -> Any:
    return post_hmac(client, body, secret=SECRETS["STAMPED_WEBHOOK_SECRET"], delivery=delivery)


def test_fresh_signed_timestamp_is_accepted(hc: Any, hrt: Runtime) -> None:
    for offset in (-290, 0, 55):
        r = post_stamped(hc, stamped(int(time.time()) + offset), delivery=f"d{offset}")
        assert r.status_code == 202, r.json
        hrt.jobs.finish(r.json["id"], FAILED, "done for the test")


@pytest.mark.parametrize("offset, reason", [(None, "requires a signed 'timestamp'"), (-301, "minutes old"),
                                            (-86400, "minutes old"), (61, "in the future"), (3600, "in the future")])
def test_missing_stale_or_future_timestamp_is_401_and_audited(hc: Any, hrt: Runtime, offset: int | None,
                                                              reason: str) -> None:
    r = post_stamped(hc, stamped(None if offset is None else int(time.time()) + offset), delivery="d-1")
    ev = assert_refused(hrt, r, 401, actor="webhook:stamped")
    assert reason in r.json["detail"] and reason in ev["detail"] and ev["environment"] == "stamped"


def test_a_captured_body_replayed_later_with_a_new_delivery_id_is_refused(hc: Any, hrt: Runtime) -> None:
    body = stamped(int(time.time()) - 600)  # signed ten minutes ago, e.g. read from a CI log
    assert post_stamped(hc, body, delivery="replay-2").status_code == 401
    assert jobs_in_db(hrt) == 0


@pytest.mark.parametrize("value", ["1700000000", 1.5, True, [1]])
def test_timestamp_of_the_wrong_type_is_400_naming_it(hc: Any, hrt: Runtime, value: Any) -> None:
    r = post_stamped(hc, stamped(value))
    assert_refused(hrt, r, 400, actor="webhook:stamped")
    assert list(r.json["errors"]) == ["timestamp"]


def test_environments_without_the_option_ignore_the_timestamp(hc: Any, hrt: Runtime) -> None:
    assert post_hmac(hc).status_code == 202  # none at all
    body = json.dumps({"environment": "staging", "service": "payments-api", "timestamp": 1}).encode()
    assert post_hmac(hc, body).status_code == 202


def test_webhook_require_timestamp_must_be_a_boolean(config_file: Callable[[str], str]) -> None:
    from scope.catalog import load_catalog

    path = config_file('[environments.s]\ncluster = "s"\nwebhook_require_timestamp = "yes"\n')
    with pytest.raises(ConfigError) as e:
        load_catalog(path, {})
    assert "webhook_require_timestamp" in str(e.value) and "true or false" in str(e.value)


# ---- OIDC ---------------------------------------------------------------------------------------
def test_oidc_token_redeploys_with_the_repository_as_actor(hc: Any, hrt: Runtime, jwks: Jwks) -> None:
    r = post_oidc(hc, mint(jwks), delivery="987-1")
    assert r.status_code == 202, r.json
    assert (r.json["actor"], r.json["source"]) == ("github:acme/orders-api@refs/heads/main", "webhook")
    assert "Set-Cookie" not in r.headers
    ev = next(e for e in audit_events(hrt) if e["outcome"] == "requested")
    assert (ev["actor"], ev["source"]) == ("github:acme/orders-api@refs/heads/main", "webhook")
    assert "run 987" in ev["detail"] and "sha a3f2b1c" in ev["detail"]


def test_oidc_token_is_never_taken_for_an_api_token(hc: Any, hrt: Runtime, jwks: Jwks) -> None:
    seen: list[Any] = []

    def loaded(sender: Any, user: Any = None, **kw: Any) -> None:
        seen.append(user)

    # A real, valid API token of an admin: had the view consulted Flask-Login,
    # it would have loaded this user. It is not a webhook credential.
    hrt.users.add_user("adam@acme.test", "Adam", "a long enough test password")
    hrt.users.grant("adam@acme.test", "*", "admin", hrt.catalog)
    _, api_token = hrt.users.create_token("adam@acme.test", "t")
    with user_loaded_from_request.connected_to(loaded):
        r = post_oidc(hc, api_token)
        ok = post_oidc(hc, mint(jwks))
    assert ok.status_code == 202
    assert r.status_code == 401 and "API token" not in r.json["detail"]
    assert seen == []
    assert jobs_in_db(hrt) == 1


def test_claim_rules_with_owner_id_environment_and_workflow(hc: Any, hrt: Runtime, jwks: Jwks) -> None:
    token = mint(jwks, environment="ci",
                 job_workflow_ref="acme/workflows/.github/workflows/deploy.yml@refs/heads/main")
    r = post_oidc(hc, token, body_of("ci"))
    assert r.status_code == 202, r.json  # "4242" in the token matches 4242 in the TOML
    assert r.json["environment"] == "ci"


@pytest.mark.parametrize("over", [
    {"iss": "https://evil.example"},
    {"aud": "https://someone-else.example"},
    {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 4000, "nbf": int(time.time()) - 4000},
    {"nbf": int(time.time()) + 3600},
    {"exp": None},
    {"iat": None},
    {"nbf": None},
    {"jti": None},
], ids=["wrong-iss", "wrong-aud", "expired", "nbf-future", "no-exp", "no-iat", "no-nbf", "no-jti"])
def test_invalid_oidc_claims_are_refused(hc: Any, hrt: Runtime, jwks: Jwks, over: dict[str, Any]) -> None:
    assert_refused(hrt, post_oidc(hc, mint(jwks, **over)), 401)


def test_hs256_token_signed_with_the_public_key_is_refused(hc: Any, hrt: Runtime, jwks: Jwks) -> None:
    pem = jwks.private["k1"].public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    r = post_oidc(hc, forge("HS256", pem))
    assert_refused(hrt, r, 401)
    assert "RS256" in r.json["detail"]
    assert jwks.hits == 0  # refused before any key lookup


def test_unsigned_token_is_refused(hc: Any, hrt: Runtime, jwks: Jwks) -> None:
    assert_refused(hrt, post_oidc(hc, forge("none", b"")), 401)
    assert jwks.hits == 0


def test_token_signed_by_an_unpublished_key_is_refused(hc: Any, hrt: Runtime, jwks: Jwks) -> None:
    # Claims k1 but is signed with k2's private key.
    token = jwt.encode(claims(), jwks.private["k2"], algorithm="RS256", headers={"kid": "k1"})
    assert_refused(hrt, post_oidc(hc, token), 401)


def test_unknown_kid_triggers_one_refresh(hc: Any, hrt: Runtime, jwks: Jwks) -> None:
    assert post_oidc(hc, mint(jwks)).status_code == 202
    assert jwks.hits == 1
    r = post_oidc(hc, mint(jwks, kid="k2"), body_of(service="payments-api"))
    assert r.status_code == 401 and "unknown key" in r.json["detail"]
    assert jwks.hits == 2  # one refresh on the miss
    r = post_oidc(hc, mint(jwks, kid="k2"), body_of(service="payments-api"))
    assert r.status_code == 401
    assert jwks.hits == 2  # ... and not another within the minute


def test_key_rotation_is_picked_up_after_the_refresh_interval(jwks: Jwks) -> None:
    now = [1000.0]
    keys = JwksKeys(jwt.PyJWKClient(jwks.url), min_refresh_interval=60, clock=lambda: now[0])
    assert keys.key_for("k1").key_id == "k1"
    with pytest.raises(Unauthorized):
        keys.key_for("k2")
    assert jwks.hits == 2
    jwks.served = ["k1", "k2"]  # GitHub rotates its keys
    now[0] += 30
    with pytest.raises(Unauthorized):
        keys.key_for("k2")  # too soon for another refresh
    assert jwks.hits == 2
    now[0] += 31
    assert keys.key_for("k2").key_id == "k2"
    assert jwks.hits == 3
    assert keys.key_for("k2").key_id == "k2" and jwks.hits == 3  # cached now


def test_replayed_token_is_refused(hc: Any, hrt: Runtime, jwks: Jwks) -> None:
    token = mint(jwks)
    assert post_oidc(hc, token, delivery="run-1").status_code == 202
    r = post_oidc(hc, token, body_of(service="payments-api"), delivery="run-2")
    assert r.status_code == 401 and "already used" in r.json["detail"]
    assert jobs_in_db(hrt) == 1
    assert denied(hrt)[-1]["actor"] == "github:acme/orders-api@refs/heads/main"
    assert post_oidc(hc, token, body_of(service="payments-api")).status_code == 401  # no delivery id either


def test_replayed_token_without_delivery_is_refused(hc: Any, hrt: Runtime, jwks: Jwks) -> None:
    token = mint(jwks)
    assert post_oidc(hc, token, body_of(service="payments-api")).status_code == 202
    assert post_oidc(hc, token, body_of(service="orders-api")).status_code == 401
    assert jobs_in_db(hrt) == 1


def test_retry_of_the_same_delivery_with_the_same_token_gets_the_same_job(hc: Any, hrt: Runtime,
                                                                        jwks: Jwks) -> None:
    token = mint(jwks)
    first = post_oidc(hc, token, delivery="run-7")
    again = post_oidc(hc, token, delivery="run-7")  # curl --retry after a lost response
    assert first.status_code == again.status_code == 202
    assert again.json["id"] == first.json["id"] and jobs_in_db(hrt) == 1


def test_jti_is_remembered_until_the_token_expires(hc: Any, hrt: Runtime, jwks: Jwks) -> None:
    jti = "jti-ttl-check"
    assert post_oidc(hc, mint(jwks, jti=jti, exp=int(time.time()) + 120)).status_code == 202
    key = f"valetkey:hooks:jti:{hashlib.sha256(jti.encode()).hexdigest()[:40]}"
    assert 120 <= hrt.redis.ttl(key) <= 181  # exp - now, plus the leeway


@pytest.mark.parametrize("over", [
    {"repository": "acme/other-repo"},
    {"ref": "refs/heads/feature"},
    {"repository": None},
], ids=["other-repo", "other-ref", "no-repository"])
def test_claim_rule_mismatch_is_refused(hc: Any, hrt: Runtime, jwks: Jwks, over: dict[str, Any]) -> None:
    # (prod trusts acme/orders-api on any ref, so the ref case is refused for staging)
    r = post_oidc(hc, mint(jwks, **over))
    assert r.status_code == 401
    assert jobs_in_db(hrt) == 0 and len(denied(hrt)) == 1


def test_ci_rules_need_every_key_to_match(hc: Any, hrt: Runtime, jwks: Jwks) -> None:
    token = mint(jwks, environment="ci", job_workflow_ref="acme/workflows/.github/workflows/other.yml@refs/heads/main")
    assert_refused(hrt, post_oidc(hc, token, body_of("ci")), 401, actor="github:acme/orders-api@refs/heads/main")


def test_environment_without_github_rules_never_accepts_oidc(hc: Any, hrt: Runtime, jwks: Jwks) -> None:
    r = post_oidc(hc, mint(jwks), body_of("qa"))
    assert_refused(hrt, r, 401, actor="github:acme/orders-api@refs/heads/main")


def test_rules_that_do_not_pin_a_repository_never_accept_oidc(hc: Any, hrt: Runtime, jwks: Jwks) -> None:
    # A rule with only ref=refs/heads/main would trust any repository on GitHub: the
    # catalog refuses it at start (tests/test_config.py); the verifier still drops one.
    keys = JwksKeys.from_url(hrt.settings.oidc_jwks_url)
    verifier = OidcVerifier(keys, hrt.settings.oidc_issuer, hrt.settings.oidc_audience,
                            {"loose": {"ref": "refs/heads/main"}})
    with pytest.raises(Unauthorized):
        verifier.verify(mint(jwks, repository="mallory/fork", repository_owner_id="666", environment="loose"))


def test_oidc_body_environment_must_match_the_rules(hc: Any, hrt: Runtime, jwks: Jwks) -> None:
    assert_refused(hrt, post_oidc(hc, mint(jwks), body_of("ci")), 401,
                   actor="github:acme/orders-api@refs/heads/main")


def test_oidc_for_prod_is_403(hc: Any, hrt: Runtime, jwks: Jwks) -> None:
    assert_refused(hrt, post_oidc(hc, mint(jwks), body_of("prod")), 403,
                   actor="github:acme/orders-api@refs/heads/main")


@pytest.mark.parametrize("auth", ["Bearer ", "Basic dXNlcjpwYXNz", "Bearer not.a.jwt", "Token abc"])
def test_malformed_authorization_is_refused(hc: Any, hrt: Runtime, auth: str) -> None:
    assert_refused(hrt, post(hc, body_of(), {"Authorization": auth}), 401)


def test_unreachable_jwks_fails_closed(environ: dict[str, str], config_file: Callable[[str], str],
                                       jwks: Jwks, aws: str) -> None:
    from web import create_app

    env = {**environ, **SECRETS, "VALETKEY_ENVIRONMENTS": config_file(HOOK_TOML),
           "VALETKEY_OIDC_JWKS_URL": f"http://127.0.0.1:{free_port()}/jwks", "VALETKEY_OIDC_AUDIENCE": AUDIENCE}
    env.pop("STAGING_CACHE_REDIS_URL")
    rt = Runtime.from_settings(Settings.from_env(env))
    try:
        r = post_oidc(create_app({"TESTING": True}, runtime=rt).test_client(), mint(jwks))
        assert_refused(rt, r, 503)
    finally:
        rt.close()


# ---- settings --------------------------------------------------------------------------------------
def test_oidc_settings_defaults_and_overrides() -> None:
    s = Settings.from_env({"VALETKEY_BASE_URL": "https://valetkey.acme.test/"})
    assert s.oidc_issuer == "https://token.actions.githubusercontent.com"
    assert s.oidc_jwks_url == "https://token.actions.githubusercontent.com/.well-known/jwks"
    assert s.oidc_audience == "https://valetkey.acme.test"
    s = Settings.from_env({"VALETKEY_OIDC_AUDIENCE": "valetkey", "VALETKEY_OIDC_ISSUER": "https://ghes.acme/_services/token",
                           "VALETKEY_OIDC_JWKS_URL": "https://ghes.acme/_services/token/.well-known/jwks"})
    assert (s.oidc_audience, s.oidc_issuer) == ("valetkey", "https://ghes.acme/_services/token")
    with pytest.raises(ConfigError, match="VALETKEY_OIDC_JWKS_URL"):
        Settings.from_env({"VALETKEY_OIDC_JWKS_URL": "file:///etc/passwd"})


def test_base_toml_still_loads_with_hooks_registered(client: Any) -> None:
    # The shared fixtures' app (no [github] rules anywhere) builds the webhook service too.
    assert BASE_TOML and client.post("/hooks/redeploy", data=b"{}").status_code == 401


def test_shared_hmac_secret_names_the_environment_used() -> None:
    from web.webhook_service import HmacVerifier

    body = body_of("b")
    caller = HmacVerifier({"a": b"shared", "b": b"shared", "c": b"other"}).verify(sign(body, "shared"), body)
    assert caller.environments == frozenset({"a", "b"})
    assert (caller.actor_in("b"), caller.actor_in("c")) == ("webhook:b", caller.actor)
