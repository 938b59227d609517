"""The least-privilege IAM policy for the configured environments (``valetkey iam-policy``).

What Valet Key calls, and how each call is scoped (checked against the AWS
Service Authorization Reference for ECS and CloudWatch Logs):

- ``ecs:DescribeClusters`` on the cluster ARN (in the ``Read`` statement below);
- ``ecs:ListServices`` and ``ecs:ListTasks`` on ``*`` with an ``ecs:cluster``
  condition: ListServices defines no resource type, and ListTasks' resource
  (the container instance) does not exist for Fargate tasks, so the cluster
  condition is the scope. Both are read-only;
- ``ecs:DescribeServices`` and ``ecs:UpdateService`` (forceNewDeployment for
  redeploy, desiredCount for schedules) on ``service/CLUSTER/*``, and
  ``ecs:DescribeTasks`` and ``ecs:StopTask`` (restart) on ``task/CLUSTER/*``,
  in one statement: each action matches only its own resource type;
- ``ecs:RunTask`` only on ``task-definition/FAMILY:*`` of the allow-listed
  families, with an ``ecs:cluster`` condition (RunTask sends no tags, so no
  ``ecs:TagResource``);
- ``iam:PassRole`` only for the task and execution roles of those families,
  only to ``ecs-tasks.amazonaws.com``; a family whose roles are unknown gets
  none (RunTask of it fails until the policy is regenerated) — never a wildcard;
- ``ecs:DescribeTaskDefinition`` on ``*``: the action supports no resource
  ARNs; it is read-only;
- ``logs:FilterLogEvents``, ``logs:GetLogEvents``, ``logs:DescribeLogStreams``
  on the log groups named by the task definitions' ``awslogs`` options; when
  they are unknown for an environment, on ``log-group:/ecs/*`` of its region
  and account (read-only; the ECS console's default naming);
- ``ecs:ListServiceDeployments`` (resource type ``service``),
  ``ecs:DescribeServiceDeployments`` (``service-deployment``) and
  ``ecs:DescribeServiceRevisions`` (``service-revision``) on the cluster's
  ``service/CLUSTER/*``, ``service-deployment/CLUSTER/*`` and
  ``service-revision/CLUSTER/*`` (the shape of AWS's own example in "Permissions
  required for viewing Amazon ECS service deployments"); no ``ecs:cluster``
  condition, which these actions are not documented to carry (a condition on a
  key absent from the request would deny);
- ``ecr:DescribeImages`` (resource type ``repository``, required) on the
  repositories of the images of the services' task definitions (a restart
  checks that the running digest still exists), in the registry's own account
  and region, one statement for all environments; unknown: on
  ``repository/*`` of the environment's account and region (read-only);
- ``elasticloadbalancing:DescribeTargetHealth`` on ``*``: ELBv2's Describe
  actions define no resource types (read-only);
- ``application-autoscaling:DescribeScalableTargets`` on ``*`` (no resource
  types; read-only) and ``application-autoscaling:RegisterScalableTarget``
  (the scheduler lowers and restores MinCapacity) when a scheduled, enabled
  environment lives in that account and region, on its ``scalable-target/*``
  (one statement per account and region): the ``scalable-target`` resource is
  named by an opaque id, not by the service, so no narrower ARN can be
  written, and its condition keys are tags only. Application Auto Scaling
  changes the service's desired count through its service-linked role.

Checked against the Service Authorization Reference (Amazon ECS, Amazon ECR,
Elastic Load Balancing V2, Application Auto Scaling, CloudWatch Logs).

Every ECS statement but DescribeTaskDefinition carries its cluster's scope, so
one document can be attached in several accounts: statements naming another
account never match there.
A disabled environment (prod unless enabled) gets read-only statements only,
so AWS itself refuses a mutation there even if Valet Key were subverted.
"""
from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Iterable, Mapping, NamedTuple, Sequence

from botocore.exceptions import ClientError

from cloud.errors import AWS_ERRORS, error_code
from cloud.task_definitions import container_logs
from scope.catalog import Catalog, Environment

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient

VERSION = "2012-10-17"
ECS_TASKS_SERVICE = "ecs-tasks.amazonaws.com"
FALLBACK_LOG_GROUP = "/ecs/*"
# Managed policies may hold this many characters, whitespace not counted.
MANAGED_POLICY_MAX_CHARS = 6144
FALLBACK_REPOSITORY = "*"
_ECR_IMAGE = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?"
                        r"/(?P<repo>[^:@]+)")

