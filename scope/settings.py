"""Process settings from the VALETKEY_* environment variables (Contract: configuration)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from scope.errors import ConfigError

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_DATABASE_URL = "sqlite:///instance/valetkey.db"
GITHUB_OIDC_ISSUER = "https://token.actions.githubusercontent.com"
GITHUB_OIDC_JWKS_URL = GITHUB_OIDC_ISSUER + "/.well-known/jwks"
DEFAULT_SLACK_API_URL = "https://slack.com/api/"


def _bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ConfigError("environment", name, f"expected true or false, got {value!r}")


def _http_url(name: str, value: str) -> str:
    if not value.startswith(("https://", "http://")):
        raise ConfigError("environment", name, "must be an http:// or https:// URL")
    return value


def _int(name: str, value: str, minimum: int = 0) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ConfigError("environment", name, f"expected an integer, got {value!r}") from None
    if n < minimum:
        raise ConfigError("environment", name, f"must be at least {minimum}")
    return n


def _float(name: str, value: str, minimum: float) -> float:
    try:
        n = float(value)
    except ValueError:
        raise ConfigError("environment", name, f"expected a number of seconds, got {value!r}") from None
    if n < minimum:
        raise ConfigError("environment", name, f"must be at least {minimum}")
    return n


def _share(name: str, value: str) -> float:
    try:
        n = float(value)
    except ValueError:
        raise ConfigError("environment", name, f"expected a fraction between 0 and 1, got {value!r}") from None
    if not 0 <= n <= 1:
        raise ConfigError("environment", name, "must be between 0 (off) and 1")
    return n


@dataclass(frozen=True)
class Settings:
    redis_url: str = DEFAULT_REDIS_URL
    database_url: str = DEFAULT_DATABASE_URL
    environments_path: str = "environments.toml"
    secret_key: str | None = None
    saml_path: str | None = None
    base_url: str = "http://localhost:8000"
    audit_retention_days: int = 90
    local_login: bool = True
    saml_groups_attribute: str = "groups"
    token_ttl_days: int = 90  # lifetime of a new API token unless --expires-in says otherwise
    # GitHub Actions OIDC tokens for /hooks/redeploy (audience defaults to base_url).
    oidc_jwks_url: str = GITHUB_OIDC_JWKS_URL
    oidc_issuer: str = GITHUB_OIDC_ISSUER
    oidc_audience: str = "http://localhost:8000"
    # Operational knobs (not part of the contract, safe defaults).
    poll_interval: float = 3.0
    stability_timeout: float = 900.0
    task_timeout: float = 1800.0  # a one-off task running longer is stopped (StopTask) and failed
    job_max_age_seconds: int = 3600
    job_lease_seconds: float = 10.0  # a running job whose worker process is silent this long has lost it
    sweep_interval: float = 3.0
    # The audit exporter reclaims stream entries a dead exporter left pending this long.
    audit_claim_idle_ms: int = 30_000
    # Share of each AWS throttling budget (per account and Region) Valet Key may use; 0 turns the budget off.
    aws_budget_share: float = 0.5
    # Longest a call waits for its turn in the budget before it is refused as throttled (the job retries later).
    aws_budget_max_wait: float = 3.0
    # When set, GET /metrics requires "Authorization: Bearer <this>".
    metrics_token: str | None = field(default=None, repr=False)
    # The Slack app (docs/slack.md): /slack/* answers 404 while the signing secret is unset.
    slack_signing_secret: str | None = field(default=None, repr=False)
    slack_bot_token: str | None = field(default=None, repr=False)
    slack_api_url: str = DEFAULT_SLACK_API_URL
    notify_backoff_ms: int = 5_000  # first wait before a failed Slack/webhook delivery is retried (then doubling)
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> "Settings":
        e = environ
        if e.get("VALETKEY_SLACK_SIGNING_SECRET") and not e.get("VALETKEY_SLACK_BOT_TOKEN"):
            # A verified Slack user is mapped through users.info, which needs the bot token.
            raise ConfigError("environment", "VALETKEY_SLACK_BOT_TOKEN",
                              "required with VALETKEY_SLACK_SIGNING_SECRET (Slack users are looked up with it)")
        return cls(
            redis_url=e.get("VALETKEY_REDIS_URL") or DEFAULT_REDIS_URL,
            database_url=e.get("VALETKEY_DATABASE_URL") or DEFAULT_DATABASE_URL,
            environments_path=e.get("VALETKEY_ENVIRONMENTS") or "environments.toml",
            secret_key=e.get("VALETKEY_SECRET_KEY") or None,
            saml_path=e.get("VALETKEY_SAML_PATH") or None,
            base_url=(e.get("VALETKEY_BASE_URL") or "http://localhost:8000").rstrip("/"),
            audit_retention_days=_int("VALETKEY_AUDIT_RETENTION_DAYS",
                                      e.get("VALETKEY_AUDIT_RETENTION_DAYS", "90"), minimum=1),
            local_login=_bool("VALETKEY_LOCAL_LOGIN", e.get("VALETKEY_LOCAL_LOGIN", "true")),
            saml_groups_attribute=e.get("VALETKEY_SAML_GROUPS_ATTRIBUTE") or "groups",
            token_ttl_days=_int("VALETKEY_TOKEN_TTL_DAYS", e.get("VALETKEY_TOKEN_TTL_DAYS", "90"), minimum=1),
            oidc_jwks_url=_http_url("VALETKEY_OIDC_JWKS_URL", e.get("VALETKEY_OIDC_JWKS_URL") or GITHUB_OIDC_JWKS_URL),
            oidc_issuer=e.get("VALETKEY_OIDC_ISSUER") or GITHUB_OIDC_ISSUER,
            oidc_audience=e.get("VALETKEY_OIDC_AUDIENCE")
            or (e.get("VALETKEY_BASE_URL") or "http://localhost:8000").rstrip("/"),
            poll_interval=_float("VALETKEY_POLL_INTERVAL", e.get("VALETKEY_POLL_INTERVAL", "3"), 0.05),
            stability_timeout=_float("VALETKEY_STABILITY_TIMEOUT",
                                     e.get("VALETKEY_STABILITY_TIMEOUT", "900"), 1),
            task_timeout=_float("VALETKEY_TASK_TIMEOUT", e.get("VALETKEY_TASK_TIMEOUT", "1800"), 1),
            job_max_age_seconds=_int("VALETKEY_JOB_MAX_AGE", e.get("VALETKEY_JOB_MAX_AGE", "3600"), 1),
            job_lease_seconds=_float("VALETKEY_JOB_LEASE", e.get("VALETKEY_JOB_LEASE", "10"), 1),
            sweep_interval=_float("VALETKEY_SWEEP_INTERVAL", e.get("VALETKEY_SWEEP_INTERVAL", "3"), 0.1),
            audit_claim_idle_ms=_int("VALETKEY_AUDIT_CLAIM_IDLE_MS",
                                     e.get("VALETKEY_AUDIT_CLAIM_IDLE_MS", "30000"), minimum=100),
            aws_budget_share=_share("VALETKEY_AWS_BUDGET_SHARE", e.get("VALETKEY_AWS_BUDGET_SHARE", "0.5")),
            aws_budget_max_wait=_float("VALETKEY_AWS_BUDGET_MAX_WAIT", e.get("VALETKEY_AWS_BUDGET_MAX_WAIT", "3"), 0),
            metrics_token=e.get("VALETKEY_METRICS_TOKEN") or None,
            slack_signing_secret=e.get("VALETKEY_SLACK_SIGNING_SECRET") or None,
            slack_bot_token=e.get("VALETKEY_SLACK_BOT_TOKEN") or None,
            notify_backoff_ms=_int("VALETKEY_NOTIFY_BACKOFF_MS", e.get("VALETKEY_NOTIFY_BACKOFF_MS", "5000"), 10),
            slack_api_url=_http_url("VALETKEY_SLACK_API_URL", e.get("VALETKEY_SLACK_API_URL") or DEFAULT_SLACK_API_URL),
            environ=dict(environ),
        )
