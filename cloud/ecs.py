"""Read-only view of ECS services: what the environment page shows and what actions record.

Only names, counts, task definition revisions, deployments and image
references leave this module. Task definitions also hold environment
variables and secret ARNs; those are never copied out.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypeVar

from cloud.ecs_types import (
    DeploymentController,
    DeploymentStatus,
    RolloutState,
    ServiceHealth,
    ServiceStatus,
    TaskStatus,
)
from cloud.errors import AWS_ERRORS, aws_error
from cloud.task_definitions import main_container, short_td
from scope.errors import NotFound

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient
    from mypy_boto3_ecs.type_defs import (
        ListTasksRequestTypeDef,
        ServiceTypeDef,
        TaskDefinitionTypeDef,
        TaskTypeDef,
    )

__all__ = ["DESCRIBE_SERVICES_MAX", "Deployment", "EcsReader", "ServiceState", "short_td"]

DESCRIBE_SERVICES_MAX = 10  # the most names one DescribeServices call takes
DESCRIBE_TASKS_MAX = 100  # the most tasks one DescribeTasks call takes
DESCRIBE_SERVICE_DEPLOYMENTS_MAX = 20  # the most ARNs one DescribeServiceDeployments call takes
_T = TypeVar("_T")


@dataclass
class Deployment:
    id: str
    status: str  # as AWS sent it: a DeploymentStatus
    rollout_state: str  # a RolloutState, "" when ECS reports none
    task_definition: str
    desired: int
    running: int
    pending: int
    failed_tasks: int = 0
    reason: str = ""
    created_at: str | None = None


@dataclass
class ServiceState:
    name: str
    status: ServiceHealth
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
    controller: str = "ECS"  # deploymentController.type: a DeploymentController
    service_deployment_arn: str = ""  # currentServiceDeployment ("" where ECS reports none)
    target_groups: list[dict[str, Any]] = field(default_factory=list)  # [{arn, container, port}]
    circuit_breaker: bool = False
    rollback: bool = False
    alarms: list[str] = field(default_factory=list)  # deployment alarms (CloudWatch alarm names)
    task_definition_arn: str = ""
    container_digests: dict[str, str] = field(default_factory=dict)  # container name -> running digest

    @property
    def primary(self) -> Deployment | None:
        return next((d for d in self.deployments if d.status == DeploymentStatus.PRIMARY), None)

    @property
    def stable(self) -> bool:
        """One deployment, all desired tasks running, none pending, rollout not failed."""
        p = self.primary
        return (len(self.deployments) == 1 and p is not None and self.running == self.desired
                and self.pending == 0 and p.rollout_state not in (RolloutState.FAILED, RolloutState.IN_PROGRESS))

    def record(self) -> dict[str, Any]:
        """The state as stored in job rows and audit entries (before/after).

        The same dict as ``dataclasses.asdict`` gives, built shallowly: asdict
        deep-copies every value, which cost more than the ECS calls of a job.
        """
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["deployments"] = [{f.name: getattr(dep, f.name) for f in fields(dep)} for dep in self.deployments]
        d["image_digests"] = list(self.image_digests)
        d["container_digests"] = dict(self.container_digests)
        d["target_groups"] = [dict(tg) for tg in self.target_groups]
        d["alarms"] = list(self.alarms)
        p = self.primary
        d["deployment_id"] = p.id if p else ""
        d["rollout_state"] = p.rollout_state if p else ""
        return d

    @property
    def in_progress(self) -> bool:
        """A deployment is under way: more than one, or the primary still rolling out."""
        p = self.primary
        return len(self.deployments) > 1 or (p is not None and p.rollout_state == RolloutState.IN_PROGRESS)


def _health(svc: ServiceTypeDef, deployments: list[Deployment]) -> ServiceHealth:
    if svc.get("status") != ServiceStatus.ACTIVE:
        return ServiceHealth.DRAINING if svc.get("status") == ServiceStatus.DRAINING else ServiceHealth.INACTIVE
    primary = next((d for d in deployments if d.status == DeploymentStatus.PRIMARY), None)
    if primary and primary.rollout_state == RolloutState.FAILED:
        return ServiceHealth.FAILED
    desired, running = svc.get("desiredCount", 0), svc.get("runningCount", 0)
    if desired == 0 and running == 0:
        return ServiceHealth.STOPPED
    if len(deployments) > 1 or (primary and primary.rollout_state == RolloutState.IN_PROGRESS):
        return ServiceHealth.DEPLOYING
    if running < desired:
        return ServiceHealth.DEGRADED
    return ServiceHealth.HEALTHY


def active(services: list[ServiceTypeDef]) -> list[ServiceTypeDef]:
    """The services (DescribeServices dicts) that are ACTIVE: draining and deleted ones are not there for us."""
    return [s for s in services if s.get("status") == ServiceStatus.ACTIVE]


class EcsReader:
    """Reads service state through a given ECS client; caches immutable task definitions.

    With a ``pool``, a read of more than one batch (DescribeServices by 10, DescribeTasks by 100,
    DescribeServiceDeployments by 20) sends its batches concurrently on it: each call spends tens
    of milliseconds waiting on the network, and a gateway's tick at 1,000 services is ~150 of
    them — one after another, longer than the tick. botocore clients are thread-safe, and the
    AWS call budget's hooks still take a token per call, in whichever thread makes it."""

    _td_cache: dict[str, TaskDefinitionTypeDef] = {}
    _td_lock = threading.Lock()

    def __init__(self, ecs: ECSClient, cluster: str, pool: Executor | None = None) -> None:
        self.ecs, self.cluster, self.pool = ecs, cluster, pool

    def batched(self, call: Callable[[list[str]], list[_T]], items: list[str], size: int) -> list[_T]:
        """``call`` on each batch of ``size`` of ``items``, answers in the batches' order; concurrently
        on the pool when there is one and more than one batch. The first failure is raised."""
        chunks = [items[i:i + size] for i in range(0, len(items), size)]
        if self.pool is None or len(chunks) < 2:
            return [x for chunk in chunks for x in call(chunk)]
        return [x for got in self.pool.map(call, chunks) for x in got]

    def service_names(self) -> list[str]:
        names: list[str] = []
        try:
            for page in self.ecs.get_paginator("list_services").paginate(cluster=self.cluster):
                names += [a.rsplit("/", 1)[-1] for a in page.get("serviceArns", [])]
        except AWS_ERRORS as e:
            raise aws_error(e, f"listing the services of cluster {self.cluster}") from e
        return sorted(names)

    def describe(self, names: list[str]) -> list[ServiceTypeDef]:
        def one(batch: list[str]) -> list[ServiceTypeDef]:
            return self.ecs.describe_services(cluster=self.cluster, services=batch).get("services", [])

        try:
            return self.batched(one, names, DESCRIBE_SERVICES_MAX)
        except AWS_ERRORS as e:
            raise aws_error(e, f"describing services in cluster {self.cluster}") from e

    def service_deployments(self, arns: list[str]) -> list[dict[str, Any]]:
        """DescribeServiceDeployments, 20 at a time. AWS errors are raised as botocore sent them: the
        caller tells an ECS without service deployments (UnknownOperationException) from a failure."""
        def one(batch: list[str]) -> list[dict[str, Any]]:
            got = self.ecs.describe_service_deployments(serviceDeploymentArns=batch)
            return [dict(d) for d in got.get("serviceDeployments", [])]

        return self.batched(one, arns, DESCRIBE_SERVICE_DEPLOYMENTS_MAX)

    def task_definition(self, arn: str) -> TaskDefinitionTypeDef:
        # Task definition revisions are immutable, so caching them for the
        # process lifetime is always correct.
        td = self._td_cache.get(arn)
        if td is None:
            try:
                td = self.ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]
            except AWS_ERRORS as e:
                raise aws_error(e, f"reading task definition {short_td(arn)}") from e
            with self._td_lock:
                self._td_cache[arn] = td
        return td

    def image_of(self, td_arn: str) -> str:
        if not td_arn:
            return ""
        main = main_container(self.task_definition(td_arn))
        return str(main.get("image", "")) if main else ""

    def state_from(self, svc: ServiceTypeDef, with_digests: bool = False) -> ServiceState:
        deployments = [Deployment(
            id=d.get("id", ""), status=d.get("status", ""), rollout_state=d.get("rolloutState", ""),
            task_definition=short_td(d.get("taskDefinition", "")), desired=d.get("desiredCount", 0),
            running=d.get("runningCount", 0), pending=d.get("pendingCount", 0),
            failed_tasks=d.get("failedTasks", 0), reason=d.get("rolloutStateReason", ""),
            created_at=d["createdAt"].isoformat() if d.get("createdAt") else None)
            for d in svc.get("deployments", [])]
        td = svc.get("taskDefinition", "")
        dc = svc.get("deploymentConfiguration", {})
        created = [at for d in svc.get("deployments", []) if (at := d.get("createdAt"))]
        state = ServiceState(
            name=svc["serviceName"], status=_health(svc, deployments),
            desired=svc.get("desiredCount", 0), running=svc.get("runningCount", 0),
            pending=svc.get("pendingCount", 0), task_definition=short_td(td), image=self.image_of(td),
            deployments=deployments, min_healthy_percent=dc.get("minimumHealthyPercent", 100),
            max_percent=dc.get("maximumPercent", 200),
            last_deployment_at=max(created).isoformat() if created else None,
            controller=str(svc.get("deploymentController", {}).get("type") or DeploymentController.ECS),
            service_deployment_arn=svc.get("currentServiceDeployment", ""),
            target_groups=[{"arn": lb["targetGroupArn"], "container": lb.get("containerName", ""),
                            "port": lb.get("containerPort")}
                           for lb in svc.get("loadBalancers", []) if lb.get("targetGroupArn")],
            circuit_breaker=bool(dc.get("deploymentCircuitBreaker", {}).get("enable")),
            rollback=bool(dc.get("deploymentCircuitBreaker", {}).get("rollback")),
            alarms=list(dc.get("alarms", {}).get("alarmNames", [])) if dc.get("alarms", {}).get("enable") else [],
            task_definition_arn=td)
        if with_digests:
            state.image_digests = self.image_digests(state.name)
        return state

    def services(self) -> list[ServiceState]:
        return [self.state_from(s) for s in active(self.describe(self.service_names()))]

    def service(self, name: str, with_digests: bool = False) -> ServiceState:
        """The state of one service; NotFound when it is not an active service of this cluster."""
        return self.state_from(self.active_named(name, self.describe([name])), with_digests)

    @staticmethod
    def active_named(name: str, described: list[ServiceTypeDef]) -> ServiceTypeDef:
        """``name``'s service (by name or ARN) in a DescribeServices answer that may hold several;
        NotFound when ECS reported it missing (a failure entry) or not ACTIVE (draining, deleted)."""
        for s in active(described):
            if name in (s.get("serviceName"), s.get("serviceArn")):
                return s
        raise NotFound(f"No service named {name!r} in this environment.")

    def running_tasks(self, service: str) -> list[TaskTypeDef]:
        """The service's tasks that are RUNNING, found by their group (``service:NAME``)."""
        tasks = self.tasks(self.task_arns(service))
        # Filter by group too: some ECS implementations ignore serviceName.
        return [t for t in tasks if t.get("group") == f"service:{service}" and t.get("lastStatus") == TaskStatus.RUNNING]

    def task_arns(self, service: str, desired_status: str = TaskStatus.RUNNING) -> list[str]:
        """ARNs of the service's tasks whose desiredStatus is ``desired_status`` (every page)."""
        return self.list_tasks({"cluster": self.cluster, "serviceName": service,
                                "desiredStatus": desired_status},  # type: ignore[typeddict-item]
                               f"listing the tasks of {service}")

    def list_tasks(self, request: ListTasksRequestTypeDef, what: str) -> list[str]:
        """Every page of one ListTasks request (a service's tasks, or a whole cluster's).

        A plain nextToken loop: a paginator object costs more than the call it makes, and a
        service rarely has more than one page (100) of tasks."""
        arns: list[str] = []
        kw = dict(request)
        try:
            while True:
                page = self.ecs.list_tasks(**kw)  # type: ignore[arg-type]
                arns += page.get("taskArns", [])
                if not page.get("nextToken"):
                    return arns
                kw["nextToken"] = page["nextToken"]
        except AWS_ERRORS as e:
            raise aws_error(e, what) from e

    def tasks(self, arns: list[str]) -> list[TaskTypeDef]:
        """DescribeTasks, 100 at a time; a task ECS no longer knows is simply absent."""
        def one(batch: list[str]) -> list[TaskTypeDef]:
            return self.ecs.describe_tasks(cluster=self.cluster, tasks=batch).get("tasks", [])

        try:
            return self.batched(one, arns, DESCRIBE_TASKS_MAX)
        except AWS_ERRORS as e:
            raise aws_error(e, "describing tasks") from e

    def image_digests(self, service: str) -> list[str]:
        return self.digests_of(self.running_tasks(service))

    @staticmethod
    def digests_of(tasks: list[TaskTypeDef]) -> list[str]:
        return sorted({c["imageDigest"] for t in tasks for c in t.get("containers", []) if c.get("imageDigest")})
