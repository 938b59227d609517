"""Reading an ECS task definition: its main container and, per container, where the awslogs driver writes.

The one reader of ``logConfiguration``: the logs page (``cloud.logs.log_source``),
the IAM policy's log groups (``cloud.iam_policy``) and a one-off task's log
stream (``workers.tasks``) all ask it. Only log settings and names are read;
environment variables and secrets of a task definition are never touched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

AWSLOGS = "awslogs"


def short_td(arn: str) -> str:
    """arn:aws:ecs:...:task-definition/family:3 -> family:3"""
    return arn.rsplit("/", 1)[-1]


def task_id(arn: str) -> str:
    """arn:aws:ecs:...:task/cluster/0123abcd -> 0123abcd"""
    return arn.rsplit("/", 1)[-1]


def main_container(td: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The first essential container (the one whose image and logs the UI shows), else the first one."""
    containers = list(td.get("containerDefinitions") or [])
    return next((c for c in containers if c.get("essential", True)), containers[0] if containers else None)


@dataclass(frozen=True)
class ContainerLogs:
    """One container's log settings; the strings are "" where the task definition sets nothing."""

    container: str
    essential: bool
    driver: str
    group: str  # awslogs-group
    region: str  # awslogs-region ("": the region the task runs in)
    prefix: str  # awslogs-stream-prefix

    @property
    def awslogs(self) -> bool:
        return self.driver == AWSLOGS

    @property
    def stream_prefix(self) -> str:
        """What every stream of this container starts with (the driver names them PREFIX/CONTAINER/TASK-ID)."""
        return f"{self.prefix}/{self.container}/" if self.prefix else ""

    def stream_of(self, task_arn: str) -> str:
        """The stream of one task; "" without a prefix (the stream is then named by ECS' container id)."""
        return self.stream_prefix + task_id(task_arn) if self.prefix else ""


def _logs(c: Mapping[str, Any]) -> ContainerLogs:
    conf = c.get("logConfiguration") or {}
    opts = conf.get("options") or {}
    return ContainerLogs(container=str(c.get("name", "")), essential=bool(c.get("essential", True)),
                         driver=str(conf.get("logDriver") or ""), group=str(opts.get("awslogs-group") or ""),
                         region=str(opts.get("awslogs-region") or ""),
                         prefix=str(opts.get("awslogs-stream-prefix") or ""))


def container_logs(td: Mapping[str, Any]) -> list[ContainerLogs]:
    """The log settings of every container, in the task definition's order."""
    return [_logs(c) for c in td.get("containerDefinitions") or []]


def main_container_logs(td: Mapping[str, Any]) -> ContainerLogs | None:
    main = main_container(td)
    return None if main is None else _logs(main)
