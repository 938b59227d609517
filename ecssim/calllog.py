"""Every AWS call the simulator saw, so tests can count them ("exactly one UpdateService")."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Call:
    time: float
    service: str  # "ecs", "ecr", "elbv2", "application-autoscaling"
    api: str  # "UpdateService"
    account: str
    region: str
    params: dict[str, Any]
    error: str = ""  # the error code returned, "" when it succeeded


@dataclass
class CallLog:
    calls: list[Call] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def mark_error(self, call: Call, code: str) -> None:
        with self._lock:
            for i in range(len(self.calls) - 1, -1, -1):
                if self.calls[i] is call:
                    self.calls[i] = Call(call.time, call.service, call.api, call.account, call.region,
                                         call.params, code)
                    return

    def of(self, api: str, service: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.api == api and (service is None or c.service == service)]

    def count(self, api: str) -> int:
        return len(self.of(api))

    def max_per_second(self, api: str | None = None) -> int:
        """The most calls (of ``api``, or of all) within any one-second window."""
        with self._lock:
            times = sorted(c.time for c in self.calls if api is None or c.api == api)
        best, j = 0, 0
        for i, t in enumerate(times):
            while times[j] <= t - 1.0:
                j += 1
            best = max(best, i - j + 1)
        return best

    def clear(self) -> None:
        with self._lock:
            self.calls.clear()
