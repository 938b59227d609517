"""One-off ECS tasks of allow-listed task definition families, followed to STOPPED.

Nothing the requester sends reaches RunTask: the family comes from the
environment's allowlist, the revision is the family's latest ACTIVE one, the
network and launch settings come from the environment's config or one of its
services, and no overrides (role, image, command, environment) are ever sent.

At-least-once delivery: the launch parameters (task definition revision,
network, capacity) are checkpointed into the job *before* RunTask, and
``clientToken`` is the job id, so a redelivered job repeats exactly the same
RunTask (ECS answers with the task it already started) or, once the task ARN
is checkpointed, only follows it. Should ECS still answer ConflictException
(same token, other parameters), the task it lists in ``resourceIds`` is
adopted instead of failing the job while that task runs untracked
(ECS_Idempotency). Task definition environment values and secrets are never
read out of the task definition.

Capacity: one-off tasks run on on-demand capacity — the service's launch type,
or FARGATE — never on a copied FARGATE_SPOT strategy, where a migration could
be interrupted; ``task_capacity_provider`` in the catalog chooses a provider.

When the task has stopped, the last lines (at most 50 lines / 8 KB) of each
essential container's awslogs stream are added to the job's events (shown on
the job page): only what the task printed, never its environment or secrets,
and never copied into the audit trail.
"""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from botocore.exceptions import ClientError

from cloud.ecs import EcsReader, active
from cloud.ecs_types import AssignPublicIp, LaunchType, TaskStatus
from cloud.errors import AWS_ERRORS, aws_error, error_code
from cloud.task_definitions import container_logs, short_td, task_id
from scope.catalog import Environment
from scope.errors import Forbidden, OperationFailed, job_error
from workers.context import JobContext, Outcome
from workers.errors import aws_call

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient
    from mypy_boto3_ecs.type_defs import ServiceTypeDef, TaskDefinitionTypeDef, TaskTypeDef
    from mypy_boto3_logs import CloudWatchLogsClient

Progress = Callable[[str, str], None]
Checkpoint = Callable[[dict[str, Any]], None]
MAX_REASON = 300
OUTPUT_LINES = 50  # the last lines of a task's output kept with its job
OUTPUT_BYTES = 8 * 1024
SPOT = "FARGATE_SPOT"


@dataclass(frozen=True)
class LogLocation:
    container: str
    group: str
    stream: str  # "" when the awslogs driver has no stream prefix (the stream name is then ECS-chosen)

    def describe(self) -> str:
        where = f"stream {self.stream}" if self.stream else "no stream prefix configured"
        return f"Logs of {self.container}: CloudWatch log group {self.group}, {where}"


def log_locations(td: Mapping[str, Any], arn: str, region: str | None = None) -> list[LogLocation]:
    """Where the essential containers of the task write their awslogs output (in ``region``, if given)."""
    return [LogLocation(c.container, c.group, c.stream_of(arn))
            for c in container_logs(td) if c.essential and c.awslogs
            and (region is None or c.region in ("", region))]


def last_lines(messages: list[str], lines: int = OUTPUT_LINES, limit: int = OUTPUT_BYTES) -> list[str]:
    """The newest ``lines`` messages whose UTF-8 total stays within ``limit`` bytes (a long line is cut)."""
    out: list[str] = []
    used = 0
    for m in reversed(messages[-lines:]):
        m = m.rstrip("\n")
        size = len(m.encode())
        if used + size > limit:
            room = limit - used
            if room > 0 and not out:
                out.append("…" + m.encode()[-room:].decode(errors="ignore"))
            break
        out.append(m)
        used += size
    return out[::-1]


