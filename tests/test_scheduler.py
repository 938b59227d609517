"""The scheduler against moto with a fixed clock: window edges, DST, pauses, races, restarts, refusals."""
from __future__ import annotations

import datetime as dt
import threading
from typing import Any, Callable

import pytest
import redis as redis_lib
from botocore.exceptions import ClientError
from sqlalchemy import delete, select

from jobs.audit_stream import AuditLog
from jobs.schedule_nudge import NUDGE_KEY
from scope.models import ScheduledService, SchedulePause, SchedulePeriod
from scope.schedule_store import DOWN, SCALING_DOWN, SCALING_UP, ScheduleStore
from tests.conftest import audit_events, boto, seed_cluster
from web.services.schedule import ScheduleControl
from wiring.runtime import Runtime
from workers.schedule_reconciler import LOCK_PREFIX, Reconciler, run_scheduler

UTC = dt.timezone.utc
BERLIN_WINDOW = 'schedule = { timezone = "Europe/Berlin", up = "Mon-Fri 07:00-20:00" }'
TOML = f"""
[environments.night]
region = "us-east-1"
cluster = "night"
{BERLIN_WINDOW}

[environments.always]
region = "us-east-1"
cluster = "always"
schedule = {{ timezone = "UTC", up = "Mon-Sun 00:00-24:00" }}

[environments.prod]
class = "prod"
enabled = true
region = "us-east-1"
cluster = "prod"
{BERLIN_WINDOW}

[environments.off]
enabled = false
region = "us-east-1"
cluster = "off"
{BERLIN_WINDOW}

[environments.plain]
region = "us-east-1"
cluster = "plain"
"""

# Monday 12 January 2026 (CET, UTC+1): the window closes at 20:00 Berlin = 19:00 UTC
# and opens again on Tuesday at 07:00 Berlin = 06:00 UTC.
MON_UP = dt.datetime(2026, 1, 12, 18, 59, tzinfo=UTC)
MON_DOWN = dt.datetime(2026, 1, 12, 19, 0, tzinfo=UTC)
TUE_EARLY = dt.datetime(2026, 1, 13, 5, 59, tzinfo=UTC)
TUE_UP = dt.datetime(2026, 1, 13, 6, 0, tzinfo=UTC)


class Killed(BaseException):
    """Stands in for the process being killed: nothing of ours catches it."""


@pytest.fixture
def environ(environ: dict[str, str], config_file: Callable[[str], str]) -> dict[str, str]:
    return {**environ, "VALETKEY_ENVIRONMENTS": config_file(TOML)}


@pytest.fixture(autouse=True)
def clean_schedule_tables(rt: Runtime) -> None:
    # The PostgreSQL schema is shared by the whole test session.
    with rt.sessions.begin() as s:
        for model in (SchedulePause, ScheduledService, SchedulePeriod):
            s.execute(delete(model))


def seed(cluster: str, counts: dict[str, int]) -> None:
    seed_cluster(cluster, list(counts), running=0)
    ecs = boto("ecs")
    for svc, n in counts.items():
        if n != 2:
            ecs.update_service(cluster=cluster, service=svc, desiredCount=n)


def desired(cluster: str) -> dict[str, int]:
    ecs = boto("ecs")
    arns = ecs.list_services(cluster=cluster)["serviceArns"]
    return {s["serviceName"]: s["desiredCount"]
            for s in ecs.describe_services(cluster=cluster, services=arns)["services"] if s["status"] == "ACTIVE"}


def update_calls(rt: Runtime) -> list[tuple[str, str, int]]:
    """Every UpdateService the runtime's ECS clients send, recorded by a botocore hook."""
    calls: list[tuple[str, str, int]] = []

    def hook(params: dict[str, Any], **_: Any) -> None:
        calls.append((params["cluster"], params["service"], params["desiredCount"]))

    for env in rt.catalog:
        rt.aws.ecs(env).meta.events.register("before-parameter-build.ecs.UpdateService", hook)
    return calls


def scheduler_entries(rt: Runtime) -> list[dict[str, Any]]:
    return [e for e in audit_events(rt) if e["source"] == "scheduler"]


