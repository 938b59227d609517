"""Rolling deployments, the circuit breaker, deployment controllers and digest pinning."""
from __future__ import annotations

import math

import pytest
from botocore.exceptions import ClientError

from ecssim import Simulator
from ecssim.seed import ServiceSpec, seed

from .conftest import client


def _svc(ecs, name: str, cluster: str = "stg") -> dict:
    return ecs.describe_services(cluster=cluster, services=[name])["services"][0]


def _digests(ecs, name: str, cluster: str = "stg") -> set[str]:
    arns = ecs.list_tasks(cluster=cluster, serviceName=name)["taskArns"]
    tasks = ecs.describe_tasks(cluster=cluster, tasks=arns)["tasks"]
    return {c["imageDigest"] for t in tasks if t["lastStatus"] == "RUNNING" for c in t["containers"]}


@pytest.mark.parametrize("min_pct,max_pct", [(100, 200), (50, 100), (50, 150)])
def test_rolling_deployment_respects_min_and_max_percent(sim: Simulator, min_pct: int, max_pct: int) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=4, min_percent=min_pct, max_percent=max_pct)])
    ecs = client("ecs")
    old_id = _svc(ecs, "web")["deployments"][0]["id"]
    t0 = sim.clock.now()
    resp = ecs.update_service(cluster="stg", service="web", forceNewDeployment=True)["service"]
    primary = next(d for d in resp["deployments"] if d["status"] == "PRIMARY")
    assert primary["id"] != old_id and primary["rolloutState"] == "IN_PROGRESS"
    assert {d["status"] for d in resp["deployments"]} == {"PRIMARY", "ACTIVE"}
    most = 0
    for _ in range(200):
        sim.advance(0.5)
        alive = [t for t in sim.tasks("stg", "web") if not t.gone]
        most = max(most, len(alive))
        dep = sim.service("stg", "web").primary
        if dep is not None and dep.rollout_state == "COMPLETED":
            break
    assert most <= math.floor(4 * max_pct / 100)
    assert not sim.truth.violations("web", since=t0)  # healthy never below minimumHealthyPercent
    sim.advance(10)
    svc = _svc(ecs, "web")
    [dep] = svc["deployments"]
    assert dep["id"] == primary["id"] and dep["rolloutState"] == "COMPLETED"
    assert dep["rolloutStateReason"] == f"ECS deployment {dep['id']} completed."
    assert svc["runningCount"] == 4
    arns = ecs.list_tasks(cluster="stg", serviceName="web")["taskArns"]
    assert {t["startedBy"] for t in ecs.describe_tasks(cluster="stg", tasks=arns)["tasks"]} == {dep["id"]}
    assert sim.calls.count("UpdateService") == 1


def test_circuit_breaker_rolls_back_and_service_deployments_say_so(sim: Simulator) -> None:
    s = seed(sim, "stg", [ServiceSpec("web", desired=2, circuit_breaker=True, rollback=True)])
    ecs = client("ecs")
    good_td = s.services["web"].task_definition_arn
    first = _svc(ecs, "web")["deployments"][0]["id"]
    # A new revision whose image cannot be pulled.
    td = ecs.describe_task_definition(taskDefinition=good_td)["taskDefinition"]
    bad_image = sim.ecr().uri(s.services["web"].repository, "v2")
    sim.break_image(sim.push_image(s.services["web"].repository, "v2"))
    cdef = dict(td["containerDefinitions"][0], image=bad_image)
    bad_td = ecs.register_task_definition(
        family=td["family"], networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
        containerDefinitions=[cdef])["taskDefinition"]["taskDefinitionArn"]
    ecs.update_service(cluster="stg", service="web", taskDefinition=bad_td)
    failed_id = _svc(ecs, "web")["deployments"][0]["id"]
    sim.run_until(lambda: sim.service("stg", "web").deployments[0].is_rollback, timeout=120)
    svc = _svc(ecs, "web")
    primary = next(d for d in svc["deployments"] if d["status"] == "PRIMARY")
    failed = next(d for d in svc["deployments"] if d["id"] == failed_id)
    assert primary["id"] not in (first, failed_id)  # a NEW primary deployment ...
    assert primary["taskDefinition"] == good_td  # ... of the previous task definition
    assert failed["rolloutState"] == "FAILED"
    assert failed["rolloutStateReason"] == "ECS deployment circuit breaker: tasks failed to start."
    assert failed["failedTasks"] >= 3
    sim.run_until(lambda: sim.service("stg", "web").deployments[0].rollout_state == "COMPLETED", timeout=120)
    listed = ecs.list_service_deployments(cluster="stg", service="web")["serviceDeployments"]
    assert [d["status"] for d in listed] == ["ROLLBACK_SUCCESSFUL", "SUCCESSFUL"]
    [sd] = ecs.describe_service_deployments(serviceDeploymentArns=[listed[0]["serviceDeploymentArn"]])[
        "serviceDeployments"]
    assert sd["status"] == "ROLLBACK_SUCCESSFUL"
    assert sd["statusReason"] == "ECS deployment circuit breaker: tasks failed to start."
    assert sd["deploymentCircuitBreaker"]["status"] == "TRIGGERED"
    assert sd["deploymentCircuitBreaker"]["threshold"] == 3
    assert sd["rollback"]["serviceRevisionArn"] == sd["sourceServiceRevisions"][0]["arn"]
    assert sd["finishedAt"] >= sd["rollback"]["startedAt"]
    # The failed tasks say why.
    arns = ecs.list_tasks(cluster="stg", serviceName="web", desiredStatus="STOPPED")["taskArns"]
    stopped = ecs.describe_tasks(cluster="stg", tasks=arns)["tasks"]
    assert any(t["stopCode"] == "TaskFailedToStart" and t["stoppedReason"].startswith("CannotPullContainerError")
               for t in stopped)
    assert _svc(ecs, "web")["currentServiceDeployment"] == listed[0]["serviceDeploymentArn"]


