"""Helpers of the simulator's tests; the ``sim`` fixture itself lives in tests/conftest.py (other test
files drive product code on it too)."""
from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

REGION = "us-east-1"
# One attempt: a test must see ThrottlingException rather than botocore retrying it away.
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})


def client(service: str, **kw: Any) -> Any:
    return boto3.client(service, region_name=REGION, **kw)
