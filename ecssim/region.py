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
    tasks: dict[str, SimTask] = field(default_factory=dict)  # task ARN -> task
    services: dict[tuple[str, str], SimService] = field(default_factory=dict)  # (cluster, name) -> service
    client_tokens: dict[tuple[str, str], ClientTokenEntry] = field(default_factory=dict)  # (cluster, token)
    one_off: dict[str, tuple[float | None, int]] = field(default_factory=dict)  # family -> (duration, exit)

    def service_by_arn_or_name(self, cluster: str, ref: str) -> SimService | None:
        return self.services.get((cluster, ref.rsplit("/", 1)[-1]))

    def tasks_of(self, svc: SimService) -> list[SimTask]:
        return [t for t in self.tasks.values() if t.service == svc.name and t.cluster_name == svc.cluster_name]

    def find_task(self, cluster: str, ref: str) -> SimTask | None:
        tid = ref.rsplit("/", 1)[-1]
        for t in self.tasks.values():
            if t.id == tid and (cluster in (t.cluster_name, t.cluster_arn)):
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
