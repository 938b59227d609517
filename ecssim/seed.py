"""Build a cluster with services in one call (plain boto3, against AWS_ENDPOINT_URL or mock_aws).

Shaped like tests/conftest.py's ``seed_cluster``, but the tasks come from the
simulated service scheduler rather than from RunTask calls.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import boto3  # type: ignore[import-untyped]

from .enums import RolloutState, TaskStatus
from .simulator import ACCOUNT, Simulator


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    desired: int = 2
    min_percent: int = 100
    max_percent: int = 200
    circuit_breaker: bool = False
    rollback: bool = False
    load_balancer: bool = False
    controller: str = "ECS"  # or CODE_DEPLOY / EXTERNAL
    tag: str = "latest"
    broken: bool = False  # the image cannot be pulled
    crash_after: float | None = None  # the image crashes this long after RUNNING
    exit_code: int = 137
    health_check: bool = True
    version_consistency: str | None = None  # "disabled" to opt out of digest pinning
    min_capacity: int | None = None  # an Application Auto Scaling target when set
    max_capacity: int | None = None
    container_port: int = 8080


@dataclass
class SeededService:
    name: str
    arn: str
    family: str
    task_definition_arn: str
    repository: str
    image: str  # repo URI with tag
    digest: str
    target_group_arn: str | None = None


@dataclass
class Seeded:
    cluster: str
    cluster_arn: str
    region: str
    vpc: str
    subnet: str
    security_group: str
    services: dict[str, SeededService] = field(default_factory=dict)

    @property
    def network(self) -> dict[str, Any]:
        return {"awsvpcConfiguration": {"subnets": [self.subnet], "securityGroups": [self.security_group],
                                        "assignPublicIp": "DISABLED"}}


def container_definition(family: str, image: str, spec: ServiceSpec, region: str) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": "app", "essential": True, "memory": 512, "cpu": 256, "image": image,
        "portMappings": [{"containerPort": spec.container_port, "protocol": "tcp"}],
        "logConfiguration": {"logDriver": "awslogs", "options": {
            "awslogs-group": f"/ecs/{family}", "awslogs-region": region, "awslogs-stream-prefix": "app"}},
    }
    if spec.health_check:
        c["healthCheck"] = {"command": ["CMD-SHELL", f"curl -f http://localhost:{spec.container_port}/health"],
                            "interval": 10, "timeout": 5, "retries": 3, "startPeriod": 10}
    if spec.version_consistency:
        c["versionConsistency"] = spec.version_consistency
    return c


def seed(sim: Simulator, cluster: str = "stg", services: tuple[ServiceSpec, ...] | list[ServiceSpec] = (),
         region: str = "us-east-1", account: str = ACCOUNT, cidr: str = "10.9",
         settle: bool = True, clear_calls: bool = True) -> Seeded:
    """A cluster with ``services`` (default: one "web" of 2 tasks); with ``settle``, the clock is
    advanced until every ECS-controlled service runs its desired tasks, healthy, rollout COMPLETED."""
    services = list(services) or [ServiceSpec("web")]
    ecs, ec2 = boto3.client("ecs", region_name=region), boto3.client("ec2", region_name=region)
    vpc = ec2.create_vpc(CidrBlock=f"{cidr}.0.0/16")["Vpc"]["VpcId"]
    # moto's ENIs need DNS hostnames on the VPC (private DNS name of the task's ENI).
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=f"{cidr}.1.0/24")["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(GroupName=f"sg-{cluster}", Description="ecssim", VpcId=vpc)["GroupId"]
    cluster_arn = ecs.create_cluster(clusterName=cluster)["cluster"]["clusterArn"]
    out = Seeded(cluster, cluster_arn, region, vpc, subnet, sg)
    for spec in services:
        family, repo = f"{cluster}-{spec.name}", f"{cluster}/{spec.name}"
        digest = sim.push_image(repo, spec.tag, region, account)
        image = sim.ecr(region, account).uri(repo, spec.tag)
        if spec.broken:
            sim.break_image(digest, region, account)
        if spec.crash_after is not None:
            sim.crash_image(digest, spec.crash_after, spec.exit_code, region, account)
        td = ecs.register_task_definition(
            family=family, networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
            executionRoleArn=f"arn:aws:iam::{account}:role/ecsTaskExecutionRole",
            containerDefinitions=[container_definition(family, image, spec, region)])["taskDefinition"]
        kw: dict[str, Any] = {}
        tg_arn = None
        if spec.load_balancer:
            elb = boto3.client("elbv2", region_name=region)
            tg_arn = elb.create_target_group(Name=f"{cluster}-{spec.name}"[:32], Protocol="HTTP",
                                             Port=spec.container_port, VpcId=vpc,
                                             TargetType="ip")["TargetGroups"][0]["TargetGroupArn"]
            kw["loadBalancers"] = [{"targetGroupArn": tg_arn, "containerName": "app",
                                    "containerPort": spec.container_port}]
            kw["healthCheckGracePeriodSeconds"] = 30
        svc = ecs.create_service(
            cluster=cluster, serviceName=spec.name, taskDefinition=td["taskDefinitionArn"],
            desiredCount=spec.desired, launchType="FARGATE", networkConfiguration=out.network,
            deploymentController={"type": spec.controller},
            deploymentConfiguration={"maximumPercent": spec.max_percent,
                                     "minimumHealthyPercent": spec.min_percent,
                                     "deploymentCircuitBreaker": {"enable": spec.circuit_breaker,
                                                                  "rollback": spec.rollback}},
            **kw)["service"]
        if spec.controller != "ECS":
            # CODE_DEPLOY/EXTERNAL services deploy through task sets (the simulator starts no tasks for them).
            ecs.create_task_set(service=spec.name, cluster=cluster, taskDefinition=td["taskDefinitionArn"],
                                networkConfiguration=out.network, launchType="FARGATE",
                                scale={"value": 100, "unit": "PERCENT"})
        if spec.min_capacity is not None or spec.max_capacity is not None:
            boto3.client("application-autoscaling", region_name=region).register_scalable_target(
                ServiceNamespace="ecs", ResourceId=f"service/{cluster}/{spec.name}",
                ScalableDimension="ecs:service:DesiredCount",
                MinCapacity=spec.min_capacity if spec.min_capacity is not None else 0,
                MaxCapacity=spec.max_capacity if spec.max_capacity is not None else max(spec.desired, 10))
        out.services[spec.name] = SeededService(spec.name, svc["serviceArn"], family, td["taskDefinitionArn"],
                                                repo, image, digest, tg_arn)
    if settle:
        steady = [s.name for s in services if s.controller == "ECS" and not s.broken and s.crash_after is None]
        sim.run_until(lambda: all(_steady(sim, cluster, n, region, account) for n in steady))
        sim.advance(sim.timings.count_lag_max_seconds)  # and the lagging counts have caught up
    if clear_calls:
        sim.calls.clear()
    return out


def _steady(sim: Simulator, cluster: str, name: str, region: str, account: str) -> bool:
    svc = sim.service(cluster, name, region, account)
    p = svc.primary
    running = [t for t in sim.tasks(cluster, name, region, account)
               if t.wanted_running and t.counted_healthy(sim.clock.now(), sim.timings.no_health_check_settle)]
    return (p is not None and p.rollout_state == RolloutState.COMPLETED and len(svc.deployments) == 1
            and len(running) == svc.desired
            and all(t.last_status == TaskStatus.RUNNING for t in running))
