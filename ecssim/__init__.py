"""ecssim: ECS as it really behaves, layered over moto, on an injectable clock. See README.md."""
from __future__ import annotations

from .clock import Clock, FakeClock, RealClock
from .install import active, install, uninstall
from .latency import Latency
from .simulator import Simulator
from .throttle import Throttler
from .timings import Span, Timings

__all__ = ["Clock", "FakeClock", "Latency", "RealClock", "Simulator", "Span", "Throttler", "Timings", "active", "install",
           "uninstall"]