def test_crash_before_healthy_without_breaker_keeps_old_tasks(sim: Simulator) -> None:
    s = seed(sim, "stg", [ServiceSpec("web", desired=2)])
    ecs = client("ecs")
    # The tag moves to an image that exits 1 second after RUNNING (before its health check passes).
    sim.crash_image(sim.push_image(s.services["web"].repository, "latest"), after=1, exit_code=1)
    ecs.update_service(cluster="stg", service="web", forceNewDeployment=True)
    sim.advance(60)
    svc = _svc(ecs, "web")
    primary = svc["deployments"][0]
    assert primary["rolloutState"] == "IN_PROGRESS" and len(svc["deployments"]) == 2
    assert primary["failedTasks"] >= 3  # counted, but no breaker configured
    assert svc["runningCount"] >= 2  # the old tasks keep serving (minimumHealthyPercent 100)
    arns = ecs.list_tasks(cluster="stg", serviceName="web", desiredStatus="STOPPED")["taskArns"]
    crashed = ecs.describe_tasks(cluster="stg", tasks=arns)["tasks"]
    assert crashed and all(t["stopCode"] == "EssentialContainerExited" for t in crashed)
    assert all(t["stoppedReason"] == "Essential container in task exited" for t in crashed)
    assert {t["containers"][0]["exitCode"] for t in crashed} == {1}
    assert all(t["startedAt"] for t in crashed)  # they did reach RUNNING
    assert ecs.list_service_deployments(cluster="stg", service="web")["serviceDeployments"][0]["status"] == \
        "IN_PROGRESS"


def test_crash_after_healthy_loops_on_a_completed_deployment(sim: Simulator) -> None:
    s = seed(sim, "stg", [ServiceSpec("web", desired=2, circuit_breaker=True, rollback=True)])
    ecs = client("ecs")
    # Healthy after 2 s, exits 137 after 5 s: the rollout completes, then the tasks crash-loop.
    sim.crash_image(sim.push_image(s.services["web"].repository, "latest"), after=5, exit_code=137)
    ecs.update_service(cluster="stg", service="web", forceNewDeployment=True)
    sim.advance(90)
    svc = _svc(ecs, "web")
    [dep] = svc["deployments"]
    assert dep["rolloutState"] == "COMPLETED" and dep["failedTasks"] == 0  # the breaker stopped watching
    arns = ecs.list_tasks(cluster="stg", serviceName="web", desiredStatus="STOPPED")["taskArns"]
    exits = [t["containers"][0].get("exitCode") for t in ecs.describe_tasks(cluster="stg", tasks=arns)["tasks"]
             if t["stopCode"] == "EssentialContainerExited"]
    assert len(exits) >= 4 and set(exits) == {137}


def test_code_deploy_service_has_task_sets_and_refuses_force_deploy(sim: Simulator) -> None:
    s = seed(sim, "stg", [ServiceSpec("bg", controller="CODE_DEPLOY")])
    ecs = client("ecs")
    svc = _svc(ecs, "bg")
    assert svc["deployments"] == [] and len(svc["taskSets"]) == 1
    assert svc["deploymentController"]["type"] == "CODE_DEPLOY"
    with pytest.raises(ClientError) as e:
        ecs.update_service(cluster="stg", service="bg", forceNewDeployment=True)
    assert e.value.response["Error"]["Code"] == "InvalidParameterException"
    assert "CODE_DEPLOY deployment controller" in e.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as e:
        ecs.update_service(cluster="stg", service="bg", taskDefinition=s.services["bg"].task_definition_arn)
    assert e.value.response["Error"]["Message"] == (
        "Unable to update task definition on services with a CODE_DEPLOY deployment controller. "
        "Use AWS CodeDeploy to trigger a new deployment.")
    # Desired count may still change.
    assert ecs.update_service(cluster="stg", service="bg", desiredCount=3)["service"]["desiredCount"] == 3


