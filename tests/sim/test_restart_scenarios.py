"""Restart and redeploy against the ECS simulator (fast clock): each test asserts what ECS really did
(``sim.truth``: tasks running and wanted at every instant; ``sim.calls``: the calls made), not our messages."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_lib
from botocore.exceptions import ReadTimeoutError

from cloud.ecs_gateway import EcsGateway
from ecssim import Simulator
from ecssim.seed import Seeded, ServiceSpec, seed
from scope.errors import OperationFailed
from workers.ecs import EcsOperations

from .conftest import client

TWO_MINUTES = 120.0
_gateway: list[EcsGateway | None] = [None]


@pytest.fixture(autouse=True, params=["own reads", "gateway"])
def reads(request: pytest.FixtureRequest, redis_url: str) -> Iterator[None]:
    """Every scenario twice: with the job's own reads, and through the process's ECS gateway
    (reads shared per tick in Redis, waits ending on tick boundaries)."""
    if request.param == "gateway":
        r = redis_lib.Redis.from_url(redis_url)
        r.flushdb()
        _gateway[0] = EcsGateway(r, interval=3)
    yield
    _gateway[0] = None


class Crash(Exception):
    """The worker process dies here."""


def ops(sim: Simulator, events: list[tuple[str, str]] | None = None, saved: list[dict[str, Any]] | None = None,
        **kw: Any) -> EcsOperations:
    ev = events if events is not None else []
    keep = saved if saved is not None else []
    return EcsOperations(client("ecs"), "stg", lambda k, m: ev.append((k, m)), lambda p: keep.append(dict(p)),
                         poll_interval=3, timeout=900, sleep=sim.advance, clock=sim.clock.now,
                         ecr=client("ecr"), elbv2=client("elbv2"), region="us-east-1",
                         gateway=_gateway[0], account="123456789012", **kw)


def wanted(sim: Simulator, name: str = "web") -> list[Any]:
    return [t for t in sim.tasks("stg", name) if t.wanted_running]


def all_new_and_healthy(sim: Simulator, originals: set[str], name: str = "web") -> bool:
    """Every task ECS wants running is new and counted healthy, and there are desired of them."""
    svc = sim.service("stg", name)
    now = sim.clock.now()
    tasks = wanted(sim, name)
    return (len(tasks) == svc.desired and all(t.arn not in originals for t in tasks)
            and all(t.counted_healthy(now, sim.timings.no_health_check_settle) for t in tasks))


def originals_of(sim: Simulator, name: str = "web") -> set[str]:
    return {t.arn for t in wanted(sim, name)}


def moved_tag(sim: Simulator, s: Seeded, name: str = "web") -> str:
    """Move the service's tag to a new image: a new deployment would change the image, so batches."""
    return sim.push_image(s.services[name].repository, "latest")


