"""Task lifecycle: StopTask lag, replacements from the service scheduler, lagging counts."""
from __future__ import annotations

from ecssim import Simulator
from ecssim.seed import ServiceSpec, seed

from .conftest import client


def _service(ecs, cluster: str, name: str) -> dict:
    return ecs.describe_services(cluster=cluster, services=[name])["services"][0]


def _running(ecs, cluster: str, name: str) -> list[dict]:
    arns = ecs.list_tasks(cluster=cluster, serviceName=name)["taskArns"]
    return ecs.describe_tasks(cluster=cluster, tasks=arns)["tasks"] if arns else []


def test_seeded_service_runs_its_tasks(sim: Simulator) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=2)])
    ecs = client("ecs")
    tasks = _running(ecs, "stg", "web")
    assert len(tasks) == 2
    assert {t["lastStatus"] for t in tasks} == {"RUNNING"}
    assert {t["group"] for t in tasks} == {"service:web"}
    svc = _service(ecs, "stg", "web")
    assert svc["runningCount"] == 2 and svc["desiredCount"] == 2 and svc["pendingCount"] == 0
    [dep] = svc["deployments"]
    assert dep["status"] == "PRIMARY" and dep["rolloutState"] == "COMPLETED"
    assert {t["startedBy"] for t in tasks} == {dep["id"]}
    assert all(c["imageDigest"].startswith("sha256:") and c["healthStatus"] == "HEALTHY"
               for t in tasks for c in t["containers"])


def test_stop_task_lags_then_walks_the_lifecycle(sim: Simulator) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=2)])
    ecs = client("ecs")
    victim = _running(ecs, "stg", "web")[0]["taskArn"]
    t0 = sim.clock.now()
    out = ecs.stop_task(cluster="stg", task=victim, reason="Valet Key restart")["task"]
    assert out["desiredStatus"] == "STOPPED" and out["lastStatus"] == "RUNNING"
    seen = []
    for _ in range(12):
        t = ecs.describe_tasks(cluster="stg", tasks=[victim])["tasks"][0]
        if not seen or seen[-1][1] != t["lastStatus"]:
            seen.append((sim.clock.now() - t0, t["lastStatus"]))
        sim.advance(0.5)
    assert [s for _, s in seen] == ["RUNNING", "DEACTIVATING", "STOPPING", "DEPROVISIONING", "STOPPED"]
    assert [round(at, 1) for at, _ in seen] == [0.0, 2.0, 3.0, 4.0, 5.0]
    t = ecs.describe_tasks(cluster="stg", tasks=[victim])["tasks"][0]
    assert t["stoppedReason"] == "Valet Key restart" and t["stopCode"] == "UserInitiated"
    assert t["stoppedAt"] and t["containers"][0]["exitCode"] == 0
    # Listed as STOPPED, no longer as RUNNING.
    assert victim in ecs.list_tasks(cluster="stg", serviceName="web", desiredStatus="STOPPED")["taskArns"]
    assert victim not in ecs.list_tasks(cluster="stg", serviceName="web")["taskArns"]


def test_replacement_starts_only_after_stopped(sim: Simulator) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=2)])
    ecs = client("ecs")
    before = {t["taskArn"] for t in _running(ecs, "stg", "web")}
    victim = min(before)
    dep_id = _service(ecs, "stg", "web")["deployments"][0]["id"]
    ecs.stop_task(cluster="stg", task=victim)
    sim.advance(4.5)  # still DEPROVISIONING: no replacement yet
    assert {t["taskArn"] for t in _running(ecs, "stg", "web")} == before - {victim}
    sim.advance(1.0)  # STOPPED at +5 s; the scheduler starts the replacement
    new = [t for t in _running(ecs, "stg", "web") if t["taskArn"] not in before]
    assert len(new) == 1
    r = new[0]
    assert r["lastStatus"] == "PROVISIONING" and r["startedBy"] == dep_id and r["group"] == "service:web"
    states = [r["lastStatus"]]
    for _ in range(6):  # 1 s each: PROVISIONING, PENDING (pull), ACTIVATING
        sim.advance(0.5)
        s = ecs.describe_tasks(cluster="stg", tasks=[r["taskArn"]])["tasks"][0]
        if s["lastStatus"] != states[-1]:
            states.append(s["lastStatus"])
    assert states == ["PROVISIONING", "PENDING", "ACTIVATING", "RUNNING"]
    s = ecs.describe_tasks(cluster="stg", tasks=[r["taskArn"]])["tasks"][0]
    assert s["containers"][0]["healthStatus"] == "UNKNOWN"  # grace not over yet
    sim.advance(2.0)
    s = ecs.describe_tasks(cluster="stg", tasks=[r["taskArn"]])["tasks"][0]
    assert s["containers"][0]["healthStatus"] == "HEALTHY" and s["healthStatus"] == "HEALTHY"


def test_running_count_lags_the_tasks(sim: Simulator) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=2)])
    ecs = client("ecs")
    victim = _running(ecs, "stg", "web")[0]["taskArn"]
    t0 = sim.clock.now()
    ecs.stop_task(cluster="stg", task=victim)
    sim.advance(2.5)  # lastStatus left RUNNING at +2 s
    assert ecs.describe_tasks(cluster="stg", tasks=[victim])["tasks"][0]["lastStatus"] == "DEACTIVATING"
    counts = []
    for _ in range(3):
        counts.append(_service(ecs, "stg", "web")["runningCount"])
    sim.advance(2.0)
    counts.append(_service(ecs, "stg", "web")["runningCount"])
    # Two stale reads, and the change must be 2 s old: visible only at the fourth read.
    assert counts == [2, 2, 2, 1]
    # The truth recorder saw the wanted-and-running count drop at the StopTask instant.
    assert sim.truth.min_running_wanted("web", since=t0) == 1
    assert next(p.time - t0 for p in sim.truth.series("web") if p.time >= t0) == 0.0


def test_list_tasks_filters_by_service_and_delete_drains(sim: Simulator) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=2), ServiceSpec("api", desired=1)])
    ecs = client("ecs")
    web = ecs.list_tasks(cluster="stg", serviceName="web")["taskArns"]
    api = ecs.list_tasks(cluster="stg", serviceName="api")["taskArns"]
    assert len(web) == 2 and len(api) == 1 and not set(web) & set(api)
    ecs.update_service(cluster="stg", service="api", desiredCount=0)
    ecs.delete_service(cluster="stg", service="api")
    sim.advance(10)
    assert ecs.list_tasks(cluster="stg", serviceName="api")["taskArns"] == []
    [t] = ecs.describe_tasks(cluster="stg", tasks=api)["tasks"]
    assert t["lastStatus"] == "STOPPED" and t["stopCode"] == "ServiceSchedulerInitiated"
    assert ecs.describe_services(cluster="stg", services=["api"])["services"][0]["status"] == "INACTIVE"
    assert len(ecs.list_tasks(cluster="stg", serviceName="web")["taskArns"]) == 2


def test_stopped_tasks_vanish_after_an_hour(sim: Simulator) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=1)])
    ecs = client("ecs")
    [arn] = ecs.list_tasks(cluster="stg", serviceName="web")["taskArns"]
    ecs.stop_task(cluster="stg", task=arn)
    sim.advance(3600 + 10)
    assert ecs.describe_tasks(cluster="stg", tasks=[arn])["failures"][0]["reason"] == "MISSING"
    assert arn not in ecs.list_tasks(cluster="stg", desiredStatus="STOPPED")["taskArns"]
    assert len(ecs.list_tasks(cluster="stg", serviceName="web")["taskArns"]) == 1