def test_replacements_reuse_the_pinned_digest_new_deployment_resolves_the_tag(sim: Simulator) -> None:
    s = seed(sim, "stg", [ServiceSpec("web", desired=2)])
    ecs = client("ecs")
    old = s.services["web"].digest
    assert _digests(ecs, "web") == {old}
    new = sim.push_image(s.services["web"].repository, "latest")  # the tag moves
    victim = ecs.list_tasks(cluster="stg", serviceName="web")["taskArns"][0]
    ecs.stop_task(cluster="stg", task=victim)
    sim.advance(20)
    assert _digests(ecs, "web") == {old}  # restart: same image (version consistency)
    ecs.update_service(cluster="stg", service="web", forceNewDeployment=True)
    sim.run_until(lambda: sim.service("stg", "web").deployments[0].rollout_state == "COMPLETED")
    sim.advance(10)
    assert _digests(ecs, "web") == {new}  # redeploy: the tag re-resolved
    rev = ecs.describe_service_revisions(serviceRevisionArns=[
        ecs.describe_service_deployments(serviceDeploymentArns=[_svc(ecs, "web")["currentServiceDeployment"]])[
            "serviceDeployments"][0]["targetServiceRevision"]["arn"]])["serviceRevisions"][0]
    assert rev["containerImages"][0]["imageDigest"] == new


def test_version_consistency_disabled_repulls_the_tag(sim: Simulator) -> None:
    s = seed(sim, "stg", [ServiceSpec("web", desired=1, version_consistency="disabled")])
    ecs = client("ecs")
    new = sim.push_image(s.services["web"].repository, "latest")
    ecs.stop_task(cluster="stg", task=ecs.list_tasks(cluster="stg", serviceName="web")["taskArns"][0])
    sim.advance(20)
    assert _digests(ecs, "web") == {new}


def test_deleted_pinned_digest_makes_replacements_fail_to_pull(sim: Simulator) -> None:
    s = seed(sim, "stg", [ServiceSpec("web", desired=2)])
    ecs = client("ecs")
    old = s.services["web"].digest
    sim.push_image(s.services["web"].repository, "latest")  # tag moves, old image untagged ...
    ecr = client("ecr")
    ecr.batch_delete_image(repositoryName=s.services["web"].repository, imageIds=[{"imageDigest": old}])  # ... expired
    victim = ecs.list_tasks(cluster="stg", serviceName="web")["taskArns"][0]
    ecs.stop_task(cluster="stg", task=victim)
    sim.advance(30)
    arns = ecs.list_tasks(cluster="stg", serviceName="web", desiredStatus="STOPPED")["taskArns"]
    failed = [t for t in ecs.describe_tasks(cluster="stg", tasks=arns)["tasks"] if t["stopCode"] == "TaskFailedToStart"]
    assert len(failed) >= 2  # a crash loop of replacements
    assert all(old in t["stoppedReason"] and t["stoppedReason"].startswith("CannotPullContainerError") for t in failed)
    # The deployment is COMPLETED: the circuit breaker does not watch it, nothing rolls back.
    assert _svc(ecs, "web")["deployments"][0]["rolloutState"] == "COMPLETED"


def test_circuit_breaker_without_rollback_fails_and_stops_the_service_deployment(sim: Simulator) -> None:
    s = seed(sim, "stg", [ServiceSpec("web", desired=2, circuit_breaker=True, rollback=False)])
    ecs = client("ecs")
    sim.break_image(sim.push_image(s.services["web"].repository, "latest"))
    ecs.update_service(cluster="stg", service="web", forceNewDeployment=True)
    sim.advance(30)
    svc = _svc(ecs, "web")
    primary = svc["deployments"][0]
    assert primary["status"] == "PRIMARY" and primary["rolloutState"] == "FAILED"
    assert primary["rolloutStateReason"] == "ECS deployment circuit breaker: tasks failed to start."
    [sd] = ecs.describe_service_deployments(serviceDeploymentArns=[svc["currentServiceDeployment"]])[
        "serviceDeployments"]
    assert sd["status"] == "STOPPED" and "rollback" not in sd and sd["stoppedAt"]
    cb = sd["deploymentCircuitBreaker"]
    assert cb["status"] == "TRIGGERED" and cb["threshold"] == 3 and cb["failureCount"] >= 3
