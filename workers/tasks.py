"""One-off ECS tasks of allow-listed task definition families, followed to STOPPED.

Nothing the requester sends reaches RunTask: the family comes from the
environment's allowlist, the revision is the family's latest ACTIVE one, the
network and launch settings come from the environment's config or one of its
services, and no overrides (role, image, command, environment) are ever sent.

At-least-once delivery: ``clientToken`` is the job id (ECS returns the same
task for a repeated token) and the task ARN is checkpointed into the job, so a
redelivered job follows the task it already started instead of calling
RunTask again. Task definition environment values and secrets are never read
out of the task definition.
"""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from cloud.ecs import EcsReader, active
from cloud.ecs_types import AssignPublicIp, LaunchType, TaskStatus
from cloud.task_definitions import container_logs, short_td, task_id
from scope.catalog import Environment
from scope.errors import Forbidden, OperationFailed
from workers.context import JobContext, Outcome
from workers.errors import aws_call

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient
    from mypy_boto3_ecs.type_defs import ServiceTypeDef, TaskDefinitionTypeDef, TaskTypeDef

Progress = Callable[[str, str], None]
Checkpoint = Callable[[dict[str, Any]], None]
MAX_REASON = 300


@dataclass(frozen=True)
class LogLocation:
    container: str
    group: str
    stream: str  # "" when the awslogs driver has no stream prefix (the stream name is then ECS-chosen)

    def describe(self) -> str:
        where = f"stream {self.stream}" if self.stream else "no stream prefix configured"
        return f"Logs of {self.container}: CloudWatch log group {self.group}, {where}"


def log_locations(td: Mapping[str, Any], arn: str) -> list[LogLocation]:
    """Where the essential containers of the task write their awslogs output."""
    return [LogLocation(c.container, c.group, c.stream_of(arn))
            for c in container_logs(td) if c.essential and c.awslogs]


