"""The environment catalog: ``environments.toml`` loaded and validated at start-up.

Validation is strict on purpose: an unknown key is far more often a typo
(``run_task``, ``clster``) than a wish, and a silently ignored typo in a
permission tool is a hole. Every error names the file, the dotted key and the
reason, so start-up can stop with one line.
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlparse

from scope.errors import ConfigError
from scope.schedule_windows import Schedule, ScheduleSyntaxError, parse_schedule

CLASSES = ("staging", "prod")
ENV_KEYS = {"class", "enabled", "region", "cluster", "role_arn", "external_id", "run_tasks",
            "webhook_secret_env", "schedule", "redis", "github", "network", "description",
            "approval", "require_reason", "webhook_require_timestamp", "task_capacity_provider",
            "slack_channel", "notify"}
APPROVALS = ("none", "two-person")
REDIS_KEYS = {"url_env", "max_keys"}
GITHUB_KEYS = {"repository", "repository_owner_id", "ref", "environment", "job_workflow_ref"}
# Any repository on GitHub can mint a token with a given ref or environment:
# only these claims tie a rule to code the organisation controls.
GITHUB_PINNING_KEYS = ("repository", "repository_owner_id")
NETWORK_KEYS = {"subnets", "security_groups", "assign_public_ip"}
NOTIFY_KEYS = {"url_env", "secret_env"}
# A Slack channel: "#name" (or "name") as Slack allows them, or a channel id (C…, G…).
SLACK_CHANNEL = re.compile(r"#?[a-z0-9][a-z0-9._-]{0,79}|[CG][A-Z0-9]{6,}")
DEFAULT_MAX_KEYS = 10_000


@dataclass(frozen=True)
class RedisTarget:
    name: str
    url_env: str
    max_keys: int = DEFAULT_MAX_KEYS

    def url(self, environ: Mapping[str, str]) -> str:
        """The target's URL; never log or show it (it may hold a password)."""
        return environ[self.url_env]


@dataclass(frozen=True)
class NotifyTarget:
    """A signed outbound webhook on job outcomes; URL and secret live in env vars, never shown."""

    url_env: str
    secret_env: str

    def url(self, environ: Mapping[str, str]) -> str:
        return environ[self.url_env]

    def secret(self, environ: Mapping[str, str]) -> str:
        return environ[self.secret_env]


@dataclass(frozen=True)
class NetworkConfig:
    subnets: tuple[str, ...]
    security_groups: tuple[str, ...]
    assign_public_ip: bool = False


@dataclass(frozen=True)
class Environment:
    name: str
    cls: str
    enabled: bool
    region: str
    cluster: str
    role_arn: str | None = None
    external_id: str | None = None
    run_tasks: tuple[str, ...] = ()
    webhook_secret_env: str | None = None
    schedule: Schedule | None = None
    redis: Mapping[str, RedisTarget] = field(default_factory=dict)
    github: Mapping[str, str] = field(default_factory=dict)
    network: NetworkConfig | None = None
    description: str = ""
    # One-off tasks run on this capacity provider; unset: on-demand (launch type, never FARGATE_SPOT).
    task_capacity_provider: str | None = None
    # HMAC webhooks must carry a signed Unix-seconds "timestamp" in the body (replay window of minutes).
    webhook_require_timestamp: bool = False
    approval: str = "none"  # "two-person": mutating jobs wait for a second person (docs/approvals.md)
    require_reason: bool = False
    slack_channel: str | None = None  # outcomes and approval requests are posted here (docs/slack.md)
    notify: tuple[NotifyTarget, ...] = ()

    @property
    def two_person(self) -> bool:
        return self.approval == "two-person"

    @property
    def is_prod(self) -> bool:
        return self.cls == "prod"

    @property
    def actions_allowed(self) -> bool:
        """Prod is off unless explicitly enabled; a disabled environment refuses every action."""
        return self.enabled


@dataclass(frozen=True)
class Catalog:
    path: str
    environments: Mapping[str, Environment]

    def get(self, name: str) -> Environment | None:
        return self.environments.get(name)

    def names(self) -> list[str]:
        return sorted(self.environments)

    def __iter__(self):
        return iter(self.environments[n] for n in self.names())


def _same_redis(a: str, b: str) -> bool:
    """True when two Redis URLs address the same server and database."""
    pa, pb = urlparse(a), urlparse(b)

    def norm(p: Any) -> tuple[str, int, str]:
        host = (p.hostname or "localhost").lower()
        host = "127.0.0.1" if host in ("localhost", "::1") else host
        db = (p.path or "/0").strip("/") or "0"
        return host, p.port or 6379, db

    return norm(pa) == norm(pb)