# ---- the deployment mechanism -------------------------------------------------------------
@pytest.mark.parametrize("desired,min_pct,lb", [(4, 50, True), (2, 100, False), (1, 100, True)])
def test_restart_by_new_deployment_keeps_capacity_and_the_image(sim: Simulator, desired: int, min_pct: int,
                                                                lb: bool) -> None:
    s = seed(sim, "stg", [ServiceSpec("web", desired=desired, min_percent=min_pct, load_balancer=lb,
                                      circuit_breaker=True, rollback=True)])
    before = originals_of(sim)
    t0 = sim.clock.now()
    out = ops(sim).restart("web", {})
    assert sim.calls.count("UpdateService") == 1 and sim.calls.count("StopTask") == 0
    [upd] = sim.calls.of("UpdateService")
    assert upd.params.get("forceNewDeployment") is True
    assert sim.truth.violations("web", since=t0) == []
    assert sim.truth.min_running_wanted("web", since=t0) >= max(1, -(-desired * min_pct // 100))
    assert all_new_and_healthy(sim, before)  # succeeded only once the new tasks were healthy
    assert {t.containers[0].digest for t in wanted(sim)} == {s.services["web"].digest}
    secs = round(sim.clock.now() - t0)
    assert out.detail == f"HEALTHY after {secs}s · same image sha:{s.services['web'].digest[7:13]}"


def test_a_tag_that_moves_during_the_deployment_fails_the_restart(sim: Simulator) -> None:
    s = seed(sim, "stg", [ServiceSpec("web", desired=2, min_percent=50)])
    moved: list[str] = []

    def checkpoint(p: dict[str, Any]) -> None:  # between the preflight and UpdateService, someone pushes
        if p.get("deploy_from") is not None and not moved:
            moved.append(sim.push_image(s.services["web"].repository, "latest"))

    o = ops(sim)
    o.checkpoint = checkpoint
    with pytest.raises(OperationFailed) as e:
        o.restart("web", {})
    assert "The image changed during the restart (the tag moved while the deployment ran)" in e.value.detail
    assert f"sha:{s.services['web'].digest[7:13]} → sha:{moved[0][7:13]}" in e.value.detail
    assert {t.containers[0].digest for t in wanted(sim)} == {moved[0]}  # what ECS really runs now


def test_code_deploy_service_is_refused_and_nothing_stopped(sim: Simulator) -> None:
    seed(sim, "stg", [ServiceSpec("web"), ServiceSpec("bg", controller="CODE_DEPLOY")])
    for action in ("restart", "redeploy"):
        with pytest.raises(OperationFailed) as e:
            getattr(ops(sim), action)("bg", {})
        assert "CODE_DEPLOY" in e.value.detail and "CodeDeploy" in e.value.detail
    assert sim.calls.count("StopTask") == 0 and sim.calls.count("UpdateService") == 0


def test_deployment_in_progress_is_refused(sim: Simulator) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=2)])
    client("ecs").update_service(cluster="stg", service="web", forceNewDeployment=True)
    sim.calls.clear()
    for action in ("restart", "redeploy"):
        with pytest.raises(OperationFailed, match="A deployment of web is in progress"):
            getattr(ops(sim), action)("web", {})
    assert sim.calls.count("StopTask") == 0 and sim.calls.count("UpdateService") == 0


def test_running_digest_gone_from_ecr_is_refused_suggesting_redeploy(sim: Simulator) -> None:
    s = seed(sim, "stg", [ServiceSpec("web", desired=2)])
    moved_tag(sim, s)
    client("ecr").batch_delete_image(repositoryName=s.services["web"].repository,
                                     imageIds=[{"imageDigest": s.services["web"].digest}])
    t0 = sim.clock.now()
    with pytest.raises(OperationFailed) as e:
        ops(sim).restart("web", {})
    assert "no longer exists in ECR" in e.value.detail and "Redeploy" in e.value.detail
    assert sim.calls.count("StopTask") == 0 and sim.calls.count("UpdateService") == 0
    assert sim.truth.min_running_wanted("web", since=t0) == 2


def test_service_without_running_tasks_is_refused(sim: Simulator) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=0)])
    with pytest.raises(OperationFailed, match="no running task to restart.*Redeploy it, or scale it up"):
        ops(sim).restart("web", {})
    assert sim.calls.count("UpdateService") == 0


# ---- batches ------------------------------------------------------------------------------
def test_batches_when_the_tag_moved_keep_the_minimum_and_the_image(sim: Simulator) -> None:
    s = seed(sim, "stg", [ServiceSpec("web", desired=4, min_percent=50, load_balancer=True)])
    moved_tag(sim, s)
    before = originals_of(sim)
    t0 = sim.clock.now()
    events: list[tuple[str, str]] = []
    out = ops(sim, events).restart("web", {})
    stops = sim.calls.of("StopTask")
    assert sorted(c.params["task"] for c in stops) == sorted(before)  # each original once
    assert sim.calls.count("UpdateService") == 0
    assert sim.truth.violations("web", since=t0) == []
    assert sim.truth.min_healthy_wanted("web", since=t0) >= 2
    assert all_new_and_healthy(sim, before)
    assert {t.containers[0].digest for t in wanted(sim)} == {s.services["web"].digest}  # pinned digest reused
    assert out.detail.endswith(f"· same image sha:{s.services['web'].digest[7:13]}")
    # Two batches of two: the second only after the first's replacements were healthy.
    assert len({round(c.time) for c in stops}) == 2
    assert any(m.startswith("Batch 1 of 2: stopping 2 old task(s)") for _, m in events)
    assert any(k == "warning" and "tag of container app now names" in m for k, m in events)


