"""Redeploy webhooks from CI: who is calling (HMAC or GitHub Actions OIDC), replay and delivery guards.

The caller is established from the request headers and the raw body only;
the JSON is parsed after that, and the environment it names must be one the
credential is good for. Every refusal is audited as ``denied`` here, so the
view stays a thin sequence of authenticate -> parse -> start.

Nothing in this module touches Flask-Login: an OIDC token travels as
``Authorization: Bearer`` and must never reach the API-token loader.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

import jwt
import marshmallow as ma
import redis
from jwt import PyJWK, PyJWKClient
from werkzeug.datastructures import Headers

from cloud.aws import AwsClients
from cloud.ecs import EcsReader, short_td
from cloud.ecs_batch import DescribeBatcher
from cloud.ecs_cache import ServiceAnswers
from jobs.audit_stream import AuditEvent, AuditLog
from jobs.kinds import REDEPLOY
from jobs.service import JobService
from scope.catalog import Catalog, Environment
from scope.errors import (
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
    ValetKeyError,
    ValidationFailed,
)
from scope.models import Job
from scope.settings import Settings
from scope.text import as_text
from web import json_body

if TYPE_CHECKING:
    from wiring.runtime import Runtime

log = logging.getLogger("valetkey.hooks")

SOURCE = "webhook"
UNAUTHENTICATED = "webhook:unauthenticated"
_SIG256 = re.compile(r"sha256=([0-9a-fA-F]{64})")
_DELIVERY = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_KEY_PREFIX = "valetkey:hooks:"
# A pending delivery marker outlives any single request but not a crashed
# process for long: a redelivery after that may try again.
PENDING_TTL = 120
DELIVERY_TTL = 24 * 3600
# Claims that identify a caller well enough on their own; rules naming only
# e.g. ``ref`` would admit any repository on GitHub that mints a token for us.
PINNING_CLAIMS = ("repository", "repository_owner_id")


@dataclass(frozen=True)
class Caller:
    """An authenticated webhook caller and the environments its credential opens."""

    actor: str
    environments: frozenset[str]
    method: str  # "hmac" or "oidc"
    detail: str = ""
    token_id: str = ""  # OIDC jti, to be spent once
    expires_at: int = 0  # OIDC exp (epoch seconds)

    def actor_in(self, environment: str) -> str:
        """The audit actor once the environment is settled (a shared HMAC secret names the one used)."""
        if self.method == "hmac" and environment in self.environments:
            return f"webhook:{environment}"
        return self.actor


# ---- HMAC (X-Hub-Signature-256) ------------------------------------------------
class HmacVerifier:
    """GitHub-style body signatures, checked against every configured environment's secret."""

    def __init__(self, secrets: Mapping[str, bytes]) -> None:
        self._secrets = dict(secrets)

    @classmethod
    def from_catalog(cls, catalog: Catalog, environ: Mapping[str, str]) -> "HmacVerifier":
        secrets = {}
        for env in catalog:
            value = environ.get(env.webhook_secret_env or "", "")
            if env.webhook_secret_env and not value:
                log.warning("environment %s: %s is not set; its webhook refuses HMAC signatures",
                            env.name, env.webhook_secret_env)
            if value:
                secrets[env.name] = value.encode()
        return cls(secrets)

    def verify(self, header: str, body: bytes) -> Caller:
        m = _SIG256.fullmatch(header.strip())
        if not m:
            raise Unauthorized("X-Hub-Signature-256 must be 'sha256=' followed by 64 hex digits.")
        given = m.group(1).lower().encode()
        matched = []
        # Every secret is tried, with no early exit, so the time taken does not
        # tell which environment (if any) came close.
        for name, secret in self._secrets.items():
            expected = hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
            if hmac.compare_digest(expected, given):
                matched.append(name)
        if not matched:
            raise Unauthorized("The signature does not match the body for any environment's webhook secret.")
        label = matched[0] if len(matched) == 1 else "+".join(sorted(matched))
        return Caller(actor=f"webhook:{label}", environments=frozenset(matched), method="hmac",
                      detail="HMAC signature")