class _Loader:
    def __init__(self, path: str, environ: Mapping[str, str], own_redis_url: str | None) -> None:
        self.path, self.environ, self.own_redis_url = path, environ, own_redis_url
        self.file = os.path.basename(path) or path

    def fail(self, key: str, reason: str) -> ConfigError:
        return ConfigError(self.path, key, reason)

    def load(self) -> Catalog:
        try:
            with open(self.path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise self.fail("-", "file not found (set VALETKEY_ENVIRONMENTS)") from None
        except IsADirectoryError:
            raise self.fail("-", "is a directory, not a TOML file") from None
        except PermissionError:
            raise self.fail("-", "permission denied") from None
        except tomllib.TOMLDecodeError as e:
            raise self.fail("-", f"invalid TOML: {e}") from None
        unknown = set(data) - {"environments"}
        if unknown:
            raise self.fail(sorted(unknown)[0], "unknown key (expected only [environments.NAME] tables)")
        envs = data.get("environments", {})
        if not isinstance(envs, dict):
            raise self.fail("environments", "must be a table of environments")
        out = {name: self.environment(name, body) for name, body in envs.items()}
        return Catalog(self.path, out)

    def _str(self, key: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, "must be a non-empty string")
        return value

    def environment(self, name: str, body: Any) -> Environment:
        k = f"environments.{name}"
        if not name.replace("-", "").replace("_", "").isalnum():
            raise self.fail(k, "environment names may hold only letters, digits, '-' and '_'")
        if not isinstance(body, dict):
            raise self.fail(k, "must be a table")
        unknown = set(body) - ENV_KEYS
        if unknown:
            raise self.fail(f"{k}.{sorted(unknown)[0]}", "unknown key")
        cls = body.get("class", "staging")
        if cls not in CLASSES:
            raise self.fail(f"{k}.class", f"unknown class {cls!r} (expected 'staging' or 'prod')")
        enabled = body.get("enabled", cls != "prod")
        if not isinstance(enabled, bool):
            raise self.fail(f"{k}.enabled", "must be true or false")
        if "cluster" not in body:
            raise self.fail(f"{k}.cluster", "missing required key")
        cluster = self._str(f"{k}.cluster", body["cluster"])
        region = self._str(f"{k}.region", body.get("region") or self.environ.get("AWS_DEFAULT_REGION")
                           or self.environ.get("AWS_REGION") or "us-east-1")
        role_arn = body.get("role_arn")
        external_id = body.get("external_id")
        if role_arn is not None:
            role_arn = self._str(f"{k}.role_arn", role_arn)
            if not role_arn.startswith("arn:aws") or ":role/" not in role_arn:
                raise self.fail(f"{k}.role_arn", "must be an IAM role ARN")
            if external_id is None:
                raise self.fail(f"{k}.external_id", "required with role_arn")
        if external_id is not None:
            external_id = self._str(f"{k}.external_id", external_id)
        run_tasks = body.get("run_tasks", [])
        if not isinstance(run_tasks, list) or not all(isinstance(t, str) and t for t in run_tasks):
            raise self.fail(f"{k}.run_tasks", "must be a list of task definition family names")
        for fam in run_tasks:
            if ":" in fam or "/" in fam:
                raise self.fail(f"{k}.run_tasks", f"{fam!r}: give the family name, not an ARN or revision")
        secret_env = body.get("webhook_secret_env")
        if secret_env is not None:
            secret_env = self._str(f"{k}.webhook_secret_env", secret_env)
        schedule = None
        if "schedule" in body:
            try:
                schedule = parse_schedule(body["schedule"])
            except ScheduleSyntaxError as e:
                raise self.fail(f"{k}.schedule", str(e)) from None
        redis = self.redis_targets(k, body.get("redis", {}))
        github = body.get("github", {})
        if not isinstance(github, dict):
            raise self.fail(f"{k}.github", "must be a table")
        for gk, gv in github.items():
            if gk not in GITHUB_KEYS:
                raise self.fail(f"{k}.github.{gk}", "unknown key")
            if not isinstance(gv, (str, int)) or isinstance(gv, bool) or str(gv) == "":
                raise self.fail(f"{k}.github.{gk}", "must be a non-empty string")
        if github and not any(pk in github for pk in GITHUB_PINNING_KEYS):
            raise self.fail(f"{k}.github", "names neither repository nor repository_owner_id: "
                                           "any repository on GitHub could match it")
        description = body.get("description", "")
        if not isinstance(description, str):
            raise self.fail(f"{k}.description", "must be a string")
        approval = body.get("approval", "none")
        if approval not in APPROVALS:
            raise self.fail(f"{k}.approval", f"unknown approval {approval!r} (expected 'none' or 'two-person')")
        require_reason = body.get("require_reason", False)
        if not isinstance(require_reason, bool):
            raise self.fail(f"{k}.require_reason", "must be true or false")
        require_timestamp = body.get("webhook_require_timestamp", False)
        if not isinstance(require_timestamp, bool):
            raise self.fail(f"{k}.webhook_require_timestamp", "must be true or false")
        return Environment(
            approval=approval, require_reason=require_reason,
            name=name, cls=cls, enabled=enabled, region=region, cluster=cluster,
            role_arn=role_arn, external_id=external_id, run_tasks=tuple(run_tasks),
            webhook_secret_env=secret_env, schedule=schedule, redis=redis,
            github={gk: str(gv) for gk, gv in github.items()},
            network=self.network(k, body.get("network")), description=description,
            webhook_require_timestamp=require_timestamp,
            slack_channel=self.slack_channel(k, body.get("slack_channel")), notify=self.notify(k, body.get("notify")),
            task_capacity_provider=self.capacity_provider(k, body.get("task_capacity_provider")))

    def slack_channel(self, k: str, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not SLACK_CHANNEL.fullmatch(value):
            raise self.fail(f"{k}.slack_channel", "must be a Slack channel name (#staging-ops) or id (C0123ABCD)")
        return value

    def notify(self, k: str, value: Any) -> tuple[NotifyTarget, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            raise self.fail(f"{k}.notify", "must be an array of tables ([[environments.NAME.notify]])")
        out = []
        for i, body in enumerate(value):
            nk = f"{k}.notify[{i}]"
            unknown = set(body) - NOTIFY_KEYS
            if unknown:
                raise self.fail(f"{nk}.{sorted(unknown)[0]}", "unknown key")
            names = {}
            for key in ("url_env", "secret_env"):
                if key not in body:
                    raise self.fail(f"{nk}.{key}", "missing required key")
                names[key] = self._str(f"{nk}.{key}", body[key])
                if not self.environ.get(names[key]):
                    raise self.fail(f"{nk}.{key}", f"environment variable {names[key]} is not set")
            if urlparse(self.environ[names["url_env"]]).scheme not in ("https", "http"):
                raise self.fail(f"{nk}.url_env", f"{names['url_env']} is not an http:// or https:// URL")
            out.append(NotifyTarget(names["url_env"], names["secret_env"]))
        return tuple(out)

    def capacity_provider(self, k: str, value: Any) -> str | None:
        if value is None:
            return None
        # ECS: "up to 255 characters: letters (upper and lowercase), numbers, underscores and hyphens".
        if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", value):
            raise self.fail(f"{k}.task_capacity_provider", "must be a capacity provider name "
                                                          "(letters, digits, _ and -)")
        return value

    def redis_targets(self, k: str, table: Any) -> dict[str, RedisTarget]:
        if not isinstance(table, dict):
            raise self.fail(f"{k}.redis", "must be a table of targets")
        out: dict[str, RedisTarget] = {}
        for name, body in table.items():
            tk = f"{k}.redis.{name}"
            if not isinstance(body, dict):
                raise self.fail(tk, "must be a table with url_env")
            unknown = set(body) - REDIS_KEYS
            if unknown:
                raise self.fail(f"{tk}.{sorted(unknown)[0]}", "unknown key")
            if "url_env" not in body:
                raise self.fail(f"{tk}.url_env", "missing required key")
            url_env = self._str(f"{tk}.url_env", body["url_env"])
            url = self.environ.get(url_env)
            if not url:
                raise self.fail(f"{tk}.url_env", f"environment variable {url_env} is not set")
            if urlparse(url).scheme not in ("redis", "rediss", "unix"):
                raise self.fail(f"{tk}.url_env", f"{url_env} is not a redis://, rediss:// or unix:// URL")
            if self.own_redis_url and _same_redis(url, self.own_redis_url):
                raise self.fail(f"{tk}.url_env",
                                f"{url_env} points at Valet Key's own Redis database; refusing to flush it")
            max_keys = body.get("max_keys", DEFAULT_MAX_KEYS)
            if not isinstance(max_keys, int) or isinstance(max_keys, bool) or max_keys < 1:
                raise self.fail(f"{tk}.max_keys", "must be a positive integer")
            out[name] = RedisTarget(name, url_env, max_keys)
        return out

    def network(self, k: str, body: Any) -> NetworkConfig | None:
        if body is None:
            return None
        if not isinstance(body, dict):
            raise self.fail(f"{k}.network", "must be a table")
        unknown = set(body) - NETWORK_KEYS
        if unknown:
            raise self.fail(f"{k}.network.{sorted(unknown)[0]}", "unknown key")
        lists = {}
        for key in ("subnets", "security_groups"):
            v = body.get(key, [])
            if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
                raise self.fail(f"{k}.network.{key}", "must be a list of ids")
            lists[key] = tuple(v)
        if not lists["subnets"]:
            raise self.fail(f"{k}.network.subnets", "at least one subnet is required")
        public = body.get("assign_public_ip", False)
        if not isinstance(public, bool):
            raise self.fail(f"{k}.network.assign_public_ip", "must be true or false")
        return NetworkConfig(lists["subnets"], lists["security_groups"], public)


def load_catalog(path: str, environ: Mapping[str, str], own_redis_url: str | None = None) -> Catalog:
    """Load and validate the catalog; raises ConfigError naming file, key and reason."""
    return _Loader(path, environ, own_redis_url).load()
