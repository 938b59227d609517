"""``valetkey iam-policy``: the least-privilege IAM policy and its discovery of roles and log groups."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest

from cloud.aws import AwsClients
from cloud.iam_policy import (
    MANAGED_POLICY_MAX_CHARS,
    discover,
    ecr_repository_arn,
    policies_for,
    policy_for,
    policy_size,
)
from scope.catalog import Catalog, load_catalog

ROOT = Path(__file__).resolve().parent.parent
READ_PREFIXES = ("Describe", "List", "Get", "Filter")
MUTATING = {"ecs:UpdateService", "ecs:StopTask", "ecs:RunTask", "iam:PassRole", "ecs:TagResource",
            "application-autoscaling:RegisterScalableTarget"}
# Read-only actions AWS lets scope to no resource (Service Authorization Reference: no resource types).
UNSCOPED_READS = {"ReadTaskDefinitions": ["ecs:DescribeTaskDefinition"],
                  "ReadTargetHealth": ["elasticloadbalancing:DescribeTargetHealth"],
                  "ReadScalableTargets": ["application-autoscaling:DescribeScalableTargets"]}

CATALOG = """
[environments.staging]
region = "us-east-1"
cluster = "staging"
run_tasks = ["orders-migrate", "backfill"]
schedule = { timezone = "UTC", up = "Mon-Fri 07:00-20:00" }

[environments.staging.redis.cache]
url_env = "STAGING_CACHE_REDIS_URL"

[environments.qa-eu]
region = "eu-west-1"
cluster = "qa"
role_arn = "arn:aws:iam::222222222222:role/valetkey"
external_id = "ext-qa-eu"
run_tasks = ["seed-data"]