# ---- GitHub Actions OIDC ---------------------------------------------------------
class JwksKeys:
    """Signing keys from a JWKS URL: cached by PyJWKClient, refetched on an unknown kid at most once a minute.

    PyJWKClient's own refetch-on-miss is unthrottled in older releases (and its
    cooldown is 30 s in newer ones), so the miss path is handled here.
    """

    def __init__(self, client: PyJWKClient, min_refresh_interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client, self.min_refresh_interval, self.clock = client, min_refresh_interval, clock
        self._lock = threading.Lock()
        self._last_refresh: float | None = None

    @classmethod
    def from_url(cls, url: str) -> "JwksKeys":
        return cls(PyJWKClient(url, cache_jwk_set=True, lifespan=300, timeout=5))

    def key_for(self, kid: str) -> PyJWK:
        try:
            with self._lock:
                key = self._match(self.client.get_signing_keys(), kid)
                if key is None:
                    now = self.clock()
                    if self._last_refresh is None or now - self._last_refresh >= self.min_refresh_interval:
                        self._last_refresh = now
                        key = self._match(self.client.get_signing_keys(refresh=True), kid)
        except jwt.PyJWKClientConnectionError as e:
            raise Unavailable("The OIDC signing keys cannot be fetched right now; try again later.") from e
        except (jwt.PyJWKClientError, jwt.PyJWKSetError) as e:
            raise Unavailable("The OIDC key set is unusable right now; try again later.") from e
        if key is None:
            raise Unauthorized("The OIDC token is signed with an unknown key.")
        return key

    @staticmethod
    def _match(keys: list[PyJWK], kid: str) -> PyJWK | None:
        return next((k for k in keys if k.key_id == kid), None)


def _claim_matches(claims: Mapping[str, Any], key: str, expected: str) -> bool:
    value = claims.get(key)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return False
    return hmac.compare_digest(str(value).encode(), expected.encode())


class OidcVerifier:
    """RS256 GitHub Actions tokens: signature, iss, aud, exp/iat/nbf, then the environments' claim rules."""

    ALGORITHM = "RS256"
    REQUIRED = ("exp", "iat", "nbf", "iss", "aud", "jti")

    def __init__(self, keys: JwksKeys, issuer: str, audience: str, rules: Mapping[str, Mapping[str, str]],
                 leeway: float = 30.0) -> None:
        self.keys, self.issuer, self.audience, self.leeway = keys, issuer, audience, leeway
        self.rules = {name: dict(r) for name, r in rules.items() if r}
        for name, r in list(self.rules.items()):
            if not any(k in r for k in PINNING_CLAIMS):
                log.warning("environment %s: [github] rules name neither repository nor repository_owner_id; "
                            "it refuses OIDC tokens", name)
                del self.rules[name]

    @classmethod
    def from_settings(cls, settings: Settings, catalog: Catalog) -> "OidcVerifier":
        return cls(JwksKeys.from_url(settings.oidc_jwks_url), settings.oidc_issuer, settings.oidc_audience,
                   {env.name: env.github for env in catalog})

    def verify(self, token: str) -> Caller:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise Unauthorized("The bearer token is not a JWT.") from None
        # Checked before any key lookup: HS256 or "none" must not even cost a JWKS fetch.
        if header.get("alg") != self.ALGORITHM:
            raise Unauthorized("The OIDC token must be signed with RS256.")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("The OIDC token has no key id (kid).")
        key = self.keys.key_for(kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=[self.ALGORITHM], audience=self.audience, issuer=self.issuer,
                leeway=self.leeway, options={"require": list(self.REQUIRED), "verify_signature": True})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The OIDC token has expired.") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("The OIDC token is not valid yet (nbf/iat in the future).") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("The OIDC token is for another audience.") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("The OIDC token is from an untrusted issuer.") from None
        except jwt.MissingRequiredClaimError as e:
            raise Unauthorized(f"The OIDC token lacks the {e.claim!r} claim.") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("The OIDC token is invalid.") from None
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise Unauthorized("The OIDC token has no usable 'jti' claim.")
        matched = frozenset(name for name, rule in self.rules.items()
                            if all(_claim_matches(claims, k, v) for k, v in rule.items()))
        if not matched:
            raise Unauthorized("The OIDC token does not match any environment's [github] trust rules.")
        repo, ref = claims.get("repository") or "?", claims.get("ref") or "?"
        run = claims.get("run_id")
        detail = f"GitHub Actions OIDC: {claims.get('workflow') or 'workflow'}" + (f", run {run}" if run else "")
        sha = claims.get("sha")
        if isinstance(sha, str) and sha:
            detail += f", sha {sha[:7]}"
        return Caller(actor=f"github:{repo}@{ref}", environments=matched, method="oidc", detail=detail,
                      token_id=jti, expires_at=int(claims["exp"]))


# ---- replay and idempotency --------------------------------------------------------
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class DeliveryLedger:
    """Redis keys that make a token single-use and a delivery id enqueue at most one job."""

    def __init__(self, client: redis.Redis, clock: Callable[[], float] = time.time) -> None:
        self.r, self.clock = client, clock

    @staticmethod
    def _h(value: str) -> str:
        return hashlib.sha256(value.encode()).hexdigest()[:40]

    def spend_token(self, jti: str, expires_at: int, bound_to: str) -> None:
        """Remember the jti until the token expires; a second use is refused unless it retries the same delivery."""
        ttl = max(1, int(expires_at - self.clock()) + 60)  # + leeway: outlive the token's acceptance window
        key = f"{_KEY_PREFIX}jti:{self._h(jti)}"
        try:
            if self.r.set(key, bound_to, nx=True, ex=ttl):
                return
            previous = self.r.get(key)
        except redis.RedisError as e:
            raise Unavailable("Webhook replay protection is unavailable; nothing was done.") from e
        # A curl --retry of the same delivery is not a replay: the delivery
        # ledger below still guarantees at most one job for it.
        if bound_to and previous is not None and as_text(previous) == bound_to:
            return
        raise Unauthorized("This OIDC token was already used; request a fresh one for each call.")

    def delivery_key(self, environment: str, service: str, delivery: str) -> str:
        return f"{_KEY_PREFIX}delivery:{self._h(f'{environment}/{service}/{delivery}')}"

    def claim(self, key: str) -> tuple[str | None, str]:
        """(job id of an earlier identical delivery, "") or (None, marker) when this request owns the key."""
        marker = "pending:" + uuid.uuid4().hex
        try:
            for _ in range(2):  # the key may expire between SET NX and GET: look twice
                if self.r.set(key, marker, nx=True, ex=PENDING_TTL):
                    return None, marker
                existing = self.r.get(key)
                if existing is None:
                    continue
                value = as_text(existing)
                if value.startswith("pending:"):
                    break
                return value, ""
        except redis.RedisError as e:
            raise Unavailable("Webhook delivery tracking is unavailable; nothing was done.") from e
        raise Conflict("This delivery is being processed by another request; retry in a moment.")

    def record(self, key: str, job_id: str) -> None:
        try:
            self.r.set(key, job_id, ex=DELIVERY_TTL)
        except redis.RedisError:
            # The job exists and runs; only de-duplication of a later repeat is lost.
            log.warning("could not record webhook delivery for job %s", job_id)

    def release(self, key: str, marker: str) -> None:
        try:
            self.r.eval(_RELEASE, 1, key, marker)
        except redis.RedisError:
            log.warning("could not release a pending webhook delivery marker")


class ServiceCache:
    """Whether a service exists (and its task definition), remembered briefly and shared between processes.

    The lookup is a DescribeServices call that would dominate a webhook's
    latency; a few seconds of staleness is safe because the worker reads the
    service again before it acts. A lookup asks, in order: this process's
    memory; the answers every web process shares in Redis (cloud/ecs_cache.py
    ServiceAnswers: one round trip; a found service is kept there ``ttl``
    seconds from when ECS was read, so an answer another process just got
    costs no AWS call and no budget wait); then ECS. Only a found service is
    remembered, here and in Redis: a NotFound is asked again (a service
    created a moment ago is accepted at once), an AWS error is never an
    answer, and without Redis each process simply asks ECS itself.

    Concurrent misses of one environment are coalesced (cloud/ecs_batch.py):
    while one DescribeServices is in flight, other threads' names queue and
    the next call asks for up to ten of them (after one MGET of them in
    Redis), and a name missed by several threads at once is read once, so a
    burst costs the AWS budget one token per ten services rather than one per
    request. A call goes through the pages' shared read cache
    (cloud/ecs_cache.py SharedReadCache, Redis, 2 s) as well.
    """

    def __init__(self, aws: AwsClients, ttl: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 max_wait: float = 10.0, shared: redis.Redis | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        self.aws, self.ttl, self.clock, self.max_wait = aws, ttl, clock, max_wait
        # ``shared``: the Redis connection of the AWS hooks (1 s timeouts, wiring/runtime.py), not the
        # request's (40 s): it sits in front of an AWS call. ``wall`` dates the answers shared there:
        # monotonic clocks of two processes do not compare.
        self.shared, self.wall = shared, wall
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], tuple[float, str]] = {}
        # Keyed by where the lookups go, not the name alone: a reloaded catalog may move an environment.
        self._batchers: dict[tuple[str, str, str, str | None], DescribeBatcher] = {}

    def batcher(self, env: Environment) -> DescribeBatcher:
        """The process's one coalescer of this environment's lookups."""
        key = (env.name, env.region, env.cluster, env.role_arn)
        b = self._batchers.get(key)
        if b is None:
            with self._lock:
                b = self._batchers.get(key)
                if b is None:
                    reader = EcsReader(self.aws.ecs(env, shared_reads=True), env.cluster)
                    answers = None if self.shared is None else ServiceAnswers(
                        self.shared, lambda: self.aws.account_of(env), env.region, env.cluster, env.role_arn,
                        ttl=self.ttl, clock=self.wall)
                    b = self._batchers[key] = DescribeBatcher(reader, max_wait=self.max_wait, shared=answers)
        return b

    def task_definition(self, env: Environment, service: str) -> str:
        """The service's task definition; NotFound if it is not an active service of the environment."""
        now = self.clock()
        hit = self._seen.get((env.name, service))
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        # Only the name is needed here: no DescribeTaskDefinition for the image, as EcsReader.service makes.
        found, age = self.batcher(env).lookup(service)
        td = short_td(found.get("taskDefinition", ""))
        with self._lock:  # an answer from Redis is as old here as it is there: its TTL is not restarted
            self._seen[(env.name, service)] = (now - age, td)
        return td