def rows(rt: Runtime) -> dict[str, tuple[int, str]]:
    with rt.sessions() as s:
        return {r.service: (r.desired, r.state) for r in s.scalars(select(ScheduledService))}


def control(rt: Runtime, now: dt.datetime) -> ScheduleControl:
    return ScheduleControl(ScheduleStore(rt.sessions, clock=lambda: now), rt.audit, rt.redis, clock=lambda: now)


# ---- window edges ---------------------------------------------------------------------
def test_window_edge_scales_down_then_restores_the_same_counts(rt, steady_tasks):
    seed("night", {"api": 2, "worker": 3, "idle": 0})
    calls = update_calls(rt)
    rec = Reconciler.from_runtime(rt)

    assert rec.reconcile_all(MON_UP) == [] and calls == []
    changes = rec.reconcile_all(MON_DOWN)
    assert {(c.service, c.before, c.after) for c in changes} == {("api", 2, 0), ("worker", 3, 0)}
    assert desired("night") == {"api": 0, "worker": 0, "idle": 0}
    assert rows(rt) == {"api": (2, DOWN), "worker": (3, DOWN)}
    entries = scheduler_entries(rt)
    assert sorted((e["target"], e["before"], e["after"]) for e in entries) == [
        ("api", {"desired": 2}, {"desired": 0}), ("worker", {"desired": 3}, {"desired": 0})]
    assert all(e["action"] == "schedule.pause" and e["actor"] == "scheduler" and e["outcome"] == "succeeded"
               and e["environment"] == "night" for e in entries)

    # Idempotent: the next ticks of the night change nothing.
    n = len(calls)
    assert rec.reconcile_all(MON_DOWN + dt.timedelta(minutes=1)) == []
    assert rec.reconcile_all(TUE_EARLY) == [] and len(calls) == n

    changes = rec.reconcile_all(TUE_UP)
    assert {(c.service, c.before, c.after, c.action) for c in changes} == {
        ("api", 0, 2, "schedule.resume"), ("worker", 0, 3, "schedule.resume")}
    assert desired("night") == {"api": 2, "worker": 3, "idle": 0}  # idle was never ours
    assert rows(rt) == {}
    resumed = [e for e in scheduler_entries(rt) if e["action"] == "schedule.resume"]
    assert sorted((e["target"], e["before"], e["after"]) for e in resumed) == [
        ("api", {"desired": 0}, {"desired": 2}), ("worker", {"desired": 0}, {"desired": 3})]
    assert rec.reconcile_all(TUE_UP + dt.timedelta(minutes=1)) == []
    assert len(scheduler_entries(rt)) == 4
    assert not rt.redis.exists(LOCK_PREFIX + "night")  # released


def test_services_created_or_scaled_up_while_down_are_left_alone(rt, steady_tasks):
    seed("night", {"api": 2, "worker": 3})
    rec = Reconciler.from_runtime(rt)
    rec.reconcile_all(MON_DOWN)
    ecs = boto("ecs")
    ecs.update_service(cluster="night", service="api", desiredCount=1)  # someone needs it tonight
    seed_cluster("night", ["late"], family_prefix="night2", running=0)  # created while down (desired 2)
    calls = update_calls(rt)

    assert rec.reconcile_all(MON_DOWN + dt.timedelta(minutes=30)) == [] and calls == []
    assert desired("night") == {"api": 1, "worker": 0, "late": 2}

    changes = rec.reconcile_all(TUE_UP)
    assert [(c.service, c.after) for c in changes] == [("worker", 3)]
    assert desired("night") == {"api": 1, "worker": 3, "late": 2}  # their counts win
    assert rows(rt) == {}


def test_a_service_deleted_while_down_is_forgotten(rt, steady_tasks):
    seed("night", {"api": 2, "gone": 2})
    rec = Reconciler.from_runtime(rt)
    rec.reconcile_all(MON_DOWN)
    boto("ecs").delete_service(cluster="night", service="gone", force=True)
    changes = rec.reconcile_all(TUE_UP)
    assert [(c.service, c.after) for c in changes] == [("api", 2)]
    assert rows(rt) == {}


