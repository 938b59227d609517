"""AWS clients per environment: built once per process, assume-role with ExternalId, bounded timeouts.

boto3 clients are thread-safe once built, sessions are not: building happens
under a lock and the result is cached per (environment, service). Assumed-role
credentials are refreshable, so botocore renews them before they expire.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import DeferredRefreshableCredentials

from cloud.budget import CallBudget
from cloud.ecs_cache import SharedReadCache
from cloud.ecs_gateway import EcsGateway
from cloud.errors import AWS_ERRORS
from scope.catalog import Environment

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient
    from mypy_boto3_logs import CloudWatchLogsClient
    from mypy_boto3_sts import STSClient

# Connect/read timeouts keep a hung AWS endpoint from pinning a worker thread;
# "standard" retry mode retries throttling and 5xx a few times with backoff.
# A client is shared by every thread of a process: a worker's 16 job threads plus the ECS gateway's
# pool of 8 can have 24 calls in flight on one client. Above botocore's default of 10 connections
# urllib3 discards the extra ones after each call ("Connection pool is full"), and every call past
# the tenth pays a new TLS handshake to AWS.
MAX_POOL_CONNECTIONS = 32
DEFAULT_CONFIG = Config(connect_timeout=5, read_timeout=30,
                        retries={"max_attempts": 4, "mode": "standard"},
                        max_pool_connections=MAX_POOL_CONNECTIONS,
                        user_agent_extra="valetkey/0.1")
ASSUME_DURATION = 3600
LIST_SERVICES_PAGE = 100  # the most ECS allows; its default of 10 costs ten calls per 100 services
ACCOUNT_RETRY_SECONDS = 300.0  # after a failed GetCallerIdentity, "default" is used this long
_ROLE_ACCOUNT = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}):")
log = logging.getLogger("valetkey.aws")


def _list_services_page(params: dict[str, Any], **_: Any) -> None:
    params.setdefault("maxResults", LIST_SERVICES_PAGE)


def _assume_role_refresher(base: boto3.Session, env: Environment) -> Callable[[], dict[str, Any]]:
    role_arn, external_id = env.role_arn, env.external_id
    if not role_arn or not external_id:  # the catalog refuses one without the other
        raise ValueError(f"{env.name}: assuming a role needs both role_arn and external_id")
    sts: STSClient = base.client("sts", region_name=env.region, config=DEFAULT_CONFIG)

    def refresh() -> dict[str, Any]:
        creds = sts.assume_role(RoleArn=role_arn, ExternalId=external_id,
                                RoleSessionName=f"valetkey-{env.name}"[:64],
                                DurationSeconds=ASSUME_DURATION)["Credentials"]
        return {"access_key": creds["AccessKeyId"], "secret_key": creds["SecretAccessKey"],
                "token": creds["SessionToken"], "expiry_time": creds["Expiration"].isoformat()}

    return refresh


class AwsClients:
    """Cached boto3 clients for the environments of a catalog."""

    def __init__(self, config: Config = DEFAULT_CONFIG, budget: CallBudget | None = None,
                 read_cache: SharedReadCache | None = None, gateway: EcsGateway | None = None) -> None:
        self.config = config
        self.budget = budget
        self.read_cache = read_cache
        self.gateway = gateway  # the process's shared poll reads of jobs (cloud/ecs_gateway.py)
        self._lock = threading.Lock()
        self._sessions: dict[str, boto3.Session] = {}
        self._clients: dict[tuple[str, str], Any] = {}
        self._own_account: tuple[str, float] | None = None  # (account id, when to ask again; inf = never)

    def account_of(self, env: Environment) -> str:
        """The AWS account an environment's calls count against: its role's, else our own credentials'."""
        if env.role_arn:
            m = _ROLE_ACCOUNT.match(env.role_arn)
            if m:
                return m.group(1)
        own = self._own_account
        if own is None or time.monotonic() >= own[1]:
            own = self._own_account = self._caller_account(env.region)
        return own[0]

    def _caller_account(self, region: str) -> tuple[str, float]:
        # Once per process: the account of the process's own credentials does not change.
        try:
            sts: STSClient = boto3.Session(region_name=region).client("sts", config=self.config)
            return sts.get_caller_identity()["Account"], float("inf")
        except AWS_ERRORS as e:
            log.warning("AWS call budget: GetCallerIdentity failed (%s); counting against account 'default'",
                        type(e).__name__)
            return "default", time.monotonic() + ACCOUNT_RETRY_SECONDS

    def _instrument(self, env: Environment, service: str, client: Any, shared_reads: bool) -> None:
        if service == "ecs":
            client.meta.events.register("provide-client-params.ecs.ListServices", _list_services_page)
        if self.budget is not None:
            self.budget.instrument(client, lambda: self.account_of(env))
        if shared_reads and self.read_cache is not None:
            self.read_cache.instrument(client, lambda: self.account_of(env))

    def _session(self, env: Environment) -> boto3.Session:
        s = self._sessions.get(env.name)
        if s is None:
            base = boto3.Session(region_name=env.region)
            if env.role_arn:
                bc = botocore.session.get_session()
                bc._credentials = DeferredRefreshableCredentials(  # noqa: SLF001 - documented pattern
                    refresh_using=_assume_role_refresher(base, env), method="sts-assume-role")
                bc.set_config_variable("region", env.region)
                s = boto3.Session(botocore_session=bc)
            else:
                s = base
            self._sessions[env.name] = s
        return s

    def client(self, env: Environment, service: str, shared_reads: bool = False) -> Any:
        key = (env.name, service + ("+shared-reads" if shared_reads else ""))
        c = self._clients.get(key)
        if c is None:
            with self._lock:
                c = self._clients.get(key)
                if c is None:
                    c = self._session(env).client(service, region_name=env.region, config=self.config)
                    self._instrument(env, service, c, shared_reads)
                    self._clients[key] = c
        return c

    def ecs(self, env: Environment, shared_reads: bool = False) -> ECSClient:
        """``shared_reads``: ListServices/DescribeServices may be answered from the shared cache (pages only)."""
        client: ECSClient = self.client(env, "ecs", shared_reads)
        return client

    def logs(self, env: Environment) -> CloudWatchLogsClient:
        client: CloudWatchLogsClient = self.client(env, "logs")
        return client
