"""Real-time mode for the demo: wall-clock time, realistic timings, a ticker thread.

Call ``start()`` in the process that runs the demo's ThreadedMotoServer
(valetkey/demo.py), after the server started; ``stop()`` on shutdown.
"""
from __future__ import annotations

from .clock import RealClock
from .install import install, uninstall
from .simulator import Simulator
from .throttle import Throttler
from .timings import Timings


def start(seed: int = 0, interval: float = 1.0, timings: Timings | None = None,
          throttle: bool = True) -> Simulator:
    """Install a real-time simulator into this process's moto and start its ticker."""
    sim = install(Simulator(clock=RealClock(), timings=timings or Timings.realistic(), seed=seed,
                            throttler=Throttler(enabled=throttle)))
    sim.start_ticker(interval)
    return sim


def stop() -> None:
    uninstall()  # also stops the ticker