# ---- daylight saving time ---------------------------------------------------------------
@pytest.mark.parametrize("before_close, close, before_open, open_", [
    # Spring: closes Friday 27 March at 20:00 CET (19:00 UTC); opens Monday 30 March at 07:00 CEST (05:00 UTC).
    ("2026-03-27T18:59Z", "2026-03-27T19:00Z", "2026-03-30T04:59Z", "2026-03-30T05:00Z"),
    # Autumn: closes Friday 23 October at 20:00 CEST (18:00 UTC); opens Monday 26 October at 07:00 CET (06:00 UTC).
    ("2026-10-23T17:59Z", "2026-10-23T18:00Z", "2026-10-26T05:59Z", "2026-10-26T06:00Z"),
])
def test_berlin_wall_clock_across_dst_weekends(rt, steady_tasks, before_close, close, before_open, open_):
    seed("night", {"api": 2})
    rec = Reconciler.from_runtime(rt)
    t = dt.datetime.fromisoformat
    assert rec.reconcile_all(t(before_close)) == []
    assert [(c.service, c.after) for c in rec.reconcile_all(t(close))] == [("api", 0)]
    # The Sunday of the change itself is just another off day.
    assert rec.reconcile_all(t(close) + dt.timedelta(days=2)) == []
    assert rec.reconcile_all(t(before_open)) == [] and desired("night") == {"api": 0}
    assert [(c.service, c.after) for c in rec.reconcile_all(t(open_))] == [("api", 2)]
    assert desired("night") == {"api": 2}


# ---- pause and resume -------------------------------------------------------------------
def test_pause_without_until_leaves_the_environment_alone_until_resumed(rt, steady_tasks):
    seed("night", {"api": 2})
    env = rt.catalog.get("night")
    rec = Reconciler.from_runtime(rt)
    state = control(rt, MON_UP).pause(env, until=None, actor="olga@acme.test", source="api")
    assert state["paused"] and state["paused_until"] is None and state["paused_by"] == "olga@acme.test"

    assert rec.reconcile_all(MON_DOWN) == [] and rec.reconcile_all(TUE_EARLY) == []
    assert desired("night") == {"api": 2}

    state = control(rt, TUE_EARLY).resume(env, actor="olga@acme.test", source="api")
    assert not state["paused"] and rt.redis.lrange(NUDGE_KEY, 0, -1) == [b"night"]
    assert [(c.service, c.after) for c in rec.reconcile_named("night", TUE_EARLY)] == [("api", 0)]
    ops = [(e["action"], e["actor"], e["before"], e["after"]) for e in audit_events(rt) if e["source"] == "api"]
    assert ops == [("schedule.pause", "olga@acme.test", {"paused": False, "until": None}, {"paused": True, "until": None}),
                   ("schedule.resume", "olga@acme.test", {"paused": True, "until": None}, {"paused": False, "until": None})]


def test_pause_at_night_keeps_services_down_in_the_morning_until_resumed(rt, steady_tasks):
    seed("night", {"api": 2})
    env = rt.catalog.get("night")
    rec = Reconciler.from_runtime(rt)
    rec.reconcile_all(MON_DOWN)
    control(rt, MON_DOWN).pause(env, until=None, actor="olga@acme.test", source="web")
    assert rec.reconcile_all(TUE_UP) == [] and desired("night") == {"api": 0}
    control(rt, TUE_UP).resume(env, actor="olga@acme.test", source="web")
    assert [(c.service, c.after) for c in rec.reconcile_all(TUE_UP)] == [("api", 2)]


def test_pause_with_until_ends_by_itself_like_a_resume(rt, steady_tasks):
    seed("night", {"api": 2})
    env = rt.catalog.get("night")
    rec = Reconciler.from_runtime(rt)
    until = MON_DOWN + dt.timedelta(hours=2)
    state = control(rt, MON_UP).pause(env, until=until, actor="olga@acme.test", source="api")
    assert state["paused_until"] == "2026-01-12T21:00:00Z"

    assert rec.reconcile_all(MON_DOWN) == []
    assert rec.reconcile_all(until - dt.timedelta(minutes=1)) == [] and desired("night") == {"api": 2}
    assert [(c.service, c.after) for c in rec.reconcile_all(until)] == [("api", 0)]
    ended = [e for e in scheduler_entries(rt) if e["action"] == "schedule.resume"]
    assert len(ended) == 1 and ended[0]["target"] == "" and "ended" in ended[0]["detail"]
    assert ended[0]["before"] == {"paused": True, "until": "2026-01-12T21:00:00Z"}
    with rt.sessions() as s:
        assert s.get(SchedulePause, "night") is None
    assert rec.reconcile_all(until + dt.timedelta(minutes=1)) == []
    assert len(scheduler_entries(rt)) == 2  # the end of the pause and one scale-down


