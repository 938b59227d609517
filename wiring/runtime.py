"""Build every long-lived service of a process once, from settings (Warehouse-style injection).

Nothing here runs at import time: processes call ``Runtime.from_settings``
(or tests build a Runtime with their own parts).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Mapping

import dramatiq
import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from cloud.aws import AwsClients
from cloud.budget import CallBudget
from cloud.ecs_cache import SharedReadCache
from cloud.ecs_gateway import EcsGateway
from jobs.announce import Announcer
from jobs.audit_stream import AuditLog
from jobs.broker import make_broker
from jobs.events import JobEvents
from jobs.service import JobService
from scope.catalog import Catalog, load_catalog
from scope.db import make_engine, make_sessionmaker
from scope.settings import Settings
from scope.users import UserService


def redis_client(url: str) -> redis.Redis:
    # The read timeout must outlast the longest XREAD BLOCK (25 s long-polls).
    return redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=40, health_check_interval=30)


def aws_clients(settings: Settings) -> AwsClients:
    """AWS clients with the shared call budget (and call counters) and the pages' shared read cache.

    Both use a Redis connection of their own with short timeouts: they sit in
    front of every AWS call, so a hung Redis must be given up in a second, not 40.
    """
    r = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=1)
    return AwsClients(budget=CallBudget(r, share=settings.aws_budget_share, max_wait=settings.aws_budget_max_wait),
                      read_cache=SharedReadCache(r), gateway=EcsGateway(r, interval=settings.poll_interval))


@dataclass
class Runtime:
    settings: Settings
    catalog: Catalog
    engine: Engine
    sessions: sessionmaker[Session]
    redis: redis.Redis
    broker: dramatiq.Broker | None
    aws: AwsClients
    users: UserService
    jobs: JobService
    audit: AuditLog
    events: JobEvents
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings, *, broker: dramatiq.Broker | None = None,
                      with_broker: bool = True) -> "Runtime":
        catalog = load_catalog(settings.environments_path, settings.environ, own_redis_url=settings.redis_url)
        engine = make_engine(settings.database_url)
        sessions = make_sessionmaker(engine)
        r = redis_client(settings.redis_url)
        if broker is None and with_broker:
            broker = make_broker(settings.redis_url)
        audit, events = AuditLog(r), JobEvents(r)
        jobs = JobService(sessions, audit, events, broker, lease=dt.timedelta(seconds=settings.job_lease_seconds))
        jobs.announce = Announcer(broker, catalog, slack=settings.slack_bot_token is not None)
        return cls(settings=settings, catalog=catalog, engine=engine, sessions=sessions, redis=r,
                   broker=broker, aws=aws_clients(settings), users=UserService(sessions), jobs=jobs,
                   audit=audit, events=events)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **kw: Any) -> "Runtime":
        return cls.from_settings(Settings.from_env(environ), **kw)

    def close(self) -> None:
        self.engine.dispose()
        self.redis.close()
        if self.aws.budget is not None:
            self.aws.budget.close()  # its counts kept in the process go to Redis first
        if self.broker is not None:
            self.broker.close()
