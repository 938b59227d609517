"""Elastic Load Balancing v2: is a task's target healthy in its target group?

Behind a load balancer ECS counts a task towards minimumHealthyPercent only once
its target is healthy (botocore model, DeploymentConfiguration), so a restart
waits for the same before it stops the next batch.
"""
from __future__ import annotations

from typing import Any

from cloud.errors import AWS_ERRORS, aws_error

HEALTHY = "healthy"


def healthy_targets(elbv2: Any, target_group_arn: str, ips: list[str], port: int | None) -> set[str]:
    """Which of the task IPs (targets of type ip) the target group reports ``healthy``."""
    if not ips:
        return set()
    ask: list[dict[str, Any]] = [{"Id": ip, **({"Port": port} if port else {})} for ip in ips]
    try:
        resp = elbv2.describe_target_health(TargetGroupArn=target_group_arn, Targets=ask)
    except AWS_ERRORS as e:
        raise aws_error(e, "reading target health from the load balancer") from e
    return {str(d.get("Target", {}).get("Id", "")) for d in resp.get("TargetHealthDescriptions", [])
            if d.get("TargetHealth", {}).get("State") == HEALTHY}
