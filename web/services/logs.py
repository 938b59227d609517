"""A service's CloudWatch logs, wired from the process runtime."""
from __future__ import annotations

from cloud.ecs import EcsReader
from cloud.logs import CursorCodec, LogReader, ServiceLogs, SharedCache
from scope.catalog import Environment
from web.context import runtime


def service_logs(env: Environment) -> ServiceLogs:
    rt = runtime()
    cache = SharedCache(rt.redis)
    return ServiceLogs(env.name, env.region, EcsReader(rt.aws.ecs(env), env.cluster),
                       LogReader(rt.aws.logs(env), cache), CursorCodec(rt.settings.secret_key or ""), cache)


ACTION = "logs.view"
