"""The ECS service scheduler, one pass per tick: keep desiredCount tasks, roll deployments, trip the breaker.

Rolling update rules (botocore model, DeploymentConfiguration): never more
than maximumPercent of desiredCount tasks RUNNING or PENDING (rounded down),
never fewer than minimumHealthyPercent counted healthy (rounded up).
A task told to stop still occupies its slot until it is STOPPED: the
replacement starts only then (DESIGN.md, "Eventual consistency").
"""
from __future__ import annotations

from typing import Protocol

from .deployments import (
    CIRCUIT_BREAKER_REASON,
    ServiceDeploymentRecord,
    ServiceRevision,
    SimDeployment,
    circuit_breaker_threshold,
)
from .enums import (
    STARTING,
    ControllerType,
    DeploymentStatus,
    RolloutState,
    ServiceDeploymentStatus,
    StopCode,
    TaskStatus,
)
from .region import RegionState
from .services import SimService
from .tasks import SimTask, ts
from .timings import Timings

FAILURE_CODES = (StopCode.TASK_FAILED_TO_START, StopCode.ESSENTIAL_CONTAINER_EXITED)


def _stop_order(t: SimTask) -> tuple[int, float]:
    # Unhealthy and still-starting tasks go first: stopping them costs no capacity.
    return (0 if t.last_status in STARTING else 1 if t.last_status != TaskStatus.RUNNING else 2, -(t.created_at))


class Cluster(Protocol):
    """What the scheduler asks of the simulator it runs in (the simulator owns tasks and events;
    the scheduler only decides): written here so the two modules do not import each other."""

    timings: Timings

    def launch_service_task(self, rs: RegionState, svc: SimService, dep: SimDeployment,
                            now: float) -> SimTask | None: ...

    def stop_task(self, rs: RegionState, t: SimTask, now: float, code: StopCode, reason: str) -> bool: ...

    def service_event(self, svc: SimService, now: float, message: str) -> None: ...

    def new_deployment(self, rs: RegionState, svc: SimService, td_arn: str, now: float,
                       revision: ServiceRevision | None = None,
                       rollback_record: ServiceDeploymentRecord | None = None) -> SimDeployment: ...


