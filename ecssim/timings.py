"""How long each simulated step takes: ``Timings.fast()`` for tests, ``Timings.realistic()`` for the demo."""
from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Span:
    """A duration drawn uniformly from [low, high] with the simulator's seeded RNG (low == high: exact)."""

    low: float
    high: float | None = None

    def draw(self, rng: random.Random) -> float:
        if self.high is None or self.high <= self.low:
            return self.low
        return rng.uniform(self.low, self.high)


def _s(low: float, high: float | None = None) -> Span:
    return Span(low, high)


@dataclass(frozen=True)
class Timings:
    # Starting a task: PROVISIONING -> PENDING -> ACTIVATING -> RUNNING.
    provisioning: Span = field(default_factory=lambda: _s(1))
    pulling: Span = field(default_factory=lambda: _s(1))  # PENDING (image pull) -> ACTIVATING
    activating: Span = field(default_factory=lambda: _s(1))
    # Stopping: after StopTask lastStatus stays RUNNING this long (eventual consistency), then
    # DEACTIVATING (load balancer deregistration) -> STOPPING -> DEPROVISIONING -> STOPPED.
    stop_signal: Span = field(default_factory=lambda: _s(2))
    deactivating: Span = field(default_factory=lambda: _s(1))
    stopping: Span = field(default_factory=lambda: _s(1))
    deprovisioning: Span = field(default_factory=lambda: _s(1))
    # A container health check reports HEALTHY this long after RUNNING.
    health_grace: Span = field(default_factory=lambda: _s(2))
    # Without health check or load balancer ECS counts a RUNNING task as healthy after 40 s
    # (botocore model, DeploymentConfiguration.minimumHealthyPercent).
    no_health_check_settle: float = 2.0
    # elbv2 target: initial -> healthy (health check interval x healthy threshold).
    target_healthy_after: Span = field(default_factory=lambda: _s(2))
    # Service/deployment runningCount and pendingCount lag the tasks: a change is visible only
    # once it is this old AND this many DescribeServices calls have seen the service since.
    count_lag_seconds: float = 2.0
    count_lag_reads: int = 2
    # ... but never staler than this: a service nobody read for a while shows the truth.
    count_lag_max_seconds: float = 10.0
    # Crash-looping images: RUNNING this long before the essential container exits.
    crash_after: Span = field(default_factory=lambda: _s(3))
    # Standalone (one-off) tasks: RUNNING this long before they exit.
    one_off_duration: Span = field(default_factory=lambda: _s(5))
    # Application Auto Scaling puts desiredCount back within [min, max] after this long.
    autoscaling_delay: float = 5.0
    # Stopped tasks remain describable for about an hour (ECS docs), then vanish.
    stopped_task_retention: float = 3600.0
    # RunTask clientToken is remembered 24 h (ECS_Idempotency).
    client_token_ttl: float = 24 * 3600.0
    # Granularity of Simulator.advance(): the scheduler acts at most this often.
    step: float = 0.5

    @classmethod
    def fast(cls) -> Timings:
        """Whole-second, exact steps: tests can assert timelines to the second."""
        return cls()

    @classmethod
    def realistic(cls) -> Timings:
        """Roughly what Fargate shows: stop 5-15 s, provisioning -> running 10-30 s."""
        return cls(
            provisioning=_s(3, 8), pulling=_s(5, 15), activating=_s(2, 7),
            stop_signal=_s(2, 6), deactivating=_s(1, 4), stopping=_s(1, 3), deprovisioning=_s(1, 2),
            health_grace=_s(10, 30), no_health_check_settle=40.0, target_healthy_after=_s(10, 30),
            count_lag_seconds=3.0, count_lag_reads=1, count_lag_max_seconds=30.0,
            crash_after=_s(5, 20), one_off_duration=_s(8, 20),
            autoscaling_delay=60.0, step=1.0)