def test_a_pause_made_during_a_pass_stops_it(rt, steady_tasks):
    seed("night", {"a": 2, "b": 2})
    env = rt.catalog.get("night")

    def pause_now(**_: Any) -> None:
        with rt.sessions() as s:
            paused = s.get(SchedulePause, "night") is not None
        if not paused:
            control(rt, MON_DOWN).pause(env, until=None, actor="olga@acme.test", source="web")

    rt.aws.ecs(env).meta.events.register("after-call.ecs.UpdateService", pause_now)
    changes = Reconciler.from_runtime(rt).reconcile_all(MON_DOWN)
    assert [c.service for c in changes] == ["a"] and desired("night") == {"a": 0, "b": 2}


# ---- never prod, never disabled, never unscheduled -------------------------------------
def test_never_touches_prod_disabled_always_up_or_unscheduled(rt, steady_tasks):
    for cluster in ("prod", "off", "always", "plain"):
        seed(cluster, {"api": 2})
    calls = update_calls(rt)
    rec = Reconciler.from_runtime(rt)
    for now in (MON_DOWN, TUE_UP, MON_DOWN + dt.timedelta(days=5)):
        assert rec.reconcile_all(now) == []
        for name in ("prod", "off", "always", "plain"):
            assert rec.reconcile(rt.catalog.get(name), now) == []
    assert calls == [] and rows(rt) == {} and scheduler_entries(rt) == []
    assert all(desired(c) == {"api": 2} for c in ("prod", "off", "always", "plain"))


# ---- two schedulers ------------------------------------------------------------------------
def test_two_schedulers_racing_change_each_service_once(rt, steady_tasks):
    seed("night", {"a": 1, "b": 2, "c": 3})
    rt2 = Runtime.from_settings(rt.settings)
    try:
        calls = update_calls(rt)
        calls2 = update_calls(rt2)
        recs = [Reconciler.from_runtime(rt), Reconciler.from_runtime(rt2)]
        for now in (MON_DOWN, TUE_UP):
            barrier = threading.Barrier(4)
            errors: list[BaseException] = []

            def run(rec: Reconciler) -> None:
                try:
                    barrier.wait()
                    for i in range(3):
                        rec.reconcile_all(now + dt.timedelta(seconds=i))
                except BaseException as e:  # noqa: BLE001 - reported below
                    errors.append(e)

            threads = [threading.Thread(target=run, args=(r,)) for r in recs + recs]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not errors
        every = sorted(calls + calls2)
        assert every == sorted([("night", s, 0) for s in "abc"] + [("night", "a", 1), ("night", "b", 2),
                                                                      ("night", "c", 3)])
        entries = scheduler_entries(rt)
        assert sorted((e["action"], e["target"]) for e in entries) == sorted(
            [("schedule.pause", s) for s in "abc"] + [("schedule.resume", s) for s in "abc"])
        assert desired("night") == {"a": 1, "b": 2, "c": 3}
    finally:
        rt2.close()


def test_a_held_lock_makes_the_other_scheduler_skip(rt, steady_tasks):
    seed("night", {"api": 2})
    rt.redis.set(LOCK_PREFIX + "night", "someone-else", px=60_000)
    rec = Reconciler.from_runtime(rt)
    assert rec.reconcile_all(MON_DOWN) == [] and desired("night") == {"api": 2}
    assert rt.redis.get(LOCK_PREFIX + "night") == b"someone-else"  # not ours to release
    rt.redis.delete(LOCK_PREFIX + "night")  # the holder finished (or its lock expired)
    assert [c.service for c in rec.reconcile_all(MON_DOWN)] == ["api"]