# ---- the request body --------------------------------------------------------------
class UnixSeconds(ma.fields.Integer):
    """An integer number of seconds; JSON true/false are not numbers here (Python counts bool as int)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class RedeployHookSchema(ma.Schema):
    environment = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=64))
    service = ma.fields.String(required=True, validate=ma.validate.Regexp(
        r"^[A-Za-z0-9_-]{1,255}$", error="must be an ECS service name (letters, digits, '-', '_')"))
    timestamp = UnixSeconds(strict=True, load_default=None, metadata={
        "description": "Unix seconds when the call was signed; required (and checked against the clock) in "
                       "environments with webhook_require_timestamp = true, so that a captured signed body "
                       "cannot be replayed later under a new delivery id"})

    class Meta:
        unknown = ma.RAISE


_SCHEMA = RedeployHookSchema()  # stateless, so one instance serves every thread


# ---- signed timestamps (optional per environment) -------------------------------------
MAX_AGE = 300  # seconds a signed timestamp stays acceptable
MAX_SKEW = 60  # seconds a signed timestamp may lie ahead of our clock


def timestamp_problem(timestamp: int | None, now: float) -> str | None:
    """Why a signed ``timestamp`` (Unix seconds) is refused, or None when it is fresh.

    GitHub's HMAC signature covers the body only, with no time in it, so a body
    captured once verifies forever; the delivery id is not signed. A timestamp
    inside the signed body bounds a replay to a few minutes.
    """
    if timestamp is None:
        return "This environment requires a signed 'timestamp' (Unix seconds) in the JSON body."
    if timestamp < now - MAX_AGE:
        return f"The signed timestamp is more than {MAX_AGE // 60} minutes old; sign a fresh request."
    if timestamp > now + MAX_SKEW:
        return f"The signed timestamp is more than {MAX_SKEW} seconds in the future; check the sender's clock."
    return None


# ---- the whole flow ------------------------------------------------------------------
class RedeployWebhook:
    """Authenticate, validate and start a webhook redeploy; every refusal is audited as ``denied``."""

    def __init__(self, catalog: Catalog, hmac_verifier: HmacVerifier, oidc_verifier: OidcVerifier,
                 ledger: DeliveryLedger, services: ServiceCache, jobs: JobService, audit: AuditLog,
                 clock: Callable[[], float] = time.time) -> None:
        self.catalog, self.hmac, self.oidc = catalog, hmac_verifier, oidc_verifier
        self.ledger, self.services, self.jobs, self.audit = ledger, services, jobs, audit
        self.clock = clock

    @classmethod
    def from_runtime(cls, rt: "Runtime") -> "RedeployWebhook":
        return cls(rt.catalog, HmacVerifier.from_catalog(rt.catalog, rt.settings.environ),
                   OidcVerifier.from_settings(rt.settings, rt.catalog), DeliveryLedger(rt.redis),
                   ServiceCache(rt.aws, shared=rt.aws.read_cache.redis if rt.aws.read_cache else None),
                   rt.jobs, rt.audit)

    def _deny(self, actor: str, detail: str, request_id: str, environment: str = "", target: str = "") -> None:
        self.audit.record(AuditEvent(actor=actor, source=SOURCE, action=REDEPLOY, outcome="denied",
                                     environment=environment, target=target, detail=detail[:500],
                                     request_id=request_id))

    def authenticate(self, headers: Headers | Mapping[str, str], body: bytes, request_id: str) -> Caller:
        """Establish the caller from headers and raw body only; 401 (audited) otherwise."""
        try:
            return self._authenticate(headers, body)
        except (Unauthorized, Unavailable) as e:
            self._deny(UNAUTHENTICATED, e.detail, request_id)
            raise

    def _authenticate(self, headers: Headers | Mapping[str, str], body: bytes) -> Caller:
        sig = headers.get("X-Hub-Signature-256")
        auth = headers.get("Authorization", "")
        if sig is not None and auth:
            raise Unauthorized("Send either X-Hub-Signature-256 or an OIDC bearer token, not both.")
        if sig is not None:
            return self.hmac.verify(sig, body)
        if auth:
            scheme, _, token = auth.partition(" ")
            if scheme != "Bearer" or not token.strip() or len(token) > 16384:
                raise Unauthorized("Authorization must be 'Bearer <GitHub Actions OIDC token>'.")
            return self.oidc.verify(token.strip())
        if headers.get("X-Hub-Signature") is not None:
            raise Unauthorized("SHA-1 signatures (X-Hub-Signature) are not accepted; send X-Hub-Signature-256.")
        raise Unauthorized("Sign the body (X-Hub-Signature-256) or send a GitHub Actions OIDC bearer token.")

    def parse(self, caller: Caller, body: bytes, request_id: str) -> dict[str, Any]:
        """The JSON body, validated; 400 naming the field (audited under the caller)."""
        try:
            data = json_body.loads(body)
        except ValidationFailed as e:  # not JSON, nested too deep, or not valid Unicode
            self._deny(caller.actor, e.detail, request_id)
            raise
        if not isinstance(data, dict):
            err = ValidationFailed({"body": ["Must be a JSON object: {\"environment\": ..., \"service\": ...}."]})
            self._deny(caller.actor, err.detail, request_id)
            raise err
        try:
            loaded: dict[str, Any] = _SCHEMA.load(data)
            return loaded
        except ma.ValidationError as e:
            err = ValidationFailed(e.normalized_messages())
        env = data.get("environment")
        self._deny(caller.actor, err.detail, request_id,
                   environment=env if isinstance(env, str) and env in self.catalog.environments else "")
        raise err

    def refuse_oversized(self, limit: int, request_id: str) -> PayloadTooLarge:
        """The 413 for a body over ``limit`` bytes, audited before anything else is read."""
        err = PayloadTooLarge(f"A webhook body may be at most {limit} bytes.")
        self._deny(UNAUTHENTICATED, err.detail, request_id)
        return err

    def start(self, caller: Caller, environment: str, service: str, delivery: str | None,
              request_id: str, timestamp: int | None = None) -> tuple[Job, bool]:
        """Start the redeploy (or find the job of the same delivery); returns (job, repeated)."""
        env = self.catalog.get(environment)
        if env is None or environment not in caller.environments:
            what = "signature" if caller.method == "hmac" else "token"
            detail = f"This {what} is not valid for environment {environment!r}."
            self._deny(caller.actor, detail, request_id, environment if env else "", service)
            raise Unauthorized(detail)
        actor = caller.actor_in(env.name)

        def deny(error: ValetKeyError) -> ValetKeyError:
            self._deny(actor, error.detail, request_id, env.name, service)
            return error

        if delivery is not None and not _DELIVERY.fullmatch(delivery):
            raise deny(ValidationFailed({"X-GitHub-Delivery": ["1-128 letters, digits, '.', '_', ':' or '-'."]}))
        if caller.method == "hmac" and env.webhook_require_timestamp:
            stale = timestamp_problem(timestamp, self.clock())
            if stale:
                raise deny(Unauthorized(stale))
        if not env.actions_allowed:
            why = "a production environment that is not enabled" if env.is_prod else "disabled"
            raise deny(Forbidden(f"{env.name} is {why}: every action is refused."))
        key = self.ledger.delivery_key(env.name, service, delivery) if delivery else ""
        marker = ""
        try:
            if caller.token_id:
                self.ledger.spend_token(caller.token_id, caller.expires_at, key)
            if key:
                job_id, marker = self.ledger.claim(key)
                if job_id is not None:
                    return self.jobs.get(job_id), True
        except (Unauthorized, Conflict, Unavailable) as e:  # a replayed token, a delivery in flight, Redis down
            raise deny(e) from None
        try:
            try:
                td = self.services.task_definition(env, service)
            except NotFound as e:
                raise deny(e) from None
            detail = caller.detail + (f"; delivery {delivery}" if delivery else "")
            job = self.jobs.create(action=REDEPLOY, environment=env.name, target=service, actor=actor,
                                   source=SOURCE, request_id=request_id, detail=detail, approval=env.two_person,
                                   params={"requested_task_definition": td, "delivery": delivery or ""})
        except ValetKeyError:
            if key:  # nothing was started: a redelivery may try again
                self.ledger.release(key, marker)
            raise
        if key:
            self.ledger.record(key, job.id)
        return job, False
