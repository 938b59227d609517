"""What the AWS call budget costs per call: DescribeServices through a client with and without its hooks.

Each call goes through botocore completely (parameter validation, serialization,
signing, the ``before-send`` event) and is answered in-process by a
``before-send`` handler with a canned HTTP 200, so no network and no AWS is
involved. The product client (``AwsClients`` with a ``CallBudget`` on Redis)
runs the budget's Lua script per call, plus the response counter; the baseline
is the same client built without a budget. The budget's clock is moved one
second per call so that the bucket never makes a caller wait: the bench
measures the bookkeeping, not the throttling it exists for.

Prints details and, as its last line, ``budget: ratio=<budgeted calls/s ÷
plain calls/s> per_call_us=<added microseconds per call>``. Redis:
VALETKEY_BENCH_REDIS_URL (default db 7 of the local Redis; must be empty).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time
from typing import Any

import redis
from botocore.awsrequest import AWSResponse
from botocore.config import Config

from cloud.aws import AwsClients
from cloud.budget import CallBudget
from scope.catalog import Environment

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/7"
ENV = Environment(name="bench", cls="staging", enabled=True, region="us-east-1", cluster="bench")
BODY = json.dumps({"services": [], "failures": []}).encode()


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Any:
        yield self.body


def _answer(request: Any, **_: Any) -> AWSResponse:
    return AWSResponse(request.url, 200, {"Content-Type": "application/x-amz-json-1.1"}, _Raw(BODY))


def _client(budget: CallBudget | None) -> Any:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    clients = AwsClients(Config(retries={"total_max_attempts": 1, "mode": "standard"}), budget=budget)
    clients._own_account = ("111111111111", float("inf"))  # no sts:GetCallerIdentity in a bench
    c = clients.ecs(ENV)
    c.meta.events.register_last("before-send.ecs", _answer)
    return c


def _rate(client: Any, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        client.describe_services(cluster="bench", services=["web"])
    return n / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.budget", description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    url = os.environ.get("VALETKEY_BENCH_REDIS_URL", DEFAULT_REDIS_URL)
    r = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    if r.dbsize():
        raise SystemExit("budget: the Redis database of VALETKEY_BENCH_REDIS_URL is not empty; give an empty one")
    ticks = itertools.count(start=1_000_000)
    budget = CallBudget(r, share=0.5, max_wait=0, clock=lambda: float(next(ticks)))
    plain, budgeted = _client(None), _client(budget)
    _rate(plain, 200), _rate(budgeted, 200)  # warm up: first calls build botocore's caches
    ratios, added = [], []
    try:
        for i in range(args.repeat):
            p, b = _rate(plain, args.calls), _rate(budgeted, args.calls)
            ratios.append(b / p)
            added.append((1 / b - 1 / p) * 1e6)
            print(f"run {i + 1}: plain {p:.0f} calls/s, budgeted {b:.0f} calls/s")
    finally:
        r.flushdb()
    print(f"budget: ratio={statistics.median(ratios):.3f} per_call_us={statistics.median(added):.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
