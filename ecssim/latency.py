"""API latency: the real time an AWS API call takes on the wire and in the service, per call.

The simulator answers in microseconds; real ECS calls take tens of milliseconds, during which the
caller's thread is blocked (the GIL released). Product behaviour that depends on it — how many
worker threads a latency-bound process needs, how long one reader takes for a tick's ~150 batch
calls — is invisible without it. The sleep is real time, even on a FakeClock: the fake clock
models ECS's own state changes, the sleep models the network. It happens before the call takes
the simulator's lock, so concurrent calls overlap as they do against AWS.
"""
from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Latency:
    """Each call sleeps ``seconds`` ± ``jitter`` (uniform, never below 0) through ``sleep``; 0: no sleep."""

    seconds: float = 0.0
    jitter: float = 0.0
    sleep: Callable[[float], None] = time.sleep
    seed: int = 0
    # Its own RNG: drawing from the simulator's would make the simulated ECS's choices depend on
    # how threads interleave.
    _rng: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.seconds < 0 or self.jitter < 0:
            raise ValueError("latency and jitter are durations: not negative")
        self._rng = random.Random(self.seed)

    def draw(self) -> float:
        if self.jitter <= 0:
            return self.seconds
        with self._lock:
            return max(0.0, self.seconds + self._rng.uniform(-self.jitter, self.jitter))

    def wait(self) -> None:
        """Block the calling thread for one call's latency (nothing at all when there is none)."""
        if self.seconds <= 0 and self.jitter <= 0:
            return
        self.sleep(self.draw())