def test_batches_of_a_single_task_service_say_reduced_capacity(sim: Simulator) -> None:
    s = seed(sim, "stg", [ServiceSpec("web", desired=1, min_percent=100)])
    moved_tag(sim, s)
    before = originals_of(sim)
    events: list[tuple[str, str]] = []
    ops(sim, events).restart("web", {})
    assert all_new_and_healthy(sim, before)
    assert any(k == "warning" and "briefly at reduced capacity" in m for k, m in events)


def test_plain_batches_without_ecr_never_go_below_the_minimum(sim: Simulator) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=6, min_percent=50, health_check=False)])
    before = originals_of(sim)
    t0 = sim.clock.now()
    o = ops(sim)
    o.ecr = None  # e.g. an image on Docker Hub: the digest cannot be checked
    o.restart("web", {})
    assert sim.truth.violations("web", since=t0) == []
    assert all_new_and_healthy(sim, before)


# ---- fail fast ----------------------------------------------------------------------------
@pytest.mark.parametrize("mechanism", ["deployment", "batches"])
def test_crash_looping_replacements_fail_within_two_minutes(sim: Simulator, mechanism: str) -> None:
    s = seed(sim, "stg", [ServiceSpec("web", desired=4, min_percent=50)])
    if mechanism == "batches":
        moved_tag(sim, s)
    sim.crash_image(s.services["web"].digest, after=1, exit_code=137)  # new tasks of this image crash
    t0 = sim.clock.now()
    with pytest.raises(OperationFailed) as e:
        ops(sim).restart("web", {})
    assert sim.clock.now() - t0 < TWO_MINUTES
    assert "Essential container in task exited (exit code 137)" in e.value.detail
    assert sim.truth.violations("web", since=t0) == []
    if mechanism == "batches":
        # No task was stopped after the second replacement failed.
        failed = sorted(t.stopped_at for t in sim.tasks("stg", "web")
                        if t.arn not in {c.params["task"] for c in sim.calls.of("StopTask")} and t.stopped_at
                        and t.stopped_at >= t0)
        assert len(failed) >= 2 and all(c.time <= failed[1] for c in sim.calls.of("StopTask"))


def degraded(sim: Simulator) -> Seeded:
    """Desired 4 at 50%; the running image can no longer be pulled and two tasks stopped: 2 of 4 run."""
    s = seed(sim, "stg", [ServiceSpec("web", desired=4, min_percent=50)])
    sim.break_image(s.services["web"].digest)
    ecs = client("ecs")
    for a in ecs.list_tasks(cluster="stg", serviceName="web")["taskArns"][:2]:
        ecs.stop_task(cluster="stg", task=a)
    sim.advance(30)
    return s


def test_degraded_service_keeps_its_survivors(sim: Simulator) -> None:
    """Desired 4, two tasks crash-loop at start (the image cannot be pulled any more): the two survivors stay."""
    degraded(sim)
    survivors = originals_of(sim)
    assert len(survivors) == 2
    sim.calls.clear()
    t0 = sim.clock.now()
    with pytest.raises(OperationFailed, match="CannotPullContainerError"):
        ops(sim).restart("web", {})
    assert sim.clock.now() - t0 < TWO_MINUTES
    assert survivors <= originals_of(sim)  # both still running and wanted
    assert sim.truth.min_running_wanted("web", since=t0) == 2


