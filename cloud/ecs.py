"""Read-only view of ECS services: what the environment page shows and what actions record.

Only names, counts, task definition revisions, deployments and image
references leave this module. Task definitions also hold environment
variables and secret ARNs; those are never copied out.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from scope.errors import NotFound, UpstreamError


def aws_error(e: Exception, doing: str) -> UpstreamError:
    """A safe, short message for an AWS failure (no request ids, no credentials)."""
    if isinstance(e, ClientError):
        code = e.response.get("Error", {}).get("Code", "Error")
        if code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation"):
            return UpstreamError(f"AccessDenied while {doing}: Valet Key's AWS role lacks a permission.", code=code)
        return UpstreamError(f"AWS refused {doing}: {code}.", code=code)
    return UpstreamError(f"AWS did not answer while {doing} ({type(e).__name__}).", code=type(e).__name__)


@dataclass
class Deployment:
    id: str
    status: str  # PRIMARY / ACTIVE
    rollout_state: str
    task_definition: str
    desired: int
    running: int
    pending: int
    failed_tasks: int = 0
    reason: str = ""


@dataclass
class ServiceState:
    name: str
    status: str  # HEALTHY, DEPLOYING, DEGRADED, STOPPED, FAILED, INACTIVE
    desired: int
    running: int
    pending: int
    task_definition: str  # family:revision
    image: str
    deployments: list[Deployment] = field(default_factory=list)
    min_healthy_percent: int = 100
    max_percent: int = 200
    image_digests: list[str] = field(default_factory=list)
    last_deployment_at: str | None = None

    @property
    def primary(self) -> Deployment | None:
        return next((d for d in self.deployments if d.status == "PRIMARY"), None)

    @property
    def stable(self) -> bool:
        """One deployment, all desired tasks running, none pending, rollout not failed."""
        p = self.primary
        return (len(self.deployments) == 1 and p is not None and self.running == self.desired
                and self.pending == 0 and p.rollout_state not in ("FAILED", "IN_PROGRESS"))

    def record(self) -> dict[str, Any]:
        """The state as stored in job rows and audit entries (before/after).

        The same dict as ``dataclasses.asdict`` gives, built shallowly: asdict
        deep-copies every value, which cost more than the ECS calls of a job.
        """
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["deployments"] = [{f.name: getattr(dep, f.name) for f in fields(dep)} for dep in self.deployments]
        d["image_digests"] = list(self.image_digests)
        p = self.primary
        d["deployment_id"] = p.id if p else ""
        d["rollout_state"] = p.rollout_state if p else ""
        return d


def short_td(arn: str) -> str:
    """arn:aws:ecs:...:task-definition/family:3 -> family:3"""
    return arn.rsplit("/", 1)[-1]


def _status(svc: dict[str, Any], deployments: list[Deployment]) -> str:
    if svc.get("status") != "ACTIVE":
        return svc.get("status", "INACTIVE")
    primary = next((d for d in deployments if d.status == "PRIMARY"), None)
    if primary and primary.rollout_state == "FAILED":
        return "FAILED"
    desired, running = svc.get("desiredCount", 0), svc.get("runningCount", 0)
    if desired == 0 and running == 0:
        return "STOPPED"
    if len(deployments) > 1 or (primary and primary.rollout_state == "IN_PROGRESS"):
        return "DEPLOYING"
    if running < desired:
        return "DEGRADED"
    return "HEALTHY"


class EcsReader:
    """Reads service state through a given ECS client; caches immutable task definitions."""

    _td_cache: dict[str, dict[str, Any]] = {}
    _td_lock = threading.Lock()

    def __init__(self, ecs: Any, cluster: str) -> None:
        self.ecs, self.cluster = ecs, cluster

    def service_names(self) -> list[str]:
        names: list[str] = []
        try:
            for page in self.ecs.get_paginator("list_services").paginate(cluster=self.cluster):
                names += [a.rsplit("/", 1)[-1] for a in page.get("serviceArns", [])]
        except (ClientError, BotoCoreError) as e:
            raise aws_error(e, f"listing the services of cluster {self.cluster}") from e
        return sorted(names)

    def describe(self, names: list[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        try:
            for i in range(0, len(names), 10):  # DescribeServices takes at most 10
                resp = self.ecs.describe_services(cluster=self.cluster, services=names[i:i + 10])
                out += resp.get("services", [])
        except (ClientError, BotoCoreError) as e:
            raise aws_error(e, f"describing services in cluster {self.cluster}") from e
        return out

    def task_definition(self, arn: str) -> dict[str, Any]:
        # Task definition revisions are immutable, so caching them for the
        # process lifetime is always correct.
        td = self._td_cache.get(arn)
        if td is None:
            try:
                td = self.ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]
            except (ClientError, BotoCoreError) as e:
                raise aws_error(e, f"reading task definition {short_td(arn)}") from e
            with self._td_lock:
                self._td_cache[arn] = td
        return td

    def image_of(self, td_arn: str) -> str:
        if not td_arn:
            return ""
        containers = self.task_definition(td_arn).get("containerDefinitions", [])
        main = next((c for c in containers if c.get("essential", True)), containers[0] if containers else {})
        return str(main.get("image", ""))

    def state_from(self, svc: dict[str, Any], with_digests: bool = False) -> ServiceState:
        deployments = [Deployment(
            id=d.get("id", ""), status=d.get("status", ""), rollout_state=d.get("rolloutState", ""),
            task_definition=short_td(d.get("taskDefinition", "")), desired=d.get("desiredCount", 0),
            running=d.get("runningCount", 0), pending=d.get("pendingCount", 0),
            failed_tasks=d.get("failedTasks", 0), reason=d.get("rolloutStateReason", ""))
            for d in svc.get("deployments", [])]
        td = svc.get("taskDefinition", "")
        dc = svc.get("deploymentConfiguration", {})
        created = [d.get("createdAt") for d in svc.get("deployments", []) if d.get("createdAt")]
        state = ServiceState(
            name=svc["serviceName"], status=_status(svc, deployments),
            desired=svc.get("desiredCount", 0), running=svc.get("runningCount", 0),
            pending=svc.get("pendingCount", 0), task_definition=short_td(td), image=self.image_of(td),
            deployments=deployments, min_healthy_percent=dc.get("minimumHealthyPercent", 100),
            max_percent=dc.get("maximumPercent", 200),
            last_deployment_at=max(created).isoformat() if created else None)
        if with_digests:
            state.image_digests = self.image_digests(state.name)
        return state

    def services(self) -> list[ServiceState]:
        return [self.state_from(s) for s in self.describe(self.service_names()) if s.get("status") == "ACTIVE"]

    def service(self, name: str, with_digests: bool = False) -> ServiceState:
        """The state of one service; NotFound when it is not an active service of this cluster."""
        found = [s for s in self.describe([name]) if s.get("status") == "ACTIVE"]
        if not found:
            raise NotFound(f"No service named {name!r} in this environment.")
        return self.state_from(found[0], with_digests)

    def running_tasks(self, service: str) -> list[dict[str, Any]]:
        """The service's tasks that are RUNNING, found by their group (``service:NAME``)."""
        arns: list[str] = []
        try:
            # A plain nextToken loop: a paginator object costs more than the call it makes,
            # and a service rarely has more than one page (100) of tasks.
            kw: dict[str, Any] = {"cluster": self.cluster, "serviceName": service, "desiredStatus": "RUNNING"}
            while True:
                page = self.ecs.list_tasks(**kw)
                arns += page.get("taskArns", [])
                if not page.get("nextToken"):
                    break
                kw["nextToken"] = page["nextToken"]
            tasks: list[dict[str, Any]] = []
            for i in range(0, len(arns), 100):
                tasks += self.ecs.describe_tasks(cluster=self.cluster, tasks=arns[i:i + 100]).get("tasks", [])
        except (ClientError, BotoCoreError) as e:
            raise aws_error(e, f"listing the tasks of {service}") from e
        # Filter by group too: some ECS implementations ignore serviceName.
        return [t for t in tasks if t.get("group") == f"service:{service}" and t.get("lastStatus") == "RUNNING"]

    def image_digests(self, service: str) -> list[str]:
        return self.digests_of(self.running_tasks(service))

    @staticmethod
    def digests_of(tasks: list[dict[str, Any]]) -> list[str]:
        return sorted({c["imageDigest"] for t in tasks for c in t.get("containers", []) if c.get("imageDigest")})
