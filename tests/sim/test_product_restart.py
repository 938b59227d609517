"""The product's restart against the simulator: the check moto alone cannot make.

aws-facts.md §0.1 predicts that on real ECS the restart stops every task of
a 4-task, minimumHealthyPercent-50 service in the same second and reports
HEALTHY while nothing runs. This test asserts what must hold (capacity never
below the minimum); it was a strict xfail until workers/ecs.py judged
progress by task identity and health (issue 15). Without an ECR client the
restart cannot verify digests, so it replaces tasks in batches.
"""
from __future__ import annotations

import boto3
import pytest

from ecssim import Simulator
from ecssim.seed import ServiceSpec, seed

ecs_ops = pytest.importorskip("workers.ecs")


def test_restart_keeps_minimum_healthy(sim: Simulator) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=4, min_percent=50)])
    t0 = sim.clock.now()
    ops = ecs_ops.EcsOperations(boto3.client("ecs", region_name="us-east-1"), "stg", lambda kind, msg: None,
                                lambda params: None, poll_interval=3, timeout=900, sleep=sim.advance,
                                clock=sim.clock.now)
    ops.restart("web", {})
    stops = [round(c.time - t0) for c in sim.calls.of("StopTask")]
    assert len(stops) == 4
    assert sim.truth.violations("web", since=t0) == []
    assert sim.truth.min_healthy_wanted("web", since=t0) >= 2
