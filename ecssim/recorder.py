"""ECS truth over time: what really runs, independent of the lagging counts the API shows.

After every change the simulator records, per service, how many tasks are
RUNNING and still wanted (desiredStatus RUNNING), and how many of those ECS
counts as healthy. Tests assert invariants over the whole timeline, e.g.
"healthy-and-wanted never fell below the minimum the service allows".
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TruthPoint:
    time: float
    cluster: str
    service: str
    desired: int
    running_wanted: int  # lastStatus RUNNING and desiredStatus RUNNING
    healthy_wanted: int  # ... and counted healthy by ECS (health check / target / settle time)
    min_allowed: int  # ceil(desired * minimumHealthyPercent / 100)


@dataclass
class TruthRecorder:
    points: list[TruthPoint] = field(default_factory=list)
    _last: dict[tuple[str, str], tuple[int, int, int, int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, p: TruthPoint) -> None:
        key = (p.cluster, p.service)
        sig = (p.desired, p.running_wanted, p.healthy_wanted, p.min_allowed)
        with self._lock:
            if self._last.get(key) == sig:
                return
            self._last[key] = sig
            self.points.append(p)

    def series(self, service: str, cluster: str | None = None) -> list[TruthPoint]:
        with self._lock:
            return [p for p in self.points if p.service == service and (cluster is None or p.cluster == cluster)]

    def window(self, service: str, cluster: str | None = None, since: float | None = None) -> list[TruthPoint]:
        """The points from ``since`` on, led by the state in force at ``since`` (the last earlier point)."""
        pts = self.series(service, cluster)
        if since is None:
            return pts
        before = [p for p in pts if p.time < since]
        return before[-1:] + [p for p in pts if p.time >= since]

    def min_running_wanted(self, service: str, cluster: str | None = None, since: float | None = None) -> int:
        return min((p.running_wanted for p in self.window(service, cluster, since)), default=0)

    def min_healthy_wanted(self, service: str, cluster: str | None = None, since: float | None = None) -> int:
        return min((p.healthy_wanted for p in self.window(service, cluster, since)), default=0)

    def violations(self, service: str, cluster: str | None = None, since: float | None = None) -> list[TruthPoint]:
        """Instants where healthy-and-wanted tasks were fewer than minimumHealthyPercent allows."""
        return [p for p in self.window(service, cluster, since) if p.healthy_wanted < p.min_allowed]

    def clear(self) -> None:
        with self._lock:
            self.points.clear()
            self._last.clear()