@dataclass
class OneOffTask:
    ecs: ECSClient
    env: Environment
    progress: Progress
    checkpoint: Checkpoint
    poll_interval: float = 3.0
    timeout: float = 1800.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.time  # wall clock: the start is checkpointed across workers
    reason: str = "Valet Key"

    @property
    def cluster(self) -> str:
        return self.env.cluster

    _call = staticmethod(aws_call)

    # ---- starting ---------------------------------------------------------
    def task_definition(self, family_or_arn: str) -> TaskDefinitionTypeDef:
        return self._call(f"reading task definition {short_td(family_or_arn)}", lambda: self.ecs.describe_task_definition(
            taskDefinition=family_or_arn)["taskDefinition"])

    def _source_service(self) -> ServiceTypeDef | None:
        """The first ACTIVE service (by name) running in awsvpc mode: its network and launch settings are copied."""
        reader = EcsReader(self.ecs, self.cluster)
        names = self._call("listing services", reader.service_names)
        for svc in active(self._call("describing services", lambda: reader.describe(names))):
            if (svc.get("networkConfiguration") or {}).get("awsvpcConfiguration"):
                return svc
        return None

    def launch_settings(self, td: TaskDefinitionTypeDef) -> dict[str, Any]:
        """RunTask arguments for where and how the task runs (never what it runs)."""
        awsvpc = td.get("networkMode") == "awsvpc"
        svc = None
        if self.env.network is None:
            svc = self._source_service()
        args: dict[str, Any] = {}
        if self.env.network is not None:
            n = self.env.network
            vpc: dict[str, Any] = {"subnets": list(n.subnets),
                                   "assignPublicIp": AssignPublicIp.ENABLED if n.assign_public_ip else AssignPublicIp.DISABLED}
            if n.security_groups:
                vpc["securityGroups"] = list(n.security_groups)
            if awsvpc:
                args["networkConfiguration"] = {"awsvpcConfiguration": vpc}
        elif svc is not None and awsvpc:
            args["networkConfiguration"] = svc["networkConfiguration"]
        if awsvpc and "networkConfiguration" not in args:
            raise OperationFailed(f"{td.get('family')} uses awsvpc networking but {self.env.name} has no "
                                  f"[network] config and no service with an awsvpc network to copy it from.")
        if svc is not None and svc.get("capacityProviderStrategy"):
            args["capacityProviderStrategy"] = svc["capacityProviderStrategy"]
        elif svc is not None and svc.get("launchType"):
            args["launchType"] = svc["launchType"]
        else:
            compat = td.get("requiresCompatibilities") or [LaunchType.FARGATE.value]
            args["launchType"] = LaunchType.FARGATE if LaunchType.FARGATE in compat else compat[0]
        if svc is not None and svc.get("platformVersion") and args.get("launchType") == LaunchType.FARGATE:
            args["platformVersion"] = svc["platformVersion"]
        return args

    def start(self, family: str, params: dict[str, Any], client_token: str) -> str:
        td = self.task_definition(family)
        td_arn = td["taskDefinitionArn"]
        args = self.launch_settings(td)
        resp = self._call(f"starting a task of {family}", lambda: self.ecs.run_task(
            cluster=self.cluster, taskDefinition=td_arn, count=1, clientToken=client_token,
            startedBy=f"valetkey/{client_token}"[:128], **args))
        tasks = resp.get("tasks") or []
        if not tasks:
            why = "; ".join(f"{f.get('reason', 'unknown')}" + (f" ({f['detail']})" if f.get("detail") else "")
                            for f in resp.get("failures", [])) or "no task was returned"
            raise OperationFailed(f"ECS did not start a task of {short_td(td_arn)}: {why[:MAX_REASON]}")
        arn = tasks[0]["taskArn"]
        essential = [c.get("name", "") for c in td.get("containerDefinitions", []) if c.get("essential", True)]
        params.update(task_arn=arn, task_definition=td_arn, essential=essential, started_epoch=self.clock())
        self.checkpoint(params)
        self.progress("started", f"Started task {task_id(arn)} of {short_td(td_arn)}")
        for loc in log_locations(td, arn):
            self.progress("logs", loc.describe())
        return arn

    # ---- following --------------------------------------------------------
    def run(self, family: str, params: dict[str, Any], client_token: str) -> Outcome:
        if params.get("task_arn"):
            arn = str(params["task_arn"])
            self.progress("resume", f"Resuming: following task {task_id(arn)} started earlier (RunTask not repeated)")
        else:
            arn = self.start(family, params, client_token)
        started = float(params.get("started_epoch") or self.clock())
        task = self.wait_stopped(arn, started)
        return self.outcome(task, params, started)

    def describe(self, arn: str) -> TaskTypeDef:
        resp = self._call("describing the task", lambda: self.ecs.describe_tasks(cluster=self.cluster, tasks=[arn]))
        tasks = resp.get("tasks") or []
        if not tasks:
            raise OperationFailed(f"Task {task_id(arn)} can no longer be found in {self.cluster} "
                                  f"(ECS forgets stopped tasks after about an hour).")
        return tasks[0]

    def wait_stopped(self, arn: str, started: float) -> TaskTypeDef:
        last = ""
        while True:
            task = self.describe(arn)
            status = task.get("lastStatus", "")
            if status != last:
                self.progress("state", f"Task {task_id(arn)}: {status}")
                last = status
            if status == TaskStatus.STOPPED:
                return task
            elapsed = self.clock() - started
            if elapsed > self.timeout:
                self._call("stopping the task", lambda: self.ecs.stop_task(
                    cluster=self.cluster, task=arn, reason=f"{self.reason}: timed out"[:255]))
                raise OperationFailed(f"Timed out after {round(elapsed)}s ({status}); the task was stopped.")
            self.sleep(self.poll_interval)

    def outcome(self, task: TaskTypeDef, params: dict[str, Any], started: float) -> Outcome:
        td_arn = str(params.get("task_definition") or task.get("taskDefinitionArn", ""))
        secs = _runtime_seconds(task, self.clock() - started)
        essential = set(params.get("essential") or [])
        containers = [c for c in task.get("containers", []) if not essential or c.get("name") in essential]
        codes = [c.get("exitCode") for c in containers]
        reason = (task.get("stoppedReason") or "").strip()
        after: dict[str, Any] = {"task": task_id(str(task.get("taskArn", ""))), "task_definition": short_td(td_arn),
                 "exit_code": None, "stopped_reason": reason[:MAX_REASON]}
        failing = next((c for c in containers if c.get("exitCode") not in (0, None)), None)
        if containers and failing is None and None not in codes:
            after["exit_code"] = 0
            return Outcome(f"exit 0 after {secs}s", after=after)
        if failing is not None:
            after["exit_code"] = failing["exitCode"]
            why = reason or failing.get("reason") or "the essential container failed"
            raise OperationFailed(f"exit {failing['exitCode']} after {secs}s: {why[:MAX_REASON]}")
        missing = next((c for c in containers if c.get("exitCode") is None), None)
        why = reason or (missing or {}).get("reason") or "the essential container reported no exit code"
        raise OperationFailed(f"no exit code after {secs}s: {why[:MAX_REASON]}")


def _runtime_seconds(task: TaskTypeDef, fallback: float) -> int:
    """The task's own run time when ECS reports it, else the time since we started it."""
    end, begin = task.get("stoppedAt"), task.get("startedAt") or task.get("createdAt")
    if isinstance(end, dt.datetime) and isinstance(begin, dt.datetime):
        return max(0, round((end - begin).total_seconds()))
    return max(0, round(fallback))


def run_task(ctx: JobContext) -> Outcome:
    family = ctx.job.target
    if not ctx.params.get("task_arn") and family not in ctx.env.run_tasks:
        raise Forbidden(f"Refused at run time: {family} is no longer on {ctx.env.name}'s run_tasks "
                        f"allowlist; nothing was started.")
    s = ctx.settings
    op = OneOffTask(ctx.ecs_client(ctx.env), ctx.env, ctx.progress, ctx.checkpoint,
                    poll_interval=s.poll_interval, timeout=s.task_timeout, sleep=ctx.sleep, reason=ctx.reason)
    return op.run(family, ctx.params, client_token=ctx.job.id)
