"""ECR, RunTask idempotency, throttling, autoscaling, target health, the call log."""
from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from ecssim import Simulator
from ecssim.seed import ServiceSpec, seed

from .conftest import NO_RETRY, client


def test_ecr_describe_move_tag_and_delete(sim: Simulator) -> None:
    first = sim.push_image("stg/api", "latest")
    ecr = client("ecr")
    [d] = ecr.describe_images(repositoryName="stg/api", imageIds=[{"imageTag": "latest"}])["imageDetails"]
    assert d["imageDigest"] == first and d["imageTags"] == ["latest"] and d["registryId"] == "123456789012"
    second = sim.push_image("stg/api", "latest")  # the tag moves; the first image is now untagged
    details = {i["imageDigest"]: i for i in ecr.describe_images(repositoryName="stg/api")["imageDetails"]}
    assert "imageTags" not in details[first] and details[second]["imageTags"] == ["latest"]
    untagged = ecr.describe_images(repositoryName="stg/api", filter={"tagStatus": "UNTAGGED"})["imageDetails"]
    assert [i["imageDigest"] for i in untagged] == [first]
    out = ecr.batch_delete_image(repositoryName="stg/api", imageIds=[{"imageDigest": first},
                                                                     {"imageTag": "nope"}])
    assert out["imageIds"] == [{"imageDigest": first}]
    assert out["failures"][0]["failureCode"] == "ImageNotFound"
    with pytest.raises(ClientError) as e:
        ecr.describe_images(repositoryName="stg/api", imageIds=[{"imageDigest": first}])
    assert e.value.response["Error"]["Code"] == "ImageNotFoundException"
    assert sim.calls.count("DescribeImages") == 4 and sim.calls.of("DescribeImages")[-1].error == \
        "ImageNotFoundException"


def test_run_task_client_token_is_idempotent_and_conflicts(sim: Simulator) -> None:
    s = seed(sim, "stg", [ServiceSpec("web", desired=1)])
    ecs = client("ecs")
    ecs.register_task_definition(family="stg-migrate", networkMode="awsvpc", requiresCompatibilities=["FARGATE"],
                                 cpu="256", memory="512",
                                 containerDefinitions=[{"name": "app", "image": s.services["web"].image,
                                                        "essential": True, "memory": 512}])
    sim.set_one_off("stg-migrate", duration=4, exit_code=3)
    args = {"cluster": "stg", "taskDefinition": "stg-migrate", "launchType": "FARGATE",
            "networkConfiguration": s.network, "clientToken": "job-1234", "startedBy": "valetkey/job-1234"}
    [first] = ecs.run_task(**args)["tasks"]
    [again] = ecs.run_task(**args)["tasks"]
    assert again["taskArn"] == first["taskArn"]
    assert len(ecs.list_tasks(cluster="stg", family="stg-migrate")["taskArns"]) == 1
    with pytest.raises(ClientError) as e:
        ecs.run_task(**dict(args, startedBy="valetkey/other"))
    err = e.value.response
    assert err["Error"]["Code"] == "ConflictException"
    assert err["resourceIds"] == [first["taskArn"]]
    # A new revision registered in between changes what the family name means: a conflict too.
    ecs.register_task_definition(family="stg-migrate", networkMode="awsvpc", requiresCompatibilities=["FARGATE"],
                                 cpu="256", memory="512",
                                 containerDefinitions=[{"name": "app", "image": s.services["web"].image,
                                                        "essential": True, "memory": 512}])
    with pytest.raises(ClientError):
        ecs.run_task(**args)
    # The one-off task runs to completion with its exit code.
    sim.advance(12)
    t = ecs.describe_tasks(cluster="stg", tasks=[first["taskArn"]])["tasks"][0]
    assert t["lastStatus"] == "STOPPED" and t["stopCode"] == "EssentialContainerExited"
    assert t["containers"][0]["exitCode"] == 3 and t["startedBy"] == "valetkey/job-1234"
    # After 24 h the token is free again.
    sim.advance(24 * 3600 + 1)
    [fresh] = ecs.run_task(**dict(args, taskDefinition="stg-migrate"))["tasks"]
    assert fresh["taskArn"] != first["taskArn"]