def test_a_lock_lost_mid_way_stops_the_pass(rt, steady_tasks):
    seed("night", {"a": 2, "b": 2})
    env = rt.catalog.get("night")

    def expire_and_take_over(**_: Any) -> None:
        rt.redis.set(LOCK_PREFIX + "night", "the-other-scheduler", px=60_000)

    rt.aws.ecs(env).meta.events.register("after-call.ecs.UpdateService", expire_and_take_over)
    changes = Reconciler.from_runtime(rt).reconcile_all(MON_DOWN)
    assert [c.service for c in changes] == ["a"] and desired("night") == {"a": 0, "b": 2}
    assert rt.redis.get(LOCK_PREFIX + "night") == b"the-other-scheduler"
    with rt.sessions() as s:
        assert s.get(SchedulePeriod, "night") is None  # the pass is not complete: the next tick finishes it


# ---- restarts and failures ---------------------------------------------------------------
def test_restart_between_night_and_morning_restores_from_the_database(rt, steady_tasks):
    seed("night", {"api": 2, "worker": 4})
    Reconciler.from_runtime(rt).reconcile_all(MON_DOWN)
    rt2 = Runtime.from_settings(rt.settings)  # a new scheduler process: nothing in memory
    try:
        changes = Reconciler.from_runtime(rt2).reconcile_all(TUE_UP)
    finally:
        rt2.close()
    assert {(c.service, c.after) for c in changes} == {("api", 2), ("worker", 4)}
    assert desired("night") == {"api": 2, "worker": 4}


@pytest.mark.parametrize("event", ["before-call", "after-call"])
def test_killed_mid_scale_down_a_new_scheduler_finishes_with_one_entry_per_change(rt, steady_tasks, event):
    seed("night", {"a": 2, "b": 3})
    env = rt.catalog.get("night")
    seen: list[int] = []

    def kill_on_b(**_: Any) -> None:  # services are handled in name order: a, then b
        seen.append(1)
        if len(seen) == 2:
            raise Killed()

    rt.aws.ecs(env).meta.events.register(f"{event}.ecs.UpdateService", kill_on_b)
    with pytest.raises(Killed):
        Reconciler.from_runtime(rt).reconcile_all(MON_DOWN)
    assert rows(rt) == {"a": (2, DOWN), "b": (3, SCALING_DOWN)}
    assert desired("night")["b"] == (0 if event == "after-call" else 3)

    rt2 = Runtime.from_settings(rt.settings)
    try:
        rec2 = Reconciler.from_runtime(rt2)
        rec2.reconcile_all(MON_DOWN + dt.timedelta(minutes=1))
        assert rows(rt) == {"a": (2, DOWN), "b": (3, DOWN)} and desired("night") == {"a": 0, "b": 0}
        entries = scheduler_entries(rt)
        assert sorted((e["target"], e["before"]["desired"]) for e in entries) == [("a", 2), ("b", 3)]
        rec2.reconcile_all(TUE_UP)
    finally:
        rt2.close()
    assert desired("night") == {"a": 2, "b": 3}


def test_killed_mid_restore_a_new_scheduler_records_it_once(rt, steady_tasks):
    seed("night", {"a": 2})
    env = rt.catalog.get("night")
    Reconciler.from_runtime(rt).reconcile_all(MON_DOWN)

    def kill(**_: Any) -> None:
        raise Killed()

    rt.aws.ecs(env).meta.events.register("after-call.ecs.UpdateService", kill)
    with pytest.raises(Killed):
        Reconciler.from_runtime(rt).reconcile_all(TUE_UP)
    assert rows(rt) == {"a": (2, SCALING_UP)} and desired("night") == {"a": 2}
    rt2 = Runtime.from_settings(rt.settings)
    try:
        changes = Reconciler.from_runtime(rt2).reconcile_all(TUE_UP + dt.timedelta(minutes=1))
    finally:
        rt2.close()
    assert [(c.service, c.before, c.after) for c in changes] == [("a", 0, 2)]
    assert [e["action"] for e in scheduler_entries(rt)] == ["schedule.pause", "schedule.resume"]
    assert rows(rt) == {}


