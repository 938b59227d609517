"""``valetkey schedule run``: the scheduler process.

Reconciling environments against their on/off schedules is not built yet
(see the schedules issue); the process runs and stops cleanly so that the
Procfile is complete and deployments do not change when it arrives.
"""
from __future__ import annotations

import logging
import threading

from valetkey.runtime import Runtime

log = logging.getLogger("valetkey.scheduler")


def run_scheduler(rt: Runtime, stop: threading.Event, every: float = 60.0) -> None:
    scheduled = [e.name for e in rt.catalog if e.schedule is not None]
    log.info("scheduler started; environments with a schedule: %s", ", ".join(scheduled) or "none")
    while not stop.wait(every):
        pass
    log.info("scheduler stopped")
    rt.close()