class ServiceScheduler:
    def __init__(self, sim: Cluster) -> None:
        self.sim = sim

    def step(self, rs: RegionState, svc: SimService, now: float) -> None:
        if svc.controller != ControllerType.ECS or not svc.deployments:
            return
        tasks = rs.tasks_of(svc)
        settle = self.sim.timings.no_health_check_settle
        self._circuit_breaker(rs, svc, self._by_deployment(svc, tasks), now)
        by_dep = self._by_deployment(svc, tasks)  # the breaker may have added a rollback deployment

        def live(d: SimDeployment) -> list[SimTask]:
            return [t for t in by_dep.get(d.id, []) if t.desired_status == TaskStatus.RUNNING]

        def slots(d: SimDeployment) -> int:
            return sum(1 for t in by_dep.get(d.id, []) if not t.gone)

        primary = svc.deployments[0]
        desired = 0 if svc.deleted else svc.desired
        # 1. Scale the primary up (replacements only once the stopped task is STOPPED).
        room = max(svc.max_total, desired) - sum(slots(d) for d in svc.deployments)
        want = desired - slots(primary)
        for _ in range(max(0, min(want, room))):
            t = self.sim.launch_service_task(rs, svc, primary, now)
            if t is None:
                break
            by_dep[primary.id].append(t)
        # 2. Scale the primary down.
        extra = len(live(primary)) - desired
        for t in sorted(live(primary), key=_stop_order)[:max(0, extra)]:
            self.sim.stop_task(rs, t, now, StopCode.SERVICE_SCHEDULER_INITIATED,
                               f"Scaling activity initiated by (deployment {primary.id})")
        # 3. Drain old deployments without going below minimumHealthyPercent.
        healthy = sum(1 for d in svc.deployments for t in live(d) if t.counted_healthy(now, settle))
        may_stop = healthy - (0 if svc.deleted else svc.min_healthy)
        for d in svc.deployments[1:]:
            for t in sorted(live(d), key=_stop_order):
                counts = t.counted_healthy(now, settle)
                if counts and may_stop <= 0:
                    continue
                self.sim.stop_task(rs, t, now, StopCode.SERVICE_SCHEDULER_INITIATED,
                                   f"Scaling activity initiated by (deployment {d.id})")
                may_stop -= 1 if counts else 0
        # 4. Old deployments whose tasks are all STOPPED disappear; a FAILED one stays listed while
        # the rollback that replaces it is in progress, so readers can see what happened.
        rolling_back = primary.is_rollback and primary.rollout_state == RolloutState.IN_PROGRESS
        for d in list(svc.deployments[1:]):
            if slots(d) == 0 and not (rolling_back and d.rollout_state == RolloutState.FAILED):
                d.status = DeploymentStatus.INACTIVE
                svc.deployments.remove(d)
        # 5. The primary completes when it alone runs every desired task, all healthy.
        if primary.rollout_state == RolloutState.IN_PROGRESS and all(slots(d) == 0 for d in svc.deployments[1:]):
            mine = live(primary)
            if len(mine) == desired and all(t.counted_healthy(now, settle) for t in mine):
                self._complete(svc, primary, now)
                for d in svc.deployments[1:]:
                    d.status = DeploymentStatus.INACTIVE
                del svc.deployments[1:]

    @staticmethod
    def _by_deployment(svc: SimService, tasks: list[SimTask]) -> dict[str, list[SimTask]]:
        by_dep: dict[str, list[SimTask]] = {d.id: [] for d in svc.deployments}
        for t in tasks:
            if t.deployment_id in by_dep:
                by_dep[t.deployment_id].append(t)
        return by_dep

    def _complete(self, svc: SimService, d: SimDeployment, now: float) -> None:
        d.rollout_state = RolloutState.COMPLETED
        d.rollout_state_reason = f"ECS deployment {d.id} completed."
        d.updated_at = now
        svc.last_completed = d
        rec = d.record
        if rec is not None:
            rec.status = (ServiceDeploymentStatus.ROLLBACK_SUCCESSFUL if d.is_rollback
                          else ServiceDeploymentStatus.SUCCESSFUL)
            rec.finished_at = rec.updated_at = now
        self.sim.service_event(svc, now, f"(service {svc.name}) has reached a steady state.")

    def _circuit_breaker(self, rs: RegionState, svc: SimService, by_dep: dict[str, list[SimTask]],
                         now: float) -> None:
        settle = self.sim.timings.no_health_check_settle
        for d in svc.deployments:
            mine = by_dep.get(d.id, [])
            if not d.ever_healthy and any(t.counted_healthy(now, settle) for t in mine):
                # "Once a service deployment has one or more successfully running tasks, the failed
                # task count resets to zero and stops being evaluated" (botocore model, failedTasks).
                d.ever_healthy, d.failed_tasks = True, 0
            for t in mine:
                if t.stop_code in FAILURE_CODES and not t.failure_counted:
                    t.failure_counted = True
                    if d.rollout_state == RolloutState.IN_PROGRESS and not d.ever_healthy:
                        d.failed_tasks += 1
                        if d.record is not None:
                            d.record.failure_count = d.failed_tasks
                            d.record.updated_at = now
        p = svc.deployments[0]
        if (svc.breaker_enable and p.rollout_state == RolloutState.IN_PROGRESS
                and p.failed_tasks >= circuit_breaker_threshold(svc.desired)):
            self._trip(rs, svc, p, now)

    def _trip(self, rs: RegionState, svc: SimService, d: SimDeployment, now: float) -> None:
        d.rollout_state, d.rollout_state_reason, d.updated_at = RolloutState.FAILED, CIRCUIT_BREAKER_REASON, now
        self.sim.service_event(svc, now, f"(service {svc.name}) (deployment {d.id}) deployment failed: "
                                         "tasks failed to start.")
        rec = d.record
        if rec is not None:
            rec.breaker_triggered = True
            rec.status_reason = CIRCUIT_BREAKER_REASON
            rec.updated_at = now
        if d.is_rollback:
            if rec is not None:
                rec.status, rec.finished_at = ServiceDeploymentStatus.ROLLBACK_FAILED, now
            return
        back = svc.last_completed
        if svc.breaker_rollback and back is not None and back is not d:
            if rec is not None:
                rec.status = ServiceDeploymentStatus.ROLLBACK_IN_PROGRESS
                rec.rollback = {"reason": CIRCUIT_BREAKER_REASON, "startedAt": ts(now),
                                "serviceRevisionArn": back.revision.arn}
            new = self.sim.new_deployment(rs, svc, back.revision.td_arn, now, revision=back.revision,
                                          rollback_record=rec)
            self.sim.service_event(svc, now, f"(service {svc.name}) rolling back to deployment {new.id}.")
        elif rec is not None:
            # Without rollback the service deployment stops (botocore model, ServiceDeployment.stoppedAt).
            rec.status, rec.stopped_at = ServiceDeploymentStatus.STOPPED, now