def conflict_task(e: BaseException) -> str | None:
    """The task a ConflictException says the clientToken already started (ECS_Idempotency: resourceIds)."""
    if isinstance(e, ClientError) and error_code(e) == "ConflictException":
        ids = e.response.get("resourceIds") or []  # type: ignore[typeddict-item]
        return str(ids[0]) if ids else None
    return None


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
    logs: CloudWatchLogsClient | None = None  # to capture the task's output; None: not captured
    continuing: bool = False  # this call continues a suspended job: no "Resuming" note

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
        strategy = (svc or {}).get("capacityProviderStrategy") or []
        if self.env.task_capacity_provider:
            args["capacityProviderStrategy"] = [{"capacityProvider": self.env.task_capacity_provider, "weight": 1}]
        elif svc is not None and svc.get("launchType"):
            args["launchType"] = svc["launchType"]
        elif strategy and not any(p.get("capacityProvider") in (LaunchType.FARGATE, SPOT) for p in strategy):
            # The service's own (EC2 Auto Scaling) providers: the only capacity the cluster has.
            args["capacityProviderStrategy"] = strategy
        else:
            # On-demand: FARGATE rather than a copied FARGATE_SPOT weight that could interrupt a migration.
            compat = td.get("requiresCompatibilities") or [LaunchType.FARGATE.value]
            args["launchType"] = LaunchType.FARGATE if LaunchType.FARGATE in compat else compat[0]
        if svc is not None and svc.get("platformVersion") and args.get("launchType") == LaunchType.FARGATE:
            args["platformVersion"] = svc["platformVersion"]
        return args

    def plan(self, family: str, params: dict[str, Any]) -> dict[str, Any]:
        """The launch parameters, resolved once and checkpointed before RunTask: a redelivered job
        sends the very same RunTask (same revision, network, capacity), which ECS answers idempotently."""
        if isinstance(params.get("launch"), dict):
            return dict(params["launch"])
        td = self.task_definition(family)
        launch = {"task_definition": td["taskDefinitionArn"], "args": self.launch_settings(td),
                  "essential": [c.get("name", "") for c in td.get("containerDefinitions", []) if c.get("essential", True)],
                  "logs": [asdict(c) for c in container_logs(td) if c.essential and c.awslogs
                           and c.region in ("", self.env.region)]}
        params["launch"] = launch
        self.checkpoint(params)
        return launch

    def start(self, family: str, params: dict[str, Any], client_token: str) -> str:
        launch = self.plan(family, params)
        td_arn, args = str(launch["task_definition"]), dict(launch["args"])
        try:
            resp = self.ecs.run_task(cluster=self.cluster, taskDefinition=td_arn, count=1, clientToken=client_token,
                                     startedBy=f"valetkey/{client_token}"[:128], **args)
        except AWS_ERRORS as e:
            adopted = conflict_task(e)
            if adopted is None:
                raise job_error(aws_error(e, f"starting a task of {family}")) from e
            self.progress("resume", f"ECS already started task {task_id(adopted)} for this job (clientToken); "
                                    f"following it instead of starting another")
            return self._started(adopted, td_arn, launch, params)
        tasks = resp.get("tasks") or []
        if not tasks:
            why = "; ".join(f"{f.get('reason', 'unknown')}" + (f" ({f['detail']})" if f.get("detail") else "")
                            for f in resp.get("failures", [])) or "no task was returned"
            raise OperationFailed(f"ECS did not start a task of {short_td(td_arn)}: {why[:MAX_REASON]}")
        return self._started(tasks[0]["taskArn"], td_arn, launch, params)

    def _started(self, arn: str, td_arn: str, launch: dict[str, Any], params: dict[str, Any]) -> str:
        params.update(task_arn=arn, task_definition=td_arn, essential=launch.get("essential") or [],
                      started_epoch=self.clock())
        self.checkpoint(params)
        self.progress("started", f"Started task {task_id(arn)} of {short_td(td_arn)}")
        for loc in self._locations(params):
            self.progress("logs", loc.describe())
        return arn

    @staticmethod
    def _locations(params: dict[str, Any]) -> list[LogLocation]:
        arn = str(params.get("task_arn") or "")
        out = []
        for c in (params.get("launch") or {}).get("logs") or []:
            prefix = c.get("prefix") or ""
            out.append(LogLocation(c.get("container", ""), c.get("group", ""),
                                   f"{prefix}/{c.get('container', '')}/{task_id(arn)}" if prefix else ""))
        return out

    # ---- output -----------------------------------------------------------
    def output(self, params: dict[str, Any]) -> dict[str, list[str]]:
        """The last lines each essential container logged, added to the job's events. Best effort:
        the outcome is the exit code; a log that cannot be read is said, not fatal."""
        out: dict[str, list[str]] = {}
        if self.logs is None:
            return out
        for loc in self._locations(params):
            if not loc.stream:
                continue
            try:
                events = self.logs.get_log_events(logGroupName=loc.group, logStreamName=loc.stream,
                                                  startFromHead=False, limit=OUTPUT_LINES).get("events", [])
            except AWS_ERRORS as e:
                code = error_code(e) if isinstance(e, ClientError) else type(e).__name__
                why = "no output was logged" if code == "ResourceNotFoundException" else f"could not read it ({code})"
                self.progress("output", f"Output of {loc.container}: {why}")
                continue
            lines = last_lines([str(ev.get("message", "")) for ev in events])
            out[loc.container] = lines
            if lines:
                self.progress("output", f"Last {len(lines)} line(s) of {loc.container}'s output:\n" + "\n".join(lines))
            else:
                self.progress("output", f"Output of {loc.container}: no output was logged")
        return out

    # ---- following --------------------------------------------------------
    def run(self, family: str, params: dict[str, Any], client_token: str) -> Outcome:
        if params.get("task_arn"):
            arn = str(params["task_arn"])
            if not self.continuing:
                self.progress("resume", f"Resuming: following task {task_id(arn)} started earlier "
                                        "(RunTask not repeated)")
        else:
            arn = self.start(family, params, client_token)
        started = float(params.get("started_epoch") or self.clock())
        task = self.wait_stopped(arn, started, params)
        # The output goes to the job's events only, never into the outcome's ``after``: that is copied
        # into the audit trail, which is kept and exported, and a task prints whatever it likes.
        self.output(params)
        return self.outcome(task, params, started)

    def describe(self, arn: str) -> TaskTypeDef:
        resp = self._call("describing the task", lambda: self.ecs.describe_tasks(cluster=self.cluster, tasks=[arn]))
        tasks = resp.get("tasks") or []
        if not tasks:
            raise OperationFailed(f"Task {task_id(arn)} can no longer be found in {self.cluster} "
                                  f"(ECS forgets stopped tasks after about an hour).")
        return tasks[0]

    def wait_stopped(self, arn: str, started: float, params: dict[str, Any] | None = None) -> TaskTypeDef:
        """Poll until STOPPED. Between polls the last state seen is checkpointed (``params``) and the
        job waits (in a worker: it is suspended and the next poll starts again from ``run``)."""
        params = params if params is not None else {}
        while True:
            task = self.describe(arn)
            status = task.get("lastStatus", "")
            if status != params.get("last_state"):
                self.progress("state", f"Task {task_id(arn)}: {status}")
                params["last_state"] = status
            if status == TaskStatus.STOPPED:
                return task
            elapsed = self.clock() - started
            if elapsed > self.timeout:
                self._call("stopping the task", lambda: self.ecs.stop_task(
                    cluster=self.cluster, task=arn, reason=f"{self.reason}: timed out"[:255]))
                raise OperationFailed(f"Timed out after {round(elapsed)}s ({status}); the task was stopped.")
            self.checkpoint(params)
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
                    poll_interval=s.poll_interval, timeout=s.task_timeout, sleep=ctx.sleep, reason=ctx.reason,
                    logs=ctx.logs_client(ctx.env) if ctx.logs_client else None, continuing=ctx.continuing)
    return op.run(family, ctx.params, client_token=ctx.job.id)
