"""``valetkey schedule run``: the scheduler process.

Every minute (just after the start of the minute, once right at start-up,
and at once when the web process nudges it after a resume) it reconciles each
scheduled environment against its up-windows:

- when a down period begins (outside every window), each ACTIVE service with
  a desired count above 0 is scaled to 0 (UpdateService desiredCount=0) and
  the count it had is remembered in the database. That happens once per down
  period: a service someone scales up by hand, or creates, while the
  environment is down is theirs until the next window (pause the schedule to
  keep the whole environment up);
- inside a window, the services it remembers are restored to those counts and
  forgotten; services it never scaled (created while down, or at 0 already)
  are left alone, and so is a service someone already scaled up again.

Application Auto Scaling: a service with a scalable target whose MinCapacity
is 1 or more would be scaled back up at its next evaluation (aws-facts A6).
Before scaling such a service to 0, its MinCapacity is lowered to 0 and the
old value remembered with the count; in the window it is put back (only if
still 0: a change someone made meanwhile wins) before the count is restored.
Lowering was chosen over refusing: a refused scale-down leaves the service
running all night, the cost the schedule exists to save, and nobody is
there to read a warning at 20:00; the change is in the audit entry.
MaxCapacity, scaling policies and suspended state are not touched.

UpdateService has a budget of 50 burst / 5 per second per account and Region,
shared with CI and the console: calls are spaced (``spacing``, 0.5 s), so a
20-service environment closes in ten seconds, not in one.

Safety:
- never a prod environment (class prod) nor a disabled one, whatever the config says;
- a paused environment (``schedule_pauses``) is left alone until its pause ends;
  a pause that ends by its ``until`` is then handled like a resume;
- one reconciler per environment at a time across processes: a Redis lock
  (redis-py ``Lock``: SET NX PX with a random token, Lua-checked release and
  extend) that expires if its holder dies;
- every step is resumable: the row's state is written before each ECS call
  and advanced after its audit entry, so a scheduler killed at any moment
  neither loses a remembered count nor skips an audit entry (a kill between
  the audit write and the state write can repeat one entry: at-least-once);
- wall-clock evaluation in the schedule's zone (``scope.schedule_windows``), so DST
  moves nothing.

Each change is an audit entry: actor and source ``scheduler``, target the
service, before/after ``{"desired": N}``; a scale-down is recorded as
``schedule.pause`` and a restore as ``schedule.resume`` (see docs/schedules.md
for why these actions).
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import redis
from redis.exceptions import LockError
from redis.lock import Lock

from cloud.ecs import EcsReader, active
from cloud.errors import AWS_ERRORS, aws_error
from jobs.audit_stream import AuditEvent, AuditLog
from jobs.schedule_nudge import PAUSE, RESUME, take_nudge
from scope.catalog import Catalog, Environment
from scope.errors import ValetKeyError
from scope.models import utcnow
from scope.schedule_store import (
    DOWN,
    NOT_PAUSED,
    SCALING_DOWN,
    SCALING_UP,
    Pause,
    Remembered,
    ScheduleStore,
)
from scope.times import iso, iso_or_none
from wiring.access_changes import record_grant_expiries
from wiring.runtime import Runtime

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient

log = logging.getLogger("valetkey.scheduler")

ACTOR = SOURCE = "scheduler"
LOCK_PREFIX = "valetkey:schedule:lock:"
# Long enough to outlast one slow UpdateService (boto3: 30 s read timeout, a few
# retries); the lock is extended after every service, and a dead holder's lock
# frees itself after this long.
LOCK_TTL = 120.0
# Seconds between two UpdateService calls of this scheduler: at most 2/s of the
# account's 5/s (ECS "Request throttling": service modify, 50 burst / 5 refill).
SPACING = 0.5
SCALABLE_DIMENSION = "ecs:service:DesiredCount"


@dataclass(frozen=True)
class Change:
    environment: str
    service: str
    action: str  # schedule.pause (scaled down) or schedule.resume (restored)
    before: int
    after: int


class LostLock(Exception):
    """Another scheduler took the environment over (our lock expired); stop touching it."""


def eligible(env: Environment) -> bool:
    """Only enabled, non-prod environments with a schedule are ever touched."""
    return env.schedule is not None and env.enabled and not env.is_prod


class Reconciler:
    """Brings scheduled environments to the state their schedule asks for; safe to run anywhere, any number of times."""

    def __init__(self, catalog: Catalog, store: ScheduleStore, audit: AuditLog, r: redis.Redis,
                 ecs_client: Callable[[Environment], ECSClient], *, clock: Callable[[], dt.datetime] = utcnow,
                 lock_ttl: float = LOCK_TTL, autoscaling_client: Callable[[Environment], Any] | None = None,
                 spacing: float = SPACING, sleep: Callable[[float], None] = time.sleep,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self.catalog, self.store, self.audit, self.redis = catalog, store, audit, r
        self.ecs_client, self.clock, self.lock_ttl = ecs_client, clock, lock_ttl
        self.autoscaling_client = autoscaling_client
        self.spacing, self.sleep, self.timer = spacing, sleep, timer
        self._last_update: float | None = None

    @classmethod
    def from_runtime(cls, rt: Runtime, **kw: Any) -> "Reconciler":
        kw.setdefault("autoscaling_client", lambda env: rt.aws.client(env, "application-autoscaling"))
        return cls(rt.catalog, ScheduleStore(rt.sessions), rt.audit, rt.redis, rt.aws.ecs, **kw)

    # ---- entry points ---------------------------------------------------------
    def reconcile_all(self, now: dt.datetime | None = None) -> list[Change]:
        changes: list[Change] = []
        for env in self.catalog:
            if eligible(env):
                changes += self.reconcile(env, now)
        return changes

    def reconcile_named(self, name: str, now: dt.datetime | None = None) -> list[Change]:
        env = self.catalog.get(name)
        return self.reconcile(env, now) if env is not None else []

    def reconcile(self, env: Environment, now: dt.datetime | None = None) -> list[Change]:
        """Reconcile one environment; never raises (errors are logged, the next tick retries)."""
        if not eligible(env):
            return []
        changes: list[Change] = []
        lock = self.redis.lock(LOCK_PREFIX + env.name, timeout=self.lock_ttl, blocking=False, thread_local=False)
        try:
            if not lock.acquire():
                log.debug("%s: another scheduler is reconciling it; skipping", env.name)
                return []
        except redis.RedisError as e:
            log.error("%s: cannot take the scheduler lock (%s); skipping this tick", env.name, type(e).__name__)
            return []
        try:
            self._reconcile(env, now or self.clock(), lock, changes)
        except LostLock as e:
            log.warning("%s: lost (or cannot confirm) the scheduler lock mid-way (%s); stopping here", env.name,
                        type(e.__cause__).__name__)
        except ValetKeyError as e:
            log.error("%s: reconcile stopped: %s", env.name, e.detail)
        except Exception:  # noqa: BLE001 - one environment's bug must not stop the others
            log.exception("%s: reconcile crashed", env.name)
        finally:
            try:
                lock.release()
            except (LockError, redis.RedisError):
                pass  # expired or taken over: nothing of ours to release
        return changes

    # ---- one environment ------------------------------------------------------------
    def _reconcile(self, env: Environment, now: dt.datetime, lock: Lock, changes: list[Change]) -> None:
        assert env.schedule is not None
        self.store.end_expired_pause(env.name, now, lambda ended: self._record_pause_end(env, ended))
        pause = self.store.pause_of(env.name, now)
        if pause is not None:
            log.debug("%s: paused by %s; leaving it alone", env.name, pause.by)
            return
        ecs = self.ecs_client(env)
        services = self._desired_counts(ecs, env)
        if services is None:
            return
        remembered = self.store.remembered(env.name)
        for name in sorted(set(remembered) - set(services)):
            log.info("%s: %s no longer exists; forgetting its remembered count", env.name, name)
            self.store.forget(env.name, name)
        if env.schedule.is_up(now):
            # Only what we scaled down is restored; rows go once restored, so this acts once per window.
            for name in sorted(set(remembered) & set(services)):
                self._restore(env, ecs, remembered[name], services[name], now, lock, changes)
            return
        # Scale down once per down period (named by when it ends): later ticks only finish
        # interrupted steps, so a service scaled up by hand or created at night is left alone.
        nxt = env.schedule.next_transition(now)
        period = iso(nxt) if nxt else "never"
        first = self.store.handled_period(env.name) != period
        complete = True
        for name in sorted(services):
            row = remembered.get(name)
            if first or (row is not None and row.state != DOWN):
                complete &= self._scale_down(env, ecs, name, services[name], row, now, lock, changes)
        if first and complete:
            self.store.mark_period(env.name, period)

    def _desired_counts(self, ecs: ECSClient, env: Environment) -> dict[str, int] | None:
        reader = EcsReader(ecs, env.cluster)
        try:
            described = reader.describe(reader.service_names())
        except ValetKeyError as e:
            log.error("%s: cannot read services: %s", env.name, e.detail)
            return None
        return {s["serviceName"]: int(s.get("desiredCount", 0)) for s in active(described)}

    def _scale_down(self, env: Environment, ecs: ECSClient, name: str, desired: int, row: Remembered | None,
                    now: dt.datetime, lock: Lock, changes: list[Change]) -> bool:
        """Scale one service to 0, remembering its count; False when it could not be done now."""
        if desired > 0:
            if not self._still_free(env, now, lock):
                return False
            # Remember first: if we die after UpdateService, the count is not lost.
            row = self.store.remember(env.name, name, desired, SCALING_DOWN)
            # Application Auto Scaling would undo the 0 (MinCapacity >= 1): lower it, remembered first
            # (a MinCapacity remembered by an interrupted earlier attempt is the one to restore).
            target = self._scalable_target(env, name)
            current = int(target.get("MinCapacity", 0)) if target else 0
            if current > 0:
                row = self.store.remember(env.name, name, desired, SCALING_DOWN,
                                          row.min_capacity if row.min_capacity is not None else current)
                if not self._set_min(env, name, 0):
                    return False
            if not self._set_desired(env, ecs, name, 0):
                return False
            changes.append(self._record(env, PAUSE, name, desired, 0, row.min_capacity))
            self.store.remember(env.name, name, desired, DOWN)
        elif row is not None and row.state == SCALING_DOWN:
            # UpdateService(0) went through but its audit entry was never written (killed, Redis down).
            changes.append(self._record(env, PAUSE, name, row.desired, 0, row.min_capacity))
            self.store.remember(env.name, name, row.desired, DOWN)
        elif row is not None and row.state == SCALING_UP:
            # A restore that never reached ECS (the service is still at 0): it is down as it should be.
            self.store.remember(env.name, name, row.desired, DOWN)
        return True

    def _restore(self, env: Environment, ecs: ECSClient, row: Remembered, desired: int, now: dt.datetime,
                 lock: Lock, changes: list[Change]) -> None:
        if row.min_capacity is not None and not self._restore_min(env, row):
            return  # the row (and the MinCapacity to put back) stays: the next tick tries again
        if desired == 0:
            if not self._still_free(env, now, lock):
                return
            if row.state == SCALING_DOWN:
                # The scale-down happened but was not audited before we died: record it first.
                changes.append(self._record(env, PAUSE, row.service, row.desired, 0, row.min_capacity))
            self.store.remember(env.name, row.service, row.desired, SCALING_UP)
            if not self._set_desired(env, ecs, row.service, row.desired):
                return
            changes.append(self._record(env, RESUME, row.service, 0, row.desired, row.min_capacity))
        elif row.state == SCALING_UP and desired == row.desired:
            # Restored before we died, not yet audited.
            changes.append(self._record(env, RESUME, row.service, 0, row.desired, row.min_capacity))
        else:
            # Someone scaled it up by hand while it was down (or our scale-down never
            # reached ECS): their count wins, ours is stale.
            log.info("%s: %s already runs %d (remembered %d); leaving it", env.name, row.service, desired,
                     row.desired)
        self.store.forget(env.name, row.service)

    # ---- helpers ------------------------------------------------------------------
    def _still_free(self, env: Environment, now: dt.datetime, lock: Lock) -> bool:
        """Before each change: still our lock (extended), and not paused in the meantime."""
        try:
            lock.reacquire()
        except (LockError, redis.RedisError) as e:  # expired and taken, or we cannot prove it is ours
            raise LostLock() from e
        if self.store.pause_of(env.name, now) is not None:
            log.info("%s: paused while reconciling; stopping here", env.name)
            return False
        return True

    # ---- Application Auto Scaling ------------------------------------------------
    def _scalable_target(self, env: Environment, service: str) -> dict[str, Any] | None:
        """The service's scalable target (DesiredCount), or None (none, or it cannot be read: logged)."""
        if self.autoscaling_client is None:
            return None
        try:
            found = self.autoscaling_client(env).describe_scalable_targets(
                ServiceNamespace="ecs", ResourceIds=[_resource_id(env, service)],
                ScalableDimension=SCALABLE_DIMENSION).get("ScalableTargets", [])
        except AWS_ERRORS as e:
            log.error("%s: %s; scaling to 0 anyway (autoscaling may undo it)", env.name,
                      aws_error(e, f"reading the autoscaling target of {service}").detail)
            return None
        return dict(found[0]) if found else None

    def _set_min(self, env: Environment, service: str, minimum: int) -> bool:
        assert self.autoscaling_client is not None
        try:
            self.autoscaling_client(env).register_scalable_target(
                ServiceNamespace="ecs", ResourceId=_resource_id(env, service), ScalableDimension=SCALABLE_DIMENSION,
                MinCapacity=minimum)
        except AWS_ERRORS as e:
            log.error("%s: %s", env.name, aws_error(e, f"setting the autoscaling MinCapacity of {service} "
                                                       f"to {minimum}").detail)
            return False
        log.info("%s: %s: autoscaling MinCapacity set to %d", env.name, service, minimum)
        return True

    def _restore_min(self, env: Environment, row: Remembered) -> bool:
        """Put back the MinCapacity we lowered, unless someone set another meanwhile (theirs wins)."""
        assert row.min_capacity is not None
        target = self._scalable_target(env, row.service)
        if target is None:
            log.info("%s: %s has no autoscaling target any more; nothing to restore", env.name, row.service)
            return True
        if int(target.get("MinCapacity", 0)) != 0:
            log.info("%s: %s: autoscaling MinCapacity is %s now (set meanwhile); leaving it", env.name,
                     row.service, target.get("MinCapacity"))
            return True
        return self._set_min(env, row.service, row.min_capacity)

    def _pace(self) -> None:
        """Space UpdateService calls (the account's service-modify budget is shared with CI)."""
        if self._last_update is not None:
            wait = self.spacing - (self.timer() - self._last_update)
            if wait > 0:
                self.sleep(wait)
        self._last_update = self.timer()

    def _set_desired(self, env: Environment, ecs: ECSClient, service: str, count: int) -> bool:
        self._pace()
        try:
            ecs.update_service(cluster=env.cluster, service=service, desiredCount=count)
        except AWS_ERRORS as e:
            # Left in its intermediate state: the next tick tries again.
            log.error("%s: %s", env.name, aws_error(e, f"setting the desired count of {service} to {count}").detail)
            return False
        return True

    def _record_pause_end(self, env: Environment, ended: Pause) -> None:
        self.audit.record(AuditEvent(
            actor=ACTOR, source=SOURCE, action=RESUME, outcome="succeeded", environment=env.name,
            detail=f"The pause by {ended.by} ended at {iso_or_none(ended.until)}; the schedule applies again.",
            before=ended.record(), after=dict(NOT_PAUSED)))
        log.info("%s: the pause by %s ended; the schedule applies again", env.name, ended.by)

    def _record(self, env: Environment, action: str, service: str, before: int, after: int,
                min_capacity: int | None = None) -> Change:
        assert env.schedule is not None
        windows = ", ".join(env.schedule.text)
        b: dict[str, Any] = {"desired": before}
        a: dict[str, Any] = {"desired": after}
        if action == PAUSE:
            detail = (f"Scaled {service} to 0 outside the schedule's up-windows ({windows}, {env.schedule.timezone}); "
                      f"desired count was {before}.")
            if min_capacity is not None:
                detail += f" Its autoscaling MinCapacity was lowered from {min_capacity} to 0 so it stays down."
                b["min_capacity"], a["min_capacity"] = min_capacity, 0
        else:
            detail = f"Restored {service} to {after} task(s): the schedule's up-window began ({windows}, {env.schedule.timezone})."
            if min_capacity is not None:
                detail += f" Its autoscaling MinCapacity is back to {min_capacity}."
                b["min_capacity"], a["min_capacity"] = 0, min_capacity
        self.audit.record(AuditEvent(actor=ACTOR, source=SOURCE, action=action, outcome="succeeded",
                                     environment=env.name, target=service, detail=detail, before=b, after=a))
        log.info("%s: %s", env.name, detail)
        return Change(env.name, service, action, before, after)


