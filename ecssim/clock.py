"""Clocks the simulator runs on: a fake one tests move by hand, and wall-clock time for the demo."""
from __future__ import annotations

import threading
import time
from typing import Protocol

# 2026-01-01T00:00:00Z: fake timestamps look like real ones in responses (createdAt, stoppedAt...).
DEFAULT_START = 1_767_225_600.0


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (floats, so timelines can be asserted to the sub-second)."""
        ...


class FakeClock:
    """Time moves only when a test says so; every state change is then a function of the calls made."""

    def __init__(self, start: float = DEFAULT_START) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("time does not run backwards")
        with self._lock:
            self._now += seconds
            return self._now


class RealClock:
    """Wall-clock time, for the demo's ticker thread."""

    def now(self) -> float:
        return time.time()
