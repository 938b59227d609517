"""A process's ECS client has a connection for every caller that can use it at once."""
from __future__ import annotations

import inspect

from cloud.aws import AwsClients
from cloud.ecs_gateway import EcsGateway
from scope.catalog import Environment
from workers.process import default_threads

STG = Environment(name="staging", cls="staging", enabled=True, region="us-east-1", cluster="stg")


def test_the_ecs_client_pools_a_connection_per_worker_thread_and_gateway_batch() -> None:
    # The worker's job threads and the gateway's batch pool share one client per environment:
    # fewer pooled connections than callers and urllib3 drops the extras after every call.
    gateway_pool = inspect.signature(EcsGateway).parameters["concurrency"].default
    ecs = AwsClients().ecs(STG)
    assert ecs.meta.config.max_pool_connections >= default_threads() + gateway_pool
    assert ecs.meta.config.max_pool_connections > 10  # botocore's default, which was too small
