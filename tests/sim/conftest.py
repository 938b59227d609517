"""The ``sim`` fixture: the session's moto server (tests/conftest.py) with ecssim installed on a FakeClock.

moto is reset before each test (the ``aws`` fixture) and the simulator is
installed fresh, so no state or call log leaks between tests.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config

import ecssim
from ecssim import FakeClock, Simulator, Timings

REGION = "us-east-1"
# One attempt: a test must see ThrottlingException rather than botocore retrying it away.
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})


@pytest.fixture
def sim(aws: str) -> Iterator[Simulator]:
    from cloud.ecs import EcsReader

    # Task definitions are cached per process as immutable, but every test's moto reuses the
    # same ARNs (stg-web:1) for different definitions.
    EcsReader._td_cache.clear()
    simulator = ecssim.install(Simulator(clock=FakeClock(), timings=Timings.fast(), seed=7))
    try:
        yield simulator
    finally:
        ecssim.uninstall()


def client(service: str, **kw: Any) -> Any:
    return boto3.client(service, region_name=REGION, **kw)