_ARN = re.compile(r"^arn:(?P<partition>[^:]+):(?P<service>[^:]*):(?P<region>[^:]*):(?P<account>[^:]*):(?P<resource>.+)$")

TaskRoles = Mapping[str, Sequence[str]]
LogGroups = Mapping[str, Sequence[str]]
Repositories = Mapping[str, Sequence[str]]  # environment -> ECR repository ARNs


def ecr_repository_arn(image: str, partition: str = "aws") -> str | None:
    """The ECR repository ARN of an image URI (None for images outside ECR, e.g. Docker Hub)."""
    m = _ECR_IMAGE.match(image)
    if not m:
        return None
    return f"arn:{partition}:ecr:{m['region']}:{m['account']}:repository/{m['repo']}"


class _Where(NamedTuple):
    partition: str
    region: str
    account: str
    cluster: str  # the cluster *name*

    def arn(self, service: str, resource: str) -> str:
        return f"arn:{self.partition}:{service}:{self.region}:{self.account}:{resource}"

    @property
    def cluster_arn(self) -> str:
        return self.arn("ecs", f"cluster/{self.cluster}")


def _where(env: Environment, account: str, partition: str) -> _Where:
    """Partition, region, account and cluster name for an environment's ARNs.

    A cluster given as an ARN is the truth about where the resources live;
    otherwise the account of ``role_arn`` (the role Valet Key assumes there)
    wins over the ``account`` argument.
    """
    region, cluster = env.region, env.cluster
    if env.role_arn:
        m = _ARN.match(env.role_arn)
        if m:
            partition = m["partition"]
            account = m["account"] or account
    m = _ARN.match(cluster)
    if m and m["resource"].startswith("cluster/"):
        partition = m["partition"]
        region = m["region"] or region
        account = m["account"] or account
        cluster = m["resource"].split("/", 1)[1]
    return _Where(partition, region, account or "*", cluster)


def _account_of(arn: str) -> str:
    m = _ARN.match(arn)
    return m["account"] if m else ""


def sid_prefix(name: str) -> str:
    """``qa-eu`` -> ``QaEu``: Sids may hold only letters and digits."""
    parts = re.split(r"[^A-Za-z0-9]+", name)
    return "".join(p[:1].upper() + p[1:] for p in parts if p) or "Env"


def _arn_condition(key: str, value: str) -> dict[str, Any]:
    op = "ArnLike" if "*" in value else "ArnEquals"
    return {op: {key: value}}


def _statement(sid: str, actions: Sequence[str], resources: Sequence[str],
               condition: Mapping[str, Any] | None = None) -> dict[str, Any]:
    st: dict[str, Any] = {"Sid": sid, "Effect": "Allow", "Action": sorted(actions),
                          "Resource": list(resources) if len(resources) > 1 else resources[0]}
    if condition:
        st["Condition"] = dict(condition)
    return st


def _log_group_resources(w: _Where, groups: Iterable[str]) -> list[str]:
    # CloudWatch Logs ("Overview of managing access permissions"): the ARN with the trailing ``:*`` is the
    # one IAM policies use for every action but TagResource, UntagResource and ListTagsForResource (which
    # Valet Key never calls); it also covers GetLogEvents' log streams ``log-group:NAME:log-stream:S``.
    return list(dict.fromkeys(w.arn("logs", f"log-group:{g}:*") for g in groups))


def image_repositories(env: Environment, account: str = "*", partition: str = "aws",
                       repositories: Sequence[str] | None = None) -> list[str]:
    """The ECR repositories ``ecr:DescribeImages`` may read for ``env``; None: unknown (its account/Region's)."""
    if repositories is None:
        return [_where(env, account, partition).arn("ecr", f"repository/{FALLBACK_REPOSITORY}")]
    return sorted(set(repositories))