[environments.prod]
class = "prod"
region = "us-east-1"
cluster = "prod"
run_tasks = ["orders-migrate"]
schedule = { timezone = "UTC", up = "Mon-Fri 07:00-20:00" }
"""
ENVIRON = {"STAGING_CACHE_REDIS_URL": "redis://cache.internal:6379/3"}
ROLES = {
    "orders-migrate": ["arn:aws:iam::111111111111:role/orders-migrate-task",
                       "arn:aws:iam::111111111111:role/ecsTaskExecutionRole"],
    "seed-data": ["arn:aws:iam::222222222222:role/seed-task"],
    # "backfill" is deliberately unknown
}


# ---- helpers ------------------------------------------------------------------------
def make_catalog(tmp_path: Path, text: str = CATALOG, environ: dict[str, str] | None = None) -> Catalog:
    path = tmp_path / "environments.toml"
    path.write_text(text)
    return load_catalog(str(path), ENVIRON if environ is None else environ)


def as_list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else [v]


def statements(policy: dict[str, Any], action: str | None = None, sid_prefix: str = "") -> list[dict[str, Any]]:
    return [s for s in policy["Statement"] if s["Sid"].startswith(sid_prefix)
            and (action is None or action in as_list(s["Action"]))]


def resources(policy: dict[str, Any], action: str, sid_prefix: str = "") -> set[str]:
    return {r for s in statements(policy, action, sid_prefix) for r in as_list(s["Resource"])}


def is_mutating(action: str) -> bool:
    return action in MUTATING or not action.split(":", 1)[1].startswith(READ_PREFIXES)


# ---- structure ------------------------------------------------------------------------
def test_policy_is_a_valid_iam_document_with_stable_alphanumeric_sids(tmp_path: Path) -> None:
    cat = make_catalog(tmp_path)
    policy = policy_for(cat, account="111111111111", task_roles=ROLES, log_groups={"staging": ["/ecs/orders"]})
    assert set(policy) == {"Version", "Statement"}
    assert policy["Version"] == "2012-10-17"
    assert policy["Statement"]
    sids = [s["Sid"] for s in policy["Statement"]]
    assert all(re.fullmatch(r"[A-Za-z0-9]+", sid) for sid in sids)
    assert len(sids) == len(set(sids))
    for s in policy["Statement"]:
        assert set(s) <= {"Sid", "Effect", "Action", "Resource", "Condition"}
        assert s["Effect"] == "Allow"
        assert all(re.fullmatch(r"(ecs|logs|iam|ecr|elasticloadbalancing|application-autoscaling):[A-Za-z]+", a)
                   for a in as_list(s["Action"]))
        assert all(r == "*" or r.startswith("arn:aws:") for r in as_list(s["Resource"]))
    # Stable: the same input gives the same document, byte for byte.
    again = policy_for(cat, account="111111111111", task_roles=ROLES, log_groups={"staging": ["/ecs/orders"]})
    assert json.dumps(policy) == json.dumps(again)
    assert {"StagingServices", "QaEuServices", "ProdServices"} <= set(sids)


def test_every_operation_valet_key_performs_is_covered(tmp_path: Path) -> None:
    policy = policy_for(make_catalog(tmp_path), account="111111111111", task_roles=ROLES)
    granted = {a for s in statements(policy, sid_prefix="Staging") for a in as_list(s["Action"])}
    granted |= {a for s in statements(policy, sid_prefix="Read") for a in as_list(s["Action"])}
    granted |= {a for s in statements(policy, sid_prefix="ScheduleMinCapacity") for a in as_list(s["Action"])}
    assert granted >= {"ecs:ListServices", "ecs:DescribeServices", "ecs:UpdateService", "ecs:ListTasks",
                       "ecs:DescribeTasks", "ecs:StopTask", "ecs:DescribeTaskDefinition", "ecs:RunTask",
                       "ecs:DescribeClusters", "iam:PassRole", "logs:FilterLogEvents", "logs:GetLogEvents",
                       "logs:DescribeLogStreams", "ecs:ListServiceDeployments", "ecs:DescribeServiceDeployments",
                       "ecs:DescribeServiceRevisions", "ecr:DescribeImages", "elasticloadbalancing:DescribeTargetHealth",
                       "application-autoscaling:DescribeScalableTargets",
                       "application-autoscaling:RegisterScalableTarget"}


@pytest.mark.parametrize("account", ["*", "111111111111"])
@pytest.mark.parametrize("with_roles", [True, False])
def test_no_mutating_action_ever_has_a_wildcard_resource(tmp_path: Path, account: str, with_roles: bool) -> None:
    policy = policy_for(make_catalog(tmp_path), account=account, task_roles=ROLES if with_roles else None)
    mutating_seen = set()
    for s in policy["Statement"]:
        mutating = [a for a in as_list(s["Action"]) if is_mutating(a)]
        if not mutating:
            continue
        mutating_seen |= set(mutating)
        for r in as_list(s["Resource"]):
            assert r.strip() != "*", f"{s['Sid']}: {mutating} on Resource '*'"
            assert not r.endswith(":*:*"), f"{s['Sid']}: resource {r} is effectively unscoped"
    assert {"ecs:UpdateService", "ecs:StopTask", "ecs:RunTask"} <= mutating_seen
    # The statements on "*" are read-only and (but for actions with no resource types) cluster-conditioned.
    for s in policy["Statement"]:
        if "*" in as_list(s["Resource"]):
            assert all(not is_mutating(a) for a in as_list(s["Action"]))
            if s["Sid"] in UNSCOPED_READS:
                assert as_list(s["Action"]) == UNSCOPED_READS[s["Sid"]]
            else:
                assert "ecs:cluster" in json.dumps(s.get("Condition", {}))


def test_service_and_task_actions_are_scoped_to_the_cluster(tmp_path: Path) -> None:
    policy = policy_for(make_catalog(tmp_path), account="111111111111")
    # UpdateService authorizes only against service ARNs and StopTask only against task ARNs
    # (their resource types), so sharing one statement grants each exactly its own.
    assert resources(policy, "ecs:UpdateService", "Staging") == resources(policy, "ecs:StopTask", "Staging") == {
        "arn:aws:ecs:us-east-1:111111111111:service/staging/*", "arn:aws:ecs:us-east-1:111111111111:task/staging/*"}
    (upd,) = statements(policy, "ecs:UpdateService", "Staging")
    assert upd["Condition"] == {"ArnEquals": {"ecs:cluster": "arn:aws:ecs:us-east-1:111111111111:cluster/staging"}}
    assert "arn:aws:ecs:us-east-1:111111111111:cluster/staging" in resources(policy, "ecs:DescribeClusters", "Staging")
    assert all("/staging" in r for r in resources(policy, "ecs:DescribeClusters", "Staging"))
    (listing,) = statements(policy, "ecs:ListTasks", "Staging")
    assert listing["Resource"] == "*"
    assert listing["Condition"] == {"ArnEquals": {"ecs:cluster": "arn:aws:ecs:us-east-1:111111111111:cluster/staging"}}


def test_run_task_only_on_allow_listed_families_in_their_cluster(tmp_path: Path) -> None:
    policy = policy_for(make_catalog(tmp_path), account="111111111111", task_roles=ROLES)
    (run,) = statements(policy, "ecs:RunTask", "Staging")
    assert set(as_list(run["Resource"])) == {
        "arn:aws:ecs:us-east-1:111111111111:task-definition/backfill:*",
        "arn:aws:ecs:us-east-1:111111111111:task-definition/orders-migrate:*"}
    assert run["Condition"] == {"ArnEquals": {"ecs:cluster": "arn:aws:ecs:us-east-1:111111111111:cluster/staging"}}
    assert resources(policy, "ecs:RunTask", "QaEu") == {
        "arn:aws:ecs:eu-west-1:222222222222:task-definition/seed-data:*"}
    families = {r.rsplit("/", 1)[1] for r in resources(policy, "ecs:RunTask")}
    assert families == {"backfill:*", "orders-migrate:*", "seed-data:*"}
    assert not statements(policy, "ecs:TagResource")  # RunTask sends no tags: nothing to tag


def test_an_environment_without_run_tasks_gets_no_run_task(tmp_path: Path) -> None:
    cat = make_catalog(tmp_path, '[environments.dev]\ncluster = "dev"\n', environ={})
    policy = policy_for(cat, task_roles=ROLES)
    assert not statements(policy, "ecs:RunTask")
    assert not statements(policy, "iam:PassRole")


def test_a_disabled_environment_gets_read_only_statements(tmp_path: Path) -> None:
    policy = policy_for(make_catalog(tmp_path), account="111111111111", task_roles=ROLES)
    prod = statements(policy, sid_prefix="Prod")
    assert prod
    actions = {a for s in prod for a in as_list(s["Action"])}
    assert not {a for a in actions if is_mutating(a)}
    assert {"ecs:DescribeServices", "ecs:ListServices", "ecs:DescribeTasks", "logs:FilterLogEvents"} <= actions


def test_pass_role_only_for_the_families_known_roles_to_ecs_tasks(tmp_path: Path) -> None:
    policy = policy_for(make_catalog(tmp_path), account="111111111111", task_roles=ROLES)
    passes = statements(policy, "iam:PassRole")
    assert {s["Sid"] for s in passes} == {"StagingPassTaskRoles", "QaEuPassTaskRoles"}
    for s in passes:
        assert as_list(s["Action"]) == ["iam:PassRole"]
        assert s["Condition"] == {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}
    assert resources(policy, "iam:PassRole", "Staging") == set(ROLES["orders-migrate"])
    assert resources(policy, "iam:PassRole", "QaEu") == set(ROLES["seed-data"])


def test_unknown_or_wildcard_roles_add_no_pass_role(tmp_path: Path) -> None:
    cat = make_catalog(tmp_path)
    assert not statements(policy_for(cat), "iam:PassRole")
    assert not statements(policy_for(cat, task_roles={}), "iam:PassRole")
    sneaky = {"orders-migrate": ["*", "arn:aws:iam::111111111111:role/*"], "backfill": ["not-an-arn"]}
    assert not statements(policy_for(cat, account="111111111111", task_roles=sneaky), "iam:PassRole")
    # A role of another account cannot be passed to a task here: left out.
    other = {"orders-migrate": ["arn:aws:iam::999999999999:role/x", "arn:aws:iam::111111111111:role/y"]}
    assert resources(policy_for(cat, account="111111111111", task_roles=other), "iam:PassRole") == {
        "arn:aws:iam::111111111111:role/y"}


def test_an_environment_with_role_arn_uses_that_roles_account(tmp_path: Path) -> None:
    cat = make_catalog(tmp_path)
    for account in ("*", "111111111111"):
        policy = policy_for(cat, account=account)
        qa = [r for s in statements(policy, sid_prefix="QaEu") for r in as_list(s["Resource"]) if r != "*"]
        assert qa and all(":222222222222:" in r for r in qa)
        assert all(":eu-west-1:" in r for r in qa)
        staging = [r for s in statements(policy, sid_prefix="Staging") for r in as_list(s["Resource"]) if r != "*"]
        assert staging and all(f":{account}:" in r for r in staging)


def test_a_cluster_given_as_an_arn_and_another_partition(tmp_path: Path) -> None:
    text = ('[environments.gov]\nregion = "us-gov-west-1"\n'
            'cluster = "arn:aws-us-gov:ecs:us-gov-west-1:333333333333:cluster/main"\nrun_tasks = ["job"]\n')
    policy = policy_for(make_catalog(tmp_path, text, environ={}), account="*")
    assert resources(policy, "ecs:UpdateService") == {"arn:aws-us-gov:ecs:us-gov-west-1:333333333333:service/main/*",
                                                      "arn:aws-us-gov:ecs:us-gov-west-1:333333333333:task/main/*"}
    assert resources(policy, "ecs:RunTask") == {"arn:aws-us-gov:ecs:us-gov-west-1:333333333333:task-definition/job:*"}


def test_log_groups_known_unknown_and_none(tmp_path: Path) -> None:
    cat = make_catalog(tmp_path)
    policy = policy_for(cat, account="111111111111", log_groups={"staging": ["/custom/orders-api"], "prod": []})
    # The ":*" form is the one IAM evaluates for these actions (CloudWatch Logs' access-control overview).
    assert resources(policy, "logs:FilterLogEvents", "Staging") == {
        "arn:aws:logs:us-east-1:111111111111:log-group:/custom/orders-api:*"}
    assert resources(policy, "logs:GetLogEvents", "QaEu") == {  # unknown: the documented /ecs/* fallback
        "arn:aws:logs:eu-west-1:222222222222:log-group:/ecs/*:*"}
    assert not statements(policy, "logs:FilterLogEvents", "Prod")  # known to have none
    for s in statements(policy, "logs:FilterLogEvents"):
        assert set(as_list(s["Action"])) == {"logs:FilterLogEvents", "logs:GetLogEvents", "logs:DescribeLogStreams"}


def test_sids_stay_unique_when_names_collapse(tmp_path: Path) -> None:
    text = '[environments.qa-eu]\ncluster = "a"\n[environments.qa_eu]\ncluster = "b"\n'
    policy = policy_for(make_catalog(tmp_path, text, environ={}))
    sids = [s["Sid"] for s in policy["Statement"]]
    assert len(sids) == len(set(sids))
    assert "QaEuServices" in sids and "QaEu2Services" in sids


def test_service_deployments_and_revisions_are_scoped_to_the_cluster(tmp_path: Path) -> None:
    policy = policy_for(make_catalog(tmp_path), account="111111111111")
    (st,) = statements(policy, "ecs:DescribeServiceDeployments", "Staging")
    assert set(as_list(st["Action"])) == {"ecs:ListServiceDeployments", "ecs:DescribeServiceDeployments",
                                          "ecs:DescribeServiceRevisions", "ecs:DescribeClusters"}
    assert set(as_list(st["Resource"])) == {
        "arn:aws:ecs:us-east-1:111111111111:cluster/staging",
        "arn:aws:ecs:us-east-1:111111111111:service/staging/*",
        "arn:aws:ecs:us-east-1:111111111111:service-deployment/staging/*",
        "arn:aws:ecs:us-east-1:111111111111:service-revision/staging/*"}
    assert "Condition" not in st  # a condition on a key these actions do not carry would deny them


def test_ecr_describe_images_on_the_images_repositories(tmp_path: Path) -> None:
    assert ecr_repository_arn("111111111111.dkr.ecr.eu-west-1.amazonaws.com/team/orders-api:main") == \
        "arn:aws:ecr:eu-west-1:111111111111:repository/team/orders-api"
    assert ecr_repository_arn("111111111111.dkr.ecr.us-east-1.amazonaws.com/api@sha256:abc") == \
        "arn:aws:ecr:us-east-1:111111111111:repository/api"
    assert ecr_repository_arn("nginx:1.27") is None and ecr_repository_arn("ghcr.io/acme/api:1") is None
    cat = make_catalog(tmp_path)
    repo = "arn:aws:ecr:us-east-1:444444444444:repository/orders-api"  # a shared registry account
    policy = policy_for(cat, account="111111111111", repositories={"staging": [repo], "prod": []})
    # staging's known repository; prod known to use none; qa-eu unknown: every repository of its own
    # account and Region (read-only) -- in one statement, as stages share their repositories
    assert resources(policy, "ecr:DescribeImages") == {repo, "arn:aws:ecr:eu-west-1:222222222222:repository/*"}
    assert [s["Sid"] for s in statements(policy, "ecr:DescribeImages")] == ["ReadImages"]
    both = policy_for(cat, account="111111111111", repositories={"staging": [repo], "prod": [repo], "qa-eu": [repo]})
    assert resources(both, "ecr:DescribeImages") == {repo}


def test_register_scalable_target_only_where_the_scheduler_acts(tmp_path: Path) -> None:
    policy = policy_for(make_catalog(tmp_path), account="111111111111")
    assert resources(policy, "application-autoscaling:RegisterScalableTarget") == {
        "arn:aws:application-autoscaling:us-east-1:111111111111:scalable-target/*"}
    # staging (scheduled) is in us-east-1; qa-eu (eu-west-1) has no schedule, prod's is never acted on
    qa_only = make_catalog(tmp_path, CATALOG.split("[environments.prod]")[0].replace("schedule = ", "# "))
    assert not statements(policy_for(qa_only), "application-autoscaling:RegisterScalableTarget")
    unscheduled = make_catalog(tmp_path, '[environments.dev]\ncluster = "dev"\n', environ={})
    assert not statements(policy_for(unscheduled), "application-autoscaling:DescribeScalableTargets")


def _big_catalog(tmp_path: Path, n: int) -> Catalog:
    text = "".join(f'[environments.team-{i:02d}]\nregion = "eu-central-1"\ncluster = "team-{i:02d}"\n'
                   f'run_tasks = ["team-{i:02d}-migrate", "team-{i:02d}-backfill"]\n'
                   f'schedule = {{ timezone = "Europe/Berlin", up = "Mon-Fri 07:00-20:00" }}\n' for i in range(n))
    return make_catalog(tmp_path, text, environ={})


SERVICES = ("orders-api", "payments-api", "web-frontend", "email-worker")


def _discovered(cat: Catalog) -> dict[str, Any]:
    """What discovery finds in a usual setup: a task role per family and one shared execution role,
    an awslogs group per service and family, images from one registry shared by the stages."""
    roles = {f: [f"arn:aws:iam::111111111111:role/{f}-task", "arn:aws:iam::111111111111:role/ecsTaskExecutionRole"]
             for e in cat for f in e.run_tasks}
    groups = {e.name: sorted([f"/ecs/{e.name}-{s}" for s in SERVICES] + [f"/ecs/{f}" for f in e.run_tasks])
              for e in cat}
    repos = {e.name: [f"arn:aws:ecr:eu-central-1:111111111111:repository/{s}" for s in SERVICES] for e in cat}
    return {"task_roles": roles, "log_groups": groups, "repositories": repos}


def test_a_typical_catalog_fits_one_managed_policy(tmp_path: Path) -> None:
    # DESIGN's shape: a scheduled staging with one-off tasks, a QA environment, a disabled prod;
    # four services each, everything discovered.
    cat = make_catalog(tmp_path, CATALOG.replace('region = "eu-west-1"', 'region = "eu-central-1"'))
    found = _discovered(cat)
    docs = policies_for(cat, account="111111111111", **found)
    assert len(docs) == 1
    assert docs[0] == policy_for(cat, account="111111111111", **found)
    assert policy_size(docs[0]) <= MANAGED_POLICY_MAX_CHARS


def test_a_large_catalog_is_split_into_policies_within_the_limit(tmp_path: Path) -> None:
    cat = _big_catalog(tmp_path, 20)
    whole = policy_for(cat, account="111111111111", **_discovered(cat))
    assert policy_size(whole) > MANAGED_POLICY_MAX_CHARS
    docs = policies_for(cat, account="111111111111", **_discovered(cat))
    assert len(docs) > 1
    assert all(policy_size(d) <= MANAGED_POLICY_MAX_CHARS for d in docs)
    assert all(d["Version"] == "2012-10-17" for d in docs)
    # The same statements, none lost or repeated; each environment's statements in one document.
    assert [s for d in docs for s in d["Statement"]] == whole["Statement"]
    for e in cat:
        prefix = "".join(p.capitalize() for p in e.name.split("-"))
        holding = [i for i, d in enumerate(docs) if any(s["Sid"].startswith(prefix) for s in d["Statement"])]
        assert len(holding) == 1, e.name


def test_the_cli_prints_a_list_when_the_policy_is_split(tmp_path: Path) -> None:
    path = tmp_path / "environments.toml"
    path.write_text("".join(f'[environments.team-{i:02d}]\ncluster = "team-{i:02d}"\n'
                            f'run_tasks = ["a-{i}", "b-{i}", "c-{i}", "d-{i}", "e-{i}", "f-{i}"]\n'
                            f'schedule = {{ timezone = "UTC", up = "Mon-Fri 07:00-20:00" }}\n' for i in range(25)))
    res = run_cli(["--offline", "--account", "111111111111"], {"VALETKEY_ENVIRONMENTS": str(path)})
    assert res.returncode == 0, res.stderr
    docs = json.loads(res.stdout)
    assert isinstance(docs, list) and len(docs) > 1
    assert all(policy_size(d) <= MANAGED_POLICY_MAX_CHARS for d in docs)
    assert f"JSON list of {len(docs)} policies" in res.stderr


# ---- discovery against the AWS stand-in (moto server) ---------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    for k, v in AWS_ENV.items():
        monkeypatch.setenv(k, v)
    return moto_url


ACCOUNT = "123456789012"  # moto's default account


def seed(cluster: str, prefix: str) -> dict[str, str]:
    """A cluster with one service and an allow-listed one-off family, as ECS would hold them."""
    ecs = boto3.client("ecs", region_name="us-east-1")
    ecs.create_cluster(clusterName=cluster)
    roles = {"task": f"arn:aws:iam::{ACCOUNT}:role/{prefix}-migrate-task",
             "exec": f"arn:aws:iam::{ACCOUNT}:role/{prefix}-exec"}

    def awslogs(group: str) -> dict[str, Any]:
        return {"logDriver": "awslogs", "options": {"awslogs-group": group, "awslogs-region": "us-east-1",
                                                    "awslogs-stream-prefix": "ecs"}}

    ecs.register_task_definition(
        family=f"{prefix}-migrate", taskRoleArn=roles["task"], executionRoleArn=roles["exec"],
        containerDefinitions=[{"name": "migrate", "image": "acme/orders:1", "memory": 256, "essential": True,
                               "logConfiguration": awslogs(f"/ecs/{prefix}-migrate")}])
    td = ecs.register_task_definition(
        family=f"{prefix}-api", executionRoleArn=roles["exec"],
        containerDefinitions=[{"name": "api", "image": f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/{prefix}-api:main",
                               "memory": 256, "essential": True,
                               "logConfiguration": awslogs(f"/custom/{prefix}-api")},
                              {"name": "sidecar", "image": "envoy", "memory": 64, "essential": False,
                               "logConfiguration": {"logDriver": "json-file"}}])
    ecs.create_service(cluster=cluster, serviceName=f"{prefix}-api",
                       taskDefinition=td["taskDefinition"]["taskDefinitionArn"], desiredCount=1)
    return roles


def test_discover_finds_roles_and_log_groups(aws: str, tmp_path: Path) -> None:
    roles = seed("disc", "orders")
    text = ('[environments.staging]\nregion = "us-east-1"\ncluster = "disc"\n'
            'run_tasks = ["orders-migrate", "never-registered"]\n'
            '[environments.ghost]\nregion = "us-east-1"\ncluster = "no-such-cluster"\n')
    cat = make_catalog(tmp_path, text, environ={})
    found = discover(cat, AwsClients())
    task_roles, log_groups, warnings = found.task_roles, found.log_groups, found.warnings

    assert sorted(task_roles["orders-migrate"]) == sorted([roles["task"], roles["exec"]])
    assert task_roles["orders-api"] == [roles["exec"]]
    assert "never-registered" not in task_roles  # unknown stays unknown
    assert log_groups["staging"] == ["/custom/orders-api", "/ecs/orders-migrate"]
    assert "ghost" not in log_groups  # services could not be listed: fallback
    # the service's ECR image (the one-off family's Docker Hub image has no ECR repository)
    assert found.repositories["staging"] == [f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/orders-api"]
    assert "ghost" not in found.repositories
    assert any("never-registered" in w for w in warnings)
    assert any(w.startswith("ghost:") for w in warnings)

    policy = policy_for(cat, account=ACCOUNT, task_roles=task_roles, log_groups=log_groups)
    assert resources(policy, "iam:PassRole", "Staging") == {roles["task"], roles["exec"]}
    assert f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:/custom/orders-api:*" in resources(
        policy, "logs:FilterLogEvents", "Staging")
    assert resources(policy, "logs:FilterLogEvents", "Ghost") == {f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:/ecs/*:*"}


def test_discover_with_aws_unreachable_leaves_everything_unknown(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    for k, v in AWS_ENV.items():
        monkeypatch.setenv(k, v)
    from botocore.config import Config

    cat = make_catalog(tmp_path, '[environments.staging]\ncluster = "s"\nrun_tasks = ["m"]\n', environ={})
    clients = AwsClients(Config(connect_timeout=1, read_timeout=1, retries={"max_attempts": 1}))
    found = discover(cat, clients)
    task_roles, log_groups, warnings = found.task_roles, found.log_groups, found.warnings
    assert task_roles == {} and log_groups == {} and found.repositories == {}
    assert warnings and all(w.startswith("staging:") for w in warnings)


# ---- the command line ------------------------------------------------------------------
def run_cli(args: list[str], env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VALETKEY_"))}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "valetkey.cli", "iam-policy", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_offline_prints_the_policy_json(tmp_path: Path) -> None:
    path = tmp_path / "environments.toml"
    path.write_text(CATALOG)
    res = run_cli(["--offline", "--account", "111111111111"], {"VALETKEY_ENVIRONMENTS": str(path), **ENVIRON})
    assert res.returncode == 0, res.stderr
    policy = json.loads(res.stdout)
    assert policy["Version"] == "2012-10-17"
    assert "arn:aws:ecs:us-east-1:111111111111:service/staging/*" in resources(policy, "ecs:UpdateService", "Staging")
    assert not statements(policy, "iam:PassRole")  # offline: roles unknown, nothing wildcard instead
    assert "backfill" in res.stderr and "/ecs/*" in res.stderr  # the gaps are said, on stderr


def test_cli_one_environment_and_an_unknown_one(tmp_path: Path) -> None:
    path = tmp_path / "environments.toml"
    path.write_text(CATALOG)
    env = {"VALETKEY_ENVIRONMENTS": str(path), **ENVIRON}
    res = run_cli(["--offline", "--environment", "qa-eu"], env)
    assert res.returncode == 0, res.stderr
    sids = {s["Sid"] for s in json.loads(res.stdout)["Statement"]}
    assert sids and all(s.startswith("QaEu") or s in UNSCOPED_READS or s == "ReadImages" for s in sids)
    bad = run_cli(["--offline", "--environment", "nope"], env)
    assert bad.returncode == 1 and bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and "nope" in bad.stderr


def test_cli_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "environments.toml"
    path.write_text('[environments.staging]\ncluster = "s"\nrun_task = ["typo"]\n')
    res = run_cli(["--offline"], {"VALETKEY_ENVIRONMENTS": str(path)})
    assert res.returncode == 2
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "environments.staging.run_task" in lines[0] and "Traceback" not in res.stderr


def test_cli_discovers_from_aws(moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    for k, v in AWS_ENV.items():
        monkeypatch.setenv(k, v)
    roles = seed("cli", "billing")
    path = tmp_path / "environments.toml"
    path.write_text('[environments.staging]\nregion = "us-east-1"\ncluster = "cli"\nrun_tasks = ["billing-migrate"]\n')
    res = run_cli(["--account", ACCOUNT], {"VALETKEY_ENVIRONMENTS": str(path), "AWS_ENDPOINT_URL": moto_url,
                                           **AWS_ENV})
    assert res.returncode == 0, res.stderr
    policy = json.loads(res.stdout)
    assert resources(policy, "iam:PassRole") == {roles["task"], roles["exec"]}
    assert f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:/ecs/billing-migrate:*" in resources(
        policy, "logs:GetLogEvents")