def test_throttling_buckets_and_refill(sim: Simulator) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=1)])
    sim.throttle.enabled, sim.throttle.scale = True, 0.1  # UpdateService: burst 5, 0.5/s
    ecs = client("ecs", config=NO_RETRY)
    for _ in range(5):
        ecs.update_service(cluster="stg", service="web", desiredCount=1)
    with pytest.raises(ClientError) as e:
        ecs.update_service(cluster="stg", service="web", desiredCount=1)
    assert e.value.response["Error"]["Code"] == "ThrottlingException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert e.value.response["Error"]["Message"] == "Rate exceeded"
    # Another bucket is unaffected; service reads have their own (burst 10).
    for _ in range(10):
        ecs.describe_services(cluster="stg", services=["web"])
    with pytest.raises(ClientError):
        ecs.list_services(cluster="stg")  # same bucket as DescribeServices
    sim.advance(2.0)  # UpdateService refills 0.5/s: one token
    ecs.update_service(cluster="stg", service="web", desiredCount=1)
    with pytest.raises(ClientError):
        ecs.update_service(cluster="stg", service="web", desiredCount=1)
    assert [c.error for c in sim.calls.of("UpdateService")].count("ThrottlingException") == 2
    assert sim.calls.max_per_second("UpdateService") == 6  # 5 + 1 refused in the first second


def test_autoscaling_min_capacity_undoes_scale_to_zero(sim: Simulator) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=2, min_capacity=1, max_capacity=4)])
    ecs = client("ecs")
    aas = client("application-autoscaling")
    [target] = aas.describe_scalable_targets(ServiceNamespace="ecs")["ScalableTargets"]
    assert target["MinCapacity"] == 1 and target["ResourceId"] == "service/stg/web"
    ecs.update_service(cluster="stg", service="web", desiredCount=0)
    sim.advance(4.5)
    assert ecs.describe_services(cluster="stg", services=["web"])["services"][0]["desiredCount"] == 0
    sim.advance(1.0)  # autoscaling_delay 5 s
    svc = ecs.describe_services(cluster="stg", services=["web"])["services"][0]
    assert svc["desiredCount"] == 1
    assert "Application Auto Scaling" in svc["events"][0]["message"]
    sim.advance(20)
    assert len(ecs.list_tasks(cluster="stg", serviceName="web")["taskArns"]) == 1


def test_target_health_follows_the_task(sim: Simulator) -> None:
    s = seed(sim, "stg", [ServiceSpec("web", desired=1, load_balancer=True, health_check=False)])
    ecs, elb = client("ecs"), client("elbv2")
    tg = s.services["web"].target_group_arn
    [h] = elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]
    assert h["TargetHealth"]["State"] == "healthy" and h["Target"]["Port"] == 8080
    task = ecs.describe_tasks(cluster="stg", tasks=ecs.list_tasks(cluster="stg", serviceName="web")["taskArns"])[
        "tasks"][0]
    assert h["Target"]["Id"] == task["containers"][0]["networkInterfaces"][0]["privateIpv4Address"]
    ecs.stop_task(cluster="stg", task=task["taskArn"])
    sim.advance(2.5)  # DEACTIVATING: deregistration
    assert [d["TargetHealth"]["State"] for d in elb.describe_target_health(TargetGroupArn=tg)[
        "TargetHealthDescriptions"]] == ["draining"]
    sim.advance(4.0)  # STOPPED at +5 s; replacement PROVISIONING, no target yet
    assert elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"] == []
    sim.advance(2.5)  # replacement RUNNING at +8 s: registered, initial
    [h] = elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]
    assert h["TargetHealth"] == {"State": "initial", "Reason": "Elb.RegistrationInProgress",
                                 "Description": "Target registration is in progress"}
    sim.advance(2.0)
    [h] = elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]
    assert h["TargetHealth"]["State"] == "healthy"


def test_call_log_and_truth_for_a_batch_restart(sim: Simulator) -> None:
    """What a product test asserts: how many calls, and whether capacity held."""
    seed(sim, "stg", [ServiceSpec("web", desired=4, min_percent=50)])
    ecs = client("ecs")
    t0 = sim.clock.now()
    arns = ecs.list_tasks(cluster="stg", serviceName="web")["taskArns"]
    for a in arns[:2]:  # a batch of 2 is what 50% of 4 allows
        ecs.stop_task(cluster="stg", task=a)
    sim.advance(30)
    assert sim.calls.count("StopTask") == 2 and sim.calls.count("ListTasks") == 1
    assert sim.truth.min_running_wanted("web", since=t0) == 2
    assert not sim.truth.violations("web", since=t0)
    for a in arns[2:]:
        ecs.stop_task(cluster="stg", task=a)
    sim.advance(30)
    # Stopping the other two at once: momentarily only the two replacements run.
    assert sim.truth.min_running_wanted("web", since=t0) == 2