def test_audit_trail_down_leaves_the_step_to_finish_later(rt, steady_tasks):
    seed("night", {"api": 2})
    dead = redis_lib.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    broken = Reconciler(rt.catalog, ScheduleStore(rt.sessions), AuditLog(dead), rt.redis, rt.aws.ecs)
    assert broken.reconcile_all(MON_DOWN) == []
    assert desired("night") == {"api": 0} and rows(rt) == {"api": (2, SCALING_DOWN)}
    assert not rt.redis.exists(LOCK_PREFIX + "night")
    changes = Reconciler.from_runtime(rt).reconcile_all(MON_DOWN + dt.timedelta(minutes=1))
    assert [(c.service, c.before, c.after) for c in changes] == [("api", 2, 0)]
    assert len(scheduler_entries(rt)) == 1


def test_aws_refusing_one_service_does_not_stop_the_others(rt, steady_tasks):
    seed("night", {"a": 2, "b": 2})
    env = rt.catalog.get("night")
    refuse = {"b"}

    def access_denied(params: dict[str, Any], **_: Any) -> None:
        if params["service"] in refuse:
            raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "UpdateService")

    rt.aws.ecs(env).meta.events.register("before-parameter-build.ecs.UpdateService", access_denied)
    rec = Reconciler.from_runtime(rt)
    assert [c.service for c in rec.reconcile_all(MON_DOWN)] == ["a"]
    assert desired("night") == {"a": 0, "b": 2} and rows(rt)["b"] == (2, SCALING_DOWN)
    refuse.clear()  # the IAM policy is fixed: the next tick retries b (and only b)
    assert [c.service for c in rec.reconcile_all(MON_DOWN + dt.timedelta(minutes=1))] == ["b"]
    assert len(scheduler_entries(rt)) == 2


def test_ecs_unreachable_changes_nothing(rt, steady_tasks):
    seed("night", {"a": 2})
    env = rt.catalog.get("night")

    def down(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "ServiceUnavailableException", "Message": "x"}}, "ListServices")

    rt.aws.ecs(env).meta.events.register("before-parameter-build.ecs.ListServices", down)
    assert Reconciler.from_runtime(rt).reconcile_all(MON_DOWN) == [] and rows(rt) == {}


# ---- the process loop ------------------------------------------------------------------------
def test_run_scheduler_reconciles_at_start_and_on_a_nudge(rt, steady_tasks):
    seed("night", {"api": 2})
    clock = {"now": MON_DOWN}
    proc_rt = Runtime.from_settings(rt.settings)
    rec = Reconciler.from_runtime(proc_rt, clock=lambda: clock["now"])
    stop = threading.Event()
    # An hour between ticks: anything that happens below is the start-up pass or the nudge.
    t = threading.Thread(target=run_scheduler, args=(proc_rt, stop, 3600.0, rec))
    t.start()
    try:
        wait_for(lambda: desired("night") == {"api": 0}, "the start-up pass to scale down")
        clock["now"] = TUE_UP
        control(rt, TUE_UP).resume(rt.catalog.get("night"), actor="olga@acme.test", source="api")
        wait_for(lambda: desired("night") == {"api": 2}, "the nudge to restore")
    finally:
        stop.set()
        t.join(30)
    assert not t.is_alive()


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# ---- on the ECS simulator: Application Auto Scaling and the UpdateService budget --------------------
def _aas() -> Any:
    return boto("application-autoscaling")


def _min_capacity(service: str, cluster: str = "night") -> int | None:
    found = _aas().describe_scalable_targets(ServiceNamespace="ecs", ResourceIds=[f"service/{cluster}/{service}"],
                                             ScalableDimension="ecs:service:DesiredCount")["ScalableTargets"]
    return found[0]["MinCapacity"] if found else None


def _sim_night(sim: Any, *specs: Any) -> None:
    from ecssim.seed import seed as sim_seed

    sim_seed(sim, "night", list(specs))


def _on_sim(rt: Runtime, sim: Any) -> Reconciler:
    return Reconciler.from_runtime(rt, sleep=sim.advance, timer=sim.clock.now)