def environment_statements(env: Environment, sid: str, account: str = "*", partition: str = "aws",
                           task_roles: TaskRoles | None = None,
                           log_groups: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The statements for one environment; ``log_groups`` None means unknown (fallback used)."""
    w = _where(env, account, partition)
    in_cluster = _arn_condition("ecs:cluster", w.cluster_arn)
    services = w.arn("ecs", f"service/{w.cluster}/*")
    tasks = w.arn("ecs", f"task/{w.cluster}/*")
    mutate = env.enabled
    out = [
        _statement(f"{sid}ListInCluster", ["ecs:ListServices", "ecs:ListTasks"], ["*"], in_cluster),
        # An action authorizes only against its own resource type: UpdateService never matches a task ARN,
        # StopTask never a service ARN, so one statement holds both pairs.
        _statement(f"{sid}Services", ["ecs:DescribeServices", "ecs:DescribeTasks"]
                   + (["ecs:UpdateService", "ecs:StopTask"] if mutate else []), [services, tasks], in_cluster),
        # Read-only, without the ecs:cluster condition these actions are not documented to carry;
        # each matches only its own resource type among these (Service Authorization Reference).
        _statement(f"{sid}Read", ["ecs:DescribeClusters", "ecs:ListServiceDeployments",
                                  "ecs:DescribeServiceDeployments", "ecs:DescribeServiceRevisions"],
                   [w.cluster_arn, services, w.arn("ecs", f"service-deployment/{w.cluster}/*"),
                    w.arn("ecs", f"service-revision/{w.cluster}/*")]),
    ]
    if mutate and env.run_tasks:
        families = sorted(set(env.run_tasks))
        out.append(_statement(f"{sid}RunTask", ["ecs:RunTask"],
                              [w.arn("ecs", f"task-definition/{f}:*") for f in families], in_cluster))
        roles: list[str] = []
        for fam in families:
            for role in (task_roles or {}).get(fam, ()):
                acct = _account_of(role)
                if not role or "*" in role or not acct:
                    continue  # never widen PassRole through a pattern or a malformed ARN
                if w.account != "*" and acct != w.account:
                    continue  # ECS passes only roles of the task's own account
                if role not in roles:
                    roles.append(role)
        if roles:
            out.append(_statement(f"{sid}PassTaskRoles", ["iam:PassRole"], sorted(roles),
                                  {"StringEquals": {"iam:PassedToService": ECS_TASKS_SERVICE}}))
    groups = [FALLBACK_LOG_GROUP] if log_groups is None else sorted(set(log_groups))
    if groups:
        out.append(_statement(f"{sid}Logs", ["logs:DescribeLogStreams", "logs:FilterLogEvents",
                                             "logs:GetLogEvents"], _log_group_resources(w, groups)))
    return out


def _statement_groups(catalog: Catalog, account: str, partition: str, task_roles: TaskRoles | None,
                      log_groups: LogGroups | None, repositories: Repositories | None) -> list[list[dict[str, Any]]]:
    """The account-wide read statements, then one group of statements per environment."""
    shared: list[dict[str, Any]] = [
        # DescribeTaskDefinition supports no resource-level permissions; read-only.
        _statement("ReadTaskDefinitions", ["ecs:DescribeTaskDefinition"], ["*"]),
        # ELBv2 Describe* actions define no resource types; read-only (restart waits for target health).
        _statement("ReadTargetHealth", ["elasticloadbalancing:DescribeTargetHealth"], ["*"]),
    ]
    scaled = sorted({_where(e, account, partition).arn("application-autoscaling", "scalable-target/*")
                     for e in catalog if e.schedule is not None and e.enabled})
    if scaled:
        # DescribeScalableTargets defines no resource types; read-only.
        shared.append(_statement("ReadScalableTargets", ["application-autoscaling:DescribeScalableTargets"], ["*"]))
        # Scalable targets are named by opaque ids: the account and Region are the narrowest scope.
        shared.append(_statement("ScheduleMinCapacity", ["application-autoscaling:RegisterScalableTarget"], scaled))
    repos: list[str] = []
    for env in catalog:
        known = None if repositories is None or env.name not in repositories else repositories[env.name]
        repos += [r for r in image_repositories(env, account, partition, known) if r not in repos]
    if repos:
        # Environments usually share their repositories (one image, many stages): one statement for all.
        shared.append(_statement("ReadImages", ["ecr:DescribeImages"], sorted(repos)))
    groups = [shared]
    used: set[str] = {s["Sid"].lower() for s in shared}
    for env in catalog:
        base = sid_prefix(env.name)
        sid, n = base, 2
        while sid.lower() in used:  # 'qa-eu' and 'qa_eu' must not share Sids
            sid, n = f"{base}{n}", n + 1
        used.add(sid.lower())
        lg = None if log_groups is None or env.name not in log_groups else log_groups[env.name]
        groups.append(environment_statements(env, sid, account, partition, task_roles, lg))
    return groups


def policy_for(catalog: Catalog, account: str = "*", partition: str = "aws",
               task_roles: TaskRoles | None = None, log_groups: LogGroups | None = None,
               repositories: Repositories | None = None) -> dict[str, Any]:
    """The IAM policy document (and nothing else) covering every environment of ``catalog``."""
    groups = _statement_groups(catalog, account, partition, task_roles, log_groups, repositories)
    return {"Version": VERSION, "Statement": [s for g in groups for s in g]}


def policies_for(catalog: Catalog, account: str = "*", partition: str = "aws",
                 task_roles: TaskRoles | None = None, log_groups: LogGroups | None = None,
                 repositories: Repositories | None = None,
                 limit: int = MANAGED_POLICY_MAX_CHARS) -> list[dict[str, Any]]:
    """The same statements as ``policy_for``, in as few documents as fit ``limit`` characters each
    (IAM's managed-policy quota): an environment's statements stay together while they fit in one."""
    docs: list[list[dict[str, Any]]] = [[]]

    def fits(statements: list[dict[str, Any]]) -> bool:
        return policy_size({"Version": VERSION, "Statement": statements}) <= limit

    for group in _statement_groups(catalog, account, partition, task_roles, log_groups, repositories):
        if fits(docs[-1] + group):
            docs[-1] += group
            continue
        if docs[-1] and fits(group):
            docs.append(list(group))
            continue
        for st in group:  # an environment too large for one document: statement by statement
            if not fits(docs[-1] + [st]) and docs[-1]:
                docs.append([])
            docs[-1].append(st)
    return [{"Version": VERSION, "Statement": d} for d in docs if d]


def policy_size(policy: Mapping[str, Any]) -> int:
    """Characters IAM counts against the managed-policy quota (whitespace excluded)."""
    return len(re.sub(r"\s+", "", json.dumps(policy, separators=(",", ":"))))


def gaps(catalog: Catalog, task_roles: TaskRoles | None, log_groups: LogGroups | None,
         repositories: Repositories | None = None) -> list[str]:
    """Warnings for what the policy leaves out or widens because it is unknown."""
    out: list[str] = []
    for env in catalog:
        if env.enabled:
            # A family known to have no roles needs no PassRole; only missing ones are gaps.
            unknown = [f for f in env.run_tasks if f not in (task_roles or {})]
            if unknown:
                out.append(f"{env.name}: task/execution roles of {', '.join(sorted(unknown))} unknown: no "
                           f"iam:PassRole for them (RunTask of a family that has a role will be refused)")
        if log_groups is None or env.name not in log_groups:
            out.append(f"{env.name}: log groups unknown: logs access falls back to log-group:{FALLBACK_LOG_GROUP}")
        if repositories is None or env.name not in repositories:
            out.append(f"{env.name}: image repositories unknown: ecr:DescribeImages falls back to every "
                       f"repository of its account and region")
    return out


# ---- discovery ------------------------------------------------------------------
class Discovery(NamedTuple):
    task_roles: dict[str, list[str]]
    log_groups: dict[str, list[str]]
    warnings: list[str]
    repositories: dict[str, list[str]] = {}  # environment -> ECR repository ARNs of its images


def _reason(e: Exception) -> str:
    """For the operator running the CLI: AWS' code and message (their own account's words, not a user's)."""
    if isinstance(e, ClientError):
        return f"{error_code(e)}: {e.response.get('Error', {}).get('Message', '')}".rstrip(": ")
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}".rstrip(": ")


def _awslogs_groups(td: Mapping[str, Any], env: Environment, warnings: list[str]) -> list[str]:
    groups: list[str] = []
    for c in container_logs(td):
        if not c.awslogs or not c.group:
            continue
        if c.region and c.region != env.region:
            warnings.append(f"{env.name}: log group {c.group} is in {c.region}, not {env.region}: "
                            f"not covered (Valet Key reads logs in the environment's region)")
            continue
        if c.group not in groups:
            groups.append(c.group)
    return groups


def _repositories(td: Mapping[str, Any], partition: str) -> list[str]:
    return [arn for c in td.get("containerDefinitions") or []
            if (arn := ecr_repository_arn(str(c.get("image") or ""), partition))]


def _roles(td: Mapping[str, Any]) -> list[str]:
    return [r for r in (td.get("taskRoleArn"), td.get("executionRoleArn")) if r]


class _TaskDefinitions:
    """describe_task_definition for one environment, each reference asked once; failures become warnings."""

    def __init__(self, ecs: ECSClient, env: Environment, warnings: list[str]) -> None:
        self.ecs, self.env, self.warnings = ecs, env, warnings
        self.cache: dict[str, Mapping[str, Any] | None] = {}
        self.complete = True

    def get(self, ref: str) -> Mapping[str, Any] | None:
        if ref not in self.cache:
            try:
                self.cache[ref] = self.ecs.describe_task_definition(taskDefinition=ref)["taskDefinition"]
            except AWS_ERRORS as e:
                self.warnings.append(f"{self.env.name}: task definition {ref}: {_reason(e)}")
                self.cache[ref] = None
                self.complete = False
        return self.cache[ref]


def _services(ecs: ECSClient, cluster: str) -> list[Mapping[str, Any]]:
    arns: list[str] = []
    for page in ecs.get_paginator("list_services").paginate(cluster=cluster):
        arns += page.get("serviceArns", [])
    out: list[Mapping[str, Any]] = []
    for i in range(0, len(arns), 10):  # DescribeServices takes at most 10
        out += ecs.describe_services(cluster=cluster, services=arns[i:i + 10]).get("services", [])
    return out


def discover(catalog: Catalog, aws_clients: Any, partition: str = "aws") -> Discovery:
    """Read task and execution roles and ``awslogs`` groups from AWS (read-only calls).

    For each environment: the latest ACTIVE revision of every allow-listed
    family, and the task definitions of every service (all its deployments)
    in the cluster. An AWS error leaves that entry unknown and adds a warning;
    an environment whose services cannot be listed has no ``log_groups``
    entry (the policy then uses the fallback). A family present in
    ``task_roles`` with an empty list is known to need no role.
    """
    task_roles: dict[str, list[str]] = {}
    log_groups: dict[str, list[str]] = {}
    repositories: dict[str, list[str]] = {}
    warnings: list[str] = []

    def add_roles(family: str, roles: list[str]) -> None:
        have = task_roles.setdefault(family, [])
        have += [r for r in roles if r not in have]

    for env in catalog:
        try:
            ecs = aws_clients.ecs(env)
        except AWS_ERRORS as e:
            warnings.append(f"{env.name}: no AWS client: {_reason(e)}")
            continue
        tds = _TaskDefinitions(ecs, env, warnings)
        groups: list[str] = []
        repos: list[str] = []
        for family in env.run_tasks:
            td = tds.get(family)  # the family name alone means its latest ACTIVE revision
            if td is not None:
                add_roles(family, _roles(td))
                groups += [g for g in _awslogs_groups(td, env, warnings) if g not in groups]
        try:
            services = _services(ecs, env.cluster)
        except AWS_ERRORS as e:
            warnings.append(f"{env.name}: services of cluster {env.cluster}: {_reason(e)}")
            warnings.append(f"{env.name}: log groups unknown: logs access falls back to "
                            f"log-group:{FALLBACK_LOG_GROUP}")
            continue
        services_read = True
        for svc in services:
            refs = [svc.get("taskDefinition")] + [d.get("taskDefinition") for d in svc.get("deployments", [])]
            for ref in dict.fromkeys(r for r in refs if r):
                td = tds.get(ref)
                if td is None:
                    services_read = False
                    continue
                if td.get("family"):
                    add_roles(td["family"], _roles(td))
                groups += [g for g in _awslogs_groups(td, env, warnings) if g not in groups]
                repos += [r for r in _repositories(td, partition) if r not in repos]
        log_groups[env.name] = sorted(groups)
        if services_read:
            # Only services' images are read from ECR (the restart's check that the running digest
            # still exists); a service whose task definition is unreadable leaves them unknown.
            repositories[env.name] = sorted(repos)
        if not tds.complete:
            warnings.append(f"{env.name}: some task definitions could not be read: their log groups "
                            f"are not covered")
    return Discovery(task_roles, log_groups, warnings, repositories)
