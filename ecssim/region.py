"""Everything the simulator knows about one account in one Region."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .ecr import Registry
from .services import SimService
from .tasks import SimTask


@dataclass
class ClientTokenEntry:
    fingerprint: str
    task_arns: list[str]
    at: float


@dataclass
class RegionState:
    account: str
    region: str
    token: object  # identity of the moto backend generation this state belongs to (see Simulator.region)
    registry: Registry
    tasks: dict[str, SimTask] = field(default_factory=dict)  # task ARN -> task (add_task / drop_task)
    services: dict[tuple[str, str], SimService] = field(default_factory=dict)  # (cluster, name) -> service
    client_tokens: dict[tuple[str, str], ClientTokenEntry] = field(default_factory=dict)  # (cluster, token)
    one_off: dict[str, tuple[float | None, int]] = field(default_factory=dict)  # family -> (duration, exit)
    # Indexes of ``tasks``: every call looks up a service's tasks or a task by id, and a scan of every
    # task per call made a 1,000-service run quadratic (the stand-in, not the product, was what it measured).
    _by_service: dict[tuple[str, str], dict[str, SimTask]] = field(default_factory=dict, repr=False)
    _by_id: dict[str, list[SimTask]] = field(default_factory=dict, repr=False)

    def add_task(self, t: SimTask) -> None:
        self.tasks[t.arn] = t
        if t.service is not None:
            self._by_service.setdefault((t.cluster_name, t.service), {})[t.arn] = t
        self._by_id.setdefault(t.id, []).append(t)

    def drop_task(self, arn: str) -> None:
        t = self.tasks.pop(arn)
        if t.service is not None:
            self._by_service.get((t.cluster_name, t.service), {}).pop(arn, None)
        same = [x for x in self._by_id.get(t.id, []) if x is not t]
        if same:
            self._by_id[t.id] = same
        else:
            self._by_id.pop(t.id, None)

    def service_by_arn_or_name(self, cluster: str, ref: str) -> SimService | None:
        return self.services.get((cluster, ref.rsplit("/", 1)[-1]))

    def tasks_of(self, svc: SimService) -> list[SimTask]:
        return list(self._by_service.get((svc.cluster_name, svc.name), {}).values())

    def find_task(self, cluster: str, ref: str) -> SimTask | None:
        for t in self._by_id.get(ref.rsplit("/", 1)[-1], ()):
            if cluster in (t.cluster_name, t.cluster_arn):
                return t
        return None

    def snapshot_services(self) -> list[SimService]:
        return list(self.services.values())

    def target_group_services(self, tg_arn: str) -> list[SimService]:
        return [s for s in self.services.values()
                if any(lb.get("targetGroupArn") == tg_arn for lb in s.load_balancers)]

    @staticmethod
    def cluster_name(ref: Any) -> str:
        return str(ref or "default").rsplit("/", 1)[-1]