def _resource_id(env: Environment, service: str) -> str:
    """Application Auto Scaling's ResourceId of an ECS service: service/CLUSTER/SERVICE (cluster name, not ARN)."""
    return f"service/{env.cluster.rsplit('/', 1)[-1]}/{service}"


def _seconds_to_next_tick(every: float) -> float:
    """Ticks fall just after the start of a wall-clock minute, when windows open and close."""
    return every - (time.time() % every) + 0.5


def expire_grants(rt: Runtime) -> None:
    """The scheduler's other periodic step: record ``grant.expire`` for lapsed time-boxed grants."""
    try:
        n = record_grant_expiries(rt)
        if n:
            log.info("recorded %d lapsed grant(s)", n)
    except Exception:  # noqa: BLE001 - a database hiccup here must not stop the schedules
        log.exception("recording lapsed grants failed; will retry next tick")


def run_scheduler(rt: Runtime, stop: threading.Event, every: float = 60.0,
                  reconciler: Reconciler | None = None) -> None:
    rec = reconciler or Reconciler.from_runtime(rt)
    scheduled = [e.name for e in rt.catalog if eligible(e)]
    skipped = [e.name for e in rt.catalog if e.schedule is not None and not eligible(e)]
    log.info("scheduler started; environments with a schedule: %s%s", ", ".join(scheduled) or "none",
             f" (never touched, prod or disabled: {', '.join(skipped)})" if skipped else "")
    try:
        if not stop.is_set():
            expire_grants(rt)
            rec.reconcile_all()  # at once: a scheduler (re)started at night scales down now, not in a minute
        deadline = time.monotonic() + _seconds_to_next_tick(every)
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                expire_grants(rt)
                rec.reconcile_all()
                deadline = time.monotonic() + _seconds_to_next_tick(every)
                continue
            try:
                # Waiting on the nudge list doubles as the sleep; 1 s keeps SIGTERM prompt.
                name = take_nudge(rt.redis, timeout=1)
            except redis.RedisError as e:
                log.error("cannot read scheduler nudges (%s); retrying", type(e).__name__)
                stop.wait(min(remaining, 5.0))
                continue
            if name:
                log.info("%s: nudged (schedule resumed); reconciling now", name)
                rec.reconcile_named(name)
    finally:
        log.info("scheduler stopped")
        rt.close()