# ---- resume -------------------------------------------------------------------------------
def test_resume_after_a_crash_mid_batch_repeats_no_stop(sim: Simulator) -> None:
    s = seed(sim, "stg", [ServiceSpec("web", desired=4, min_percent=50)])
    moved_tag(sim, s)
    before = originals_of(sim)
    t0 = sim.clock.now()
    saved: list[dict[str, Any]] = []
    first = ops(sim, saved=saved)
    stops = 0

    def crash_after_third_stop(**_: Any) -> None:
        nonlocal stops
        stops += 1
        if stops == 3:
            raise Crash
    first.ecs.meta.events.register("after-call.ecs.StopTask", crash_after_third_stop)
    with pytest.raises(Crash):
        first.restart("web", {})
    sim.advance(2)
    params = saved[-1]  # what the job row holds
    out = ops(sim).restart("web", params)
    stopped = Counter(c.params["task"] for c in sim.calls.of("StopTask"))
    assert set(stopped) == before and max(stopped.values()) == 1  # every original stopped exactly once
    assert sim.truth.violations("web", since=t0) == []
    assert all_new_and_healthy(sim, before) and out.detail.startswith("HEALTHY after")


def test_resume_after_update_service_adopts_the_deployment(sim: Simulator) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=2, min_percent=100)])
    before = originals_of(sim)
    saved: list[dict[str, Any]] = []
    first = ops(sim, saved=saved)
    first.ecs.meta.events.register("after-call.ecs.UpdateService", lambda **_: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        first.restart("web", {})
    params = saved[-1]
    assert params["mechanism"] == "deployment" and "deployment_id" not in params  # crashed before recording it
    out = ops(sim).restart("web", params)
    assert sim.calls.count("UpdateService") == 1
    assert all_new_and_healthy(sim, before) and out.detail.startswith("HEALTHY after")


def test_read_timeout_on_update_service_looks_then_adopts(sim: Simulator) -> None:
    seed(sim, "stg", [ServiceSpec("web", desired=2, min_percent=100)])
    o = ops(sim)

    def timeout(**_: Any) -> None:
        raise ReadTimeoutError(endpoint_url="https://ecs.us-east-1.amazonaws.com")
    o.ecs.meta.events.register("after-call.ecs.UpdateService", timeout)
    out = o.restart("web", {})
    assert sim.calls.count("UpdateService") == 1 and out.detail.startswith("HEALTHY after")


# ---- redeploy -----------------------------------------------------------------------------
def test_redeploy_reports_old_and_new_digests(sim: Simulator) -> None:
    s = seed(sim, "stg", [ServiceSpec("web", desired=2, min_percent=100, load_balancer=True)])
    new = moved_tag(sim, s)
    t0 = sim.clock.now()
    out = ops(sim).redeploy("web", {})
    assert out.detail == f"Deployed sha:{new[7:13]} (was sha:{s.services['web'].digest[7:13]})"
    assert {t.containers[0].digest for t in wanted(sim)} == {new}
    assert sim.truth.violations("web", since=t0) == []


def test_redeploy_rolled_back_by_the_circuit_breaker_says_so(sim: Simulator) -> None:
    s = seed(sim, "stg", [ServiceSpec("web", desired=2, circuit_breaker=True, rollback=True)])
    sim.break_image(moved_tag(sim, s))
    with pytest.raises(OperationFailed) as e:
        ops(sim).redeploy("web", {})
    assert e.value.detail == ("Rolled back by the deployment circuit breaker: "
                              "ECS deployment circuit breaker: tasks failed to start.")
    assert {t.containers[0].digest for t in wanted(sim)} == {s.services["web"].digest}  # the old image again


def test_batches_refused_when_a_degraded_service_is_at_its_minimum(sim: Simulator) -> None:
    """Desired 4 at 50%, only 2 healthy, tag moved: one more task down would break the minimum."""
    s = degraded(sim)
    moved_tag(sim, s)
    sim.calls.clear()
    with pytest.raises(OperationFailed, match="has 2 healthy task\\(s\\) of 4 and must keep 2"):
        ops(sim).restart("web", {})
    assert sim.calls.count("StopTask") == 0 and sim.calls.count("UpdateService") == 0