def test_sim_autoscaling_undoes_a_plain_scale_to_zero(sim) -> None:
    """The hazard itself (aws-facts A6): MinCapacity 1 puts a desiredCount of 0 back."""
    from ecssim.seed import ServiceSpec

    _sim_night(sim, ServiceSpec("api", desired=2, min_capacity=1, max_capacity=4))
    boto("ecs").update_service(cluster="night", service="api", desiredCount=0)
    sim.advance(sim.timings.autoscaling_delay + 5)
    assert desired("night") == {"api": 1}


def test_sim_min_capacity_is_lowered_for_the_night_and_restored(rt, sim) -> None:
    from ecssim.seed import ServiceSpec

    _sim_night(sim, ServiceSpec("api", desired=2, min_capacity=1, max_capacity=4), ServiceSpec("worker", desired=3))
    rec = _on_sim(rt, sim)
    changes = rec.reconcile_all(MON_DOWN)
    assert {(c.service, c.before, c.after) for c in changes} == {("api", 2, 0), ("worker", 3, 0)}
    sim.advance(sim.timings.autoscaling_delay * 4)
    assert desired("night") == {"api": 0, "worker": 0}  # it stays down: nothing pushed it back
    assert _min_capacity("api") == 0 and _min_capacity("worker") is None
    with rt.sessions() as s:
        assert {r.service: r.min_capacity for r in s.scalars(select(ScheduledService))} == {"api": 1, "worker": None}
    [api_down] = [e for e in scheduler_entries(rt) if e["target"] == "api"]
    assert api_down["before"] == {"desired": 2, "min_capacity": 1} and api_down["after"] == {"desired": 0, "min_capacity": 0}
    assert "MinCapacity was lowered from 1 to 0" in api_down["detail"]

    assert rec.reconcile_all(MON_DOWN + dt.timedelta(minutes=1)) == []  # idempotent at night
    changes = rec.reconcile_all(TUE_UP)
    assert {(c.service, c.after) for c in changes} == {("api", 2), ("worker", 3)}
    assert _min_capacity("api") == 1
    sim.advance(sim.timings.autoscaling_delay * 4)
    assert desired("night") == {"api": 2, "worker": 3}
    api_up = [e for e in scheduler_entries(rt) if e["target"] == "api" and e["action"] == "schedule.resume"]
    assert api_up[0]["after"] == {"desired": 2, "min_capacity": 1} and "MinCapacity is back to 1" in api_up[0]["detail"]
    assert rows(rt) == {}


def test_sim_a_min_capacity_changed_during_the_night_is_left_alone(rt, sim) -> None:
    from ecssim.seed import ServiceSpec

    _sim_night(sim, ServiceSpec("api", desired=2, min_capacity=1, max_capacity=4))
    rec = _on_sim(rt, sim)
    rec.reconcile_all(MON_DOWN)
    _aas().register_scalable_target(ServiceNamespace="ecs", ResourceId="service/night/api",
                                    ScalableDimension="ecs:service:DesiredCount", MinCapacity=3)
    sim.advance(sim.timings.autoscaling_delay + 5)  # autoscaling raises it to 3 at once: someone's choice
    rec.reconcile_all(TUE_UP)
    assert _min_capacity("api") == 3
    sim.advance(sim.timings.autoscaling_delay + 5)
    assert desired("night") == {"api": 3}
    assert rows(rt) == {}


def test_sim_update_service_calls_are_spaced(rt, sim) -> None:
    from ecssim.seed import ServiceSpec

    _sim_night(sim, *(ServiceSpec(f"svc{i}", desired=1) for i in range(8)))
    t0 = sim.clock.now()
    changes = _on_sim(rt, sim).reconcile_all(MON_DOWN)
    assert len(changes) == 8
    times = [c.time for c in sim.calls.of("UpdateService")]
    assert len(times) == 8
    assert all(b - a >= 0.5 - 1e-9 for a, b in zip(times, times[1:]))
    assert sim.calls.max_per_second("UpdateService") <= 2
    assert times[-1] - t0 >= 3.5  # spread over seconds, not one burst
