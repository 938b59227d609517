"""ECS API request throttling: token buckets per account, Region and category.

Burst and refill per second from the ECS API Reference, "Request throttling"
(https://docs.aws.amazon.com/AmazonECS/latest/APIReference/request-throttling.html).
Refill follows the simulator's clock, so a test can empty a bucket, advance
the fake clock and see it refill.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# category -> (burst, refill per second)
BUCKETS: dict[str, tuple[float, float]] = {
    "service-read": (100, 20),
    "cluster-resource-read": (100, 20),
    "cluster-resource-modify": (100, 40),
    "service-modify": (50, 5),
    "task-definition-read": (50, 20),
    "service-deployment-read": (50, 20),
}

CATEGORY: dict[str, str] = {
    "DescribeServices": "service-read", "ListServices": "service-read",
    "DescribeTasks": "cluster-resource-read", "ListTasks": "cluster-resource-read",
    "RunTask": "cluster-resource-modify", "StopTask": "cluster-resource-modify",
    "UpdateService": "service-modify", "CreateService": "service-modify", "DeleteService": "service-modify",
    "DescribeTaskDefinition": "task-definition-read",
    "DescribeServiceDeployments": "service-deployment-read", "ListServiceDeployments": "service-deployment-read",
    "DescribeServiceRevisions": "service-deployment-read",
}


@dataclass
class TokenBucket:
    burst: float
    refill: float
    tokens: float
    updated: float

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.refill)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass
class Throttler:
    """Off unless ``enabled``; ``scale`` shrinks burst and refill alike (0.1: 10 burst / 2 per s) for fast tests."""

    enabled: bool = False
    scale: float = 1.0
    _buckets: dict[tuple[str, str, str], TokenBucket] = field(default_factory=dict)

    def allow(self, account: str, region: str, api: str, now: float) -> bool:
        category = CATEGORY.get(api)
        if not self.enabled or category is None:
            return True
        key = (account, region, category)
        bucket = self._buckets.get(key)
        if bucket is None:
            burst, refill = BUCKETS[category]
            burst, refill = max(1.0, burst * self.scale), refill * self.scale
            bucket = self._buckets[key] = TokenBucket(burst, refill, burst, now)
        return bucket.take(now)

    def reset(self) -> None:
        self._buckets.clear()
