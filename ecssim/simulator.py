"""The Simulator: state per account and Region, the clock, and the knobs tests turn.

It runs in the process that hosts moto's backends (a ThreadedMotoServer or
``moto.mock_aws``); ``ecssim.install`` routes the ECS, ECR, elbv2 and
Application Auto Scaling calls whose behaviour must change through it and
leaves everything else to moto.
"""
from __future__ import annotations

import logging
import random
import string
import threading
from typing import Any

from .calllog import CallLog
from .clock import Clock, FakeClock
from .deployments import (
    ServiceDeploymentRecord,
    ServiceRevision,
    SimDeployment,
    circuit_breaker_threshold,
)
from .ecr import Behaviour, Registry, parse_uri, synthetic_digest
from .enums import (
    DeploymentStatus,
    ServiceDeploymentStatus,
    StopCode,
    TaskStatus,
)
from .latency import Latency
from .recorder import TruthPoint, TruthRecorder
from .region import RegionState
from .scheduler import ServiceScheduler
from .services import SimService
from .tasks import Agent, Fate, SimContainer, SimTask, TargetRegistration
from .throttle import Throttler
from .timings import Timings

log = logging.getLogger("ecssim")
ACCOUNT = "123456789012"  # moto's default account (moto.core.DEFAULT_ACCOUNT_ID)
_TOKEN_ATTR = "_ecssim_generation"


def _ecs_backend(account: str, region: str) -> Any:
    from moto.ecs.models import ecs_backends

    return ecs_backends[account][region]


class Simulator:
    def __init__(self, clock: Clock | None = None, timings: Timings | None = None, seed: int = 0,
                 throttler: Throttler | None = None, latency: Latency | None = None) -> None:
        self.clock: Clock = clock or FakeClock()
        self.timings = timings or Timings.fast()
        self.rng = random.Random(seed)
        self.agent = Agent(self.timings, self.rng)
        self.scheduler = ServiceScheduler(self)
        self.throttle = throttler or Throttler()
        self.latency = latency or Latency()  # real time per API call (the network); none by default
        self.calls = CallLog()
        self.truth = TruthRecorder()
        self.lock = threading.RLock()
        self._regions: dict[tuple[str, str], RegionState] = {}
        self._last_tick = self.clock.now()
        self._mutations = 0  # bumped by every state change; a tick without any lets advance() skip ahead
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- state per account/Region ---------------------------------------------------
    def region(self, region: str = "us-east-1", account: str = ACCOUNT) -> RegionState:
        """This account/Region's state; fresh whenever moto's ECS backend was reset underneath."""
        with self.lock:
            backend = _ecs_backend(account, region)
            token = getattr(backend, _TOKEN_ATTR, None)
            rs = self._regions.get((account, region))
            if token is None or rs is None or rs.token is not token:
                # moto's reset clears each backend's __dict__; our mark goes with it.
                token = object()
                setattr(backend, _TOKEN_ATTR, token)
                rs = self._regions[(account, region)] = RegionState(account, region, token,
                                                                    Registry(account, region))
            return rs

    def _live_regions(self) -> list[RegionState]:
        return [self.region(r, a) for (a, r) in list(self._regions)]

    def reset(self) -> None:
        with self.lock:
            self._regions.clear()
            self.calls.clear()
            self.truth.clear()
            self.throttle.reset()

    # ---- knobs: ECR and image behaviour -------------------------------------------------
    def ecr(self, region: str = "us-east-1", account: str = ACCOUNT) -> Registry:
        return self.region(region, account).registry

    def push_image(self, repo: str, tag: str = "latest", region: str = "us-east-1",
                   account: str = ACCOUNT, digest: str | None = None) -> str:
        """Push (or move ``tag`` to) a new image; returns its digest. Creates the repository."""
        with self.lock:
            return self.ecr(region, account).push(repo, tag, self.clock.now(), digest)

    def delete_image(self, repo: str, digest: str, region: str = "us-east-1",
                     account: str = ACCOUNT) -> bool:
        with self.lock:
            return self.ecr(region, account).delete_digest(repo, digest)

    def _behaviour_key(self, ref: str, region: str, account: str) -> tuple[Registry, str]:
        """``ref``: a digest, "repo:tag", "repo" (latest) or a full ECR URI."""
        reg = self.ecr(region, account)
        if ref.startswith("sha256:"):
            return reg, ref
        parsed = parse_uri(ref) or parse_uri(reg.uri(*ref.split(":", 1)) if ":" in ref else reg.uri(ref))
        assert parsed is not None, ref
        reg = self.ecr(parsed.region, parsed.account)
        digest = reg.resolve(parsed.repo, parsed.tag, parsed.digest)
        if digest is None:
            raise KeyError(f"no image {ref!r} in the simulator's ECR")
        return reg, digest

    def break_image(self, ref: str, region: str = "us-east-1", account: str = ACCOUNT) -> None:
        """Tasks using this image fail to start: CannotPullContainerError, TaskFailedToStart."""
        with self.lock:
            reg, digest = self._behaviour_key(ref, region, account)
            reg.behaviours.setdefault(digest, Behaviour()).broken = True

    def crash_image(self, ref: str, after: float | None = None, exit_code: int = 137, region: str = "us-east-1",
                    account: str = ACCOUNT) -> None:
        """Tasks using this image reach RUNNING, then their essential container exits after ``after`` s."""
        with self.lock:
            reg, digest = self._behaviour_key(ref, region, account)
            b = reg.behaviours.setdefault(digest, Behaviour())
            b.crash_after = after if after is not None else self.timings.crash_after.draw(self.rng)
            b.exit_code = exit_code

    def heal_image(self, ref: str, region: str = "us-east-1", account: str = ACCOUNT) -> None:
        with self.lock:
            reg, digest = self._behaviour_key(ref, region, account)
            reg.behaviours.pop(digest, None)

    def set_one_off(self, family: str, duration: float | None = None, exit_code: int = 0,
                    region: str = "us-east-1", account: str = ACCOUNT) -> None:
        """Standalone tasks of ``family`` run ``duration`` s (None: until stopped), then exit ``exit_code``."""
        with self.lock:
            self.region(region, account).one_off[family] = (duration, exit_code)

    # ---- time ---------------------------------------------------------------------------
    def advance(self, seconds: float) -> None:
        """Move a FakeClock forward in steps of ``timings.step``, ticking after each."""
        clock = self.clock
        if not isinstance(clock, FakeClock):
            raise TypeError("advance() needs a FakeClock; with real time run the ticker")
        end = clock.now() + seconds
        while True:
            now = clock.now()
            left = end - now
            if left <= 1e-9:
                break
            step = min(self.timings.step, left)
            if self._quiet and self._mutations == self._after_tick:
                # Nothing changed in the last tick: jump to the next scheduled change (long waits,
                # e.g. the 24 h of a clientToken, cost a handful of ticks instead of 170 000).
                wake = self._next_wakeup()
                step = min(left, max(step, (wake if wake is not None else end) - now))
            clock.advance(step)
            self.tick()

    _quiet = False  # the last tick changed nothing
    _after_tick = -1  # the mutation count when it ended (API calls since then bump it)

    def _next_wakeup(self) -> float | None:
        times: list[float] = []
        for rs in self._regions.values():
            times += [at for t in rs.tasks.values() if (at := t.next_event_at()) is not None]
            times += [s.below_min_since + self.timings.autoscaling_delay for s in rs.services.values()
                      if s.below_min_since is not None]
        return min(times) if times else None

    def catch_up(self) -> None:
        """Bring state up to the clock (API calls do this first, so real time needs no ticker)."""
        if self.clock.now() > self._last_tick:
            self.tick()

    def tick(self) -> None:
        with self.lock:
            before = self._mutations
            self._tick()
            self._quiet, self._after_tick = self._mutations == before, self._mutations

    def touch(self) -> None:
        """Something changed outside a tick (an API call): the next advance() must not skip ahead."""
        self._mutations += 1

    def _tick(self) -> None:
        with self.lock:
            now = self.clock.now()
            self._last_tick = now
            for rs in self._live_regions():
                self._adopt_services(rs)
                for t in list(rs.tasks.values()):
                    if self.agent.run_until(t, now):
                        self._mutations += 1
                        self._sync_moto_task(t)
                for svc in list(rs.services.values()):
                    self.scheduler.step(rs, svc, now)
                    self._autoscale(rs, svc, now)
                self._observe(rs, now)
                self._expire(rs, now)

    def start_ticker(self, interval: float = 1.0) -> None:
        """Real-time mode (the demo): tick every ``interval`` s in a daemon thread."""
        if self._thread is not None:
            return
        self._stop.clear()

        def run() -> None:
            while not self._stop.wait(interval):
                try:
                    self.tick()
                except Exception:
                    log.exception("ecssim tick failed")

        self._thread = threading.Thread(target=run, name="ecssim-ticker", daemon=True)
        self._thread.start()

    def stop_ticker(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    # ---- observation ----------------------------------------------------------------------
    def _observe(self, rs: RegionState, now: float, only: SimService | None = None) -> None:
        settle = self.timings.no_health_check_settle
        for svc in (rs.services.values() if only is None else (only,)):
            tasks = rs.tasks_of(svc)
            deps: dict[str, tuple[int, int]] = {}
            for d in svc.deployments:
                mine = [t for t in tasks if t.deployment_id == d.id]
                deps[d.id] = (sum(1 for t in mine if t.last_status == TaskStatus.RUNNING),
                              sum(1 for t in mine if t.desired_status == TaskStatus.RUNNING
                                  and t.last_status in (TaskStatus.PROVISIONING, TaskStatus.PENDING,
                                                        TaskStatus.ACTIVATING)))
            total = (sum(1 for t in tasks if t.last_status == TaskStatus.RUNNING),
                     sum(p for _, p in deps.values()))
            svc.observe(now, total, deps)
            self.truth.record(TruthPoint(
                now, svc.cluster_name, svc.name, svc.desired,
                sum(1 for t in tasks if t.wanted_running),
                sum(1 for t in tasks if t.counted_healthy(now, settle)), svc.min_healthy))

    def observe_now(self, rs: RegionState, only: SimService | None = None) -> None:
        """After a mutating call: record the truth at the call's instant. ``only``: the one service the
        call changed (the clock did not move, so no other service did); observing every service after
        every call made a 1,000-service run quadratic."""
        with self.lock:
            self._observe(rs, self.clock.now(), only)

    def _expire(self, rs: RegionState, now: float) -> None:
        keep = self.timings.stopped_task_retention
        moto_tasks = _ecs_backend(rs.account, rs.region).tasks
        for arn, t in list(rs.tasks.items()):
            if t.gone and t.stopped_at is not None and now - t.stopped_at > keep:
                rs.drop_task(arn)
                # moto's copy goes too, or it would be adopted again as a running task.
                moto_tasks.get(t.cluster_name, {}).pop(arn, None)
        ttl = self.timings.client_token_ttl
        for k, e in list(rs.client_tokens.items()):
            if now - e.at > ttl:
                del rs.client_tokens[k]

    def _autoscale(self, rs: RegionState, svc: SimService, now: float) -> None:
        """Application Auto Scaling keeps desiredCount within [MinCapacity, MaxCapacity]:
        a scale to zero under MinCapacity >= 1 is undone (aws-facts A6)."""
        try:
            from moto.applicationautoscaling.models import (
                applicationautoscaling_backends,
            )

            targets = applicationautoscaling_backends[rs.account][rs.region].targets
        except Exception:  # noqa: BLE001 - no autoscaling backend: nothing to enforce
            return
        target = targets.get("ecs:service:DesiredCount", {}).get(f"service/{svc.cluster_name}/{svc.name}")
        if target is None or svc.deleted:
            svc.below_min_since = None
            return
        lo, hi = target.min_capacity, target.max_capacity
        want = svc.desired
        if lo is not None and want < lo:
            want = lo
        if hi is not None and want > hi:
            want = hi
        if want == svc.desired:
            svc.below_min_since = None
            return
        if svc.below_min_since is None:
            svc.below_min_since = now
            self._mutations += 1
        elif now - svc.below_min_since >= self.timings.autoscaling_delay:
            self.service_event(svc, now, f"(service {svc.name}) desired count changed from {svc.desired} to "
                                         f"{want} by Application Auto Scaling.")
            svc.desired = want
            svc.below_min_since = None
            if svc.moto_service is not None:
                svc.moto_service.desired_count = want

    # ---- services and deployments ---------------------------------------------------------
    def _new_id(self, n: int = 22) -> str:
        return "".join(self.rng.choice(string.ascii_letters + string.digits) for _ in range(n))

    def service_event(self, svc: SimService, now: float, message: str) -> None:
        self._mutations += 1
        svc.add_event(now, message, str(self.rng.getrandbits(64)))

    def resolve_image(self, image: str) -> str | None:
        """The digest an image name means now (None: not in the simulator's ECR)."""
        ref = parse_uri(image)
        if ref is None:
            return synthetic_digest(image)
        reg = self.region(ref.region, ref.account).registry
        if ref.repo not in reg.repositories:
            return ref.digest or synthetic_digest(image)
        return reg.resolve(ref.repo, ref.tag, ref.digest)

    def revision(self, rs: RegionState, svc: SimService, td_arn: str, now: float) -> ServiceRevision:
        """A service revision with its tags resolved to digests now (software version consistency)."""
        td = _ecs_backend(rs.account, rs.region).describe_task_definition(td_arn)
        images = {c["name"]: (c["image"], self.resolve_image(c["image"])) for c in td.container_definitions}
        arn = (f"arn:aws:ecs:{rs.region}:{rs.account}:service-revision/{svc.cluster_name}/{svc.name}/"
               f"{self.rng.randrange(10**18, 10**19)}")
        return ServiceRevision(arn, svc.arn, svc.cluster_arn, td.arn, images, now, svc.launch_type)

    def new_deployment(self, rs: RegionState, svc: SimService, td_arn: str, now: float,
                       revision: ServiceRevision | None = None,
                       rollback_record: ServiceDeploymentRecord | None = None) -> SimDeployment:
        dep_id = f"ecs-svc/{self.rng.randrange(10**18, 10**19)}"
        revision = revision or self.revision(rs, svc, td_arn, now)
        record = rollback_record
        for d in svc.deployments:
            d.status = DeploymentStatus.ACTIVE
            if rollback_record is None and d.record is not None and d.record.status in (
                    ServiceDeploymentStatus.IN_PROGRESS, ServiceDeploymentStatus.PENDING):
                d.record.status, d.record.stopped_at, d.record.updated_at = ServiceDeploymentStatus.STOPPED, now, now
        if record is None:
            record = ServiceDeploymentRecord(
                arn=(f"arn:aws:ecs:{rs.region}:{rs.account}:service-deployment/{svc.cluster_name}/{svc.name}/"
                     f"{self._new_id()}"),
                service_arn=svc.arn, cluster_arn=svc.cluster_arn, created_at=now, target=revision,
                sources=[d.revision for d in svc.deployments], deployment_configuration=svc.deployment_configuration(),
                started_at=now, updated_at=now, breaker_enabled=svc.breaker_enable,
                threshold=circuit_breaker_threshold(svc.desired))
            svc.records.append(record)
        self._mutations += 1
        dep = SimDeployment(dep_id, revision, now, record, rollout_state_reason=f"ECS deployment {dep_id} in progress.",
                            updated_at=now, is_rollback=rollback_record is not None)
        svc.deployments.insert(0, dep)
        svc.td_arn = revision.td_arn
        if svc.moto_service is not None:
            svc.moto_service.task_definition = revision.td_arn
        return dep

    def _adopt_services(self, rs: RegionState) -> None:
        """Services moto holds that the simulator has not seen (created before install)."""
        backend = _ecs_backend(rs.account, rs.region)
        for ms in list(backend.services.values()):
            if (ms.cluster_name, ms.name) not in rs.services and ms.status == "ACTIVE":
                self.adopt_service(rs, ms, {})

    def adopt_service(self, rs: RegionState, ms: Any, params: dict[str, Any]) -> SimService:
        from .enums import ControllerType

        now = self.clock.now()
        svc = SimService(
            account=rs.account, region=rs.region, cluster_name=ms.cluster_name, cluster_arn=ms.cluster_arn,
            name=ms.name, arn=ms.arn, desired=int(ms.desired_count or 0), td_arn=ms.task_definition or "",
            controller=ControllerType((ms.deployment_controller or {}).get("type", "ECS")),
            launch_type=ms.launch_type or "FARGATE", load_balancers=list(ms.load_balancers or []),
            network=dict(getattr(ms, "network_configuration", None) or {}), platform_version=ms.platform_version,
            health_check_grace=int(params.get("healthCheckGracePeriodSeconds") or 0), moto_service=ms)
        svc.set_deployment_configuration(params.get("deploymentConfiguration") or {})
        rs.services[svc.key] = svc
        if svc.controller == ControllerType.ECS and svc.td_arn:
            self.new_deployment(rs, svc, svc.td_arn, now)
        svc.observe(now, (0, 0), {d.id: (0, 0) for d in svc.deployments})
        return svc

    # ---- tasks ----------------------------------------------------------------------------------
    def launch_service_task(self, rs: RegionState, svc: SimService, dep: SimDeployment,
                            now: float) -> SimTask | None:
        backend = _ecs_backend(rs.account, rs.region)
        try:
            # moto places the task (ENI in the service's subnet); FARGATE because the simulator
            # does not model EC2 container instances.
            [mt] = backend.run_task(svc.cluster_name, dep.td_arn, 1, None, dep.id, None, "FARGATE",
                                    svc.network or None, f"service:{svc.name}", svc.platform_version, None)
        except Exception as e:  # noqa: BLE001 - a launch that cannot happen is a service event, as on AWS
            self.service_event(svc, now, f"(service {svc.name}) was unable to place a task. Reason: {e}.")
            return None
        t = self.adopt_task(rs, mt, now, svc=svc, deployment=dep)
        self.service_event(svc, now, f"(service {svc.name}) has started 1 tasks: (task {t.id}).")
        return t

    def adopt_task(self, rs: RegionState, mt: Any, now: float, svc: SimService | None = None,
                   deployment: SimDeployment | None = None, running: bool = False) -> SimTask:
        """Wrap a task moto created; ``running``: one that already runs (made before install)."""
        backend = _ecs_backend(rs.account, rs.region)
        td = backend.describe_task_definition(mt.task_definition_arn)
        ip = next((d["value"] for a in mt.attachments for d in a.get("details", [])
                   if d.get("name") == "privateIPv4Address"), "")
        containers: list[SimContainer] = []
        fate, run_for, exit_code, pull_error = Fate.RUN, None, 0, ""
        for i, c in enumerate(td.container_definitions):
            image = c.get("image", "")
            pinned = deployment.revision.images.get(c["name"], (image, None))[1] if deployment else None
            consistent = deployment is not None and c.get("versionConsistency", "enabled") != "disabled"
            digest = pinned if consistent else self.resolve_image(image)
            essential = bool(c.get("essential", True))
            containers.append(SimContainer(
                name=c["name"], image=image, digest=digest, essential=essential,
                has_health_check=bool(c.get("healthCheck")), arn=(
                    f"arn:aws:ecs:{rs.region}:{rs.account}:container/{mt.cluster_name}/{mt.id}/"
                    f"{self.rng.getrandbits(128):032x}"),
                cpu=str(c.get("cpu", 0)), memory=str(c["memory"]) if c.get("memory") else None))
            if not essential or running:
                continue
            why = self._pull_problem(image, digest)
            if why:
                fate, pull_error = Fate.CANNOT_PULL, why
            elif fate == Fate.RUN and digest:
                b = self._behaviour(image, digest)
                if b is not None and b.crash_after is not None:
                    fate, run_for, exit_code = Fate.CRASH, b.crash_after, b.exit_code
        family = td.family
        if svc is None and fate == Fate.RUN and not running:
            duration, code = rs.one_off.get(family, (self.timings.one_off_duration.draw(self.rng), 0))
            if duration is not None:
                fate, run_for, exit_code = Fate.EXIT, duration, code
        t = SimTask(
            arn=mt.task_arn, account=rs.account, region=rs.region, cluster_name=mt.cluster_name,
            cluster_arn=mt.cluster_arn, td_arn=td.arn, group=mt.group, started_by=mt.started_by or "",
            launch_type=mt.launch_type or (svc.launch_type if svc else "FARGATE"), containers=containers,
            created_at=now, fate=fate, run_for=run_for, exit_code=exit_code, pull_error=pull_error,
            service=svc.name if svc else None, deployment_id=deployment.id if deployment else None,
            cpu=td.cpu, memory=td.memory, platform_version=getattr(mt, "platform_version", None), ip=ip,
            attachments=list(mt.attachments), overrides=mt.overrides or {}, tags=list(mt.tags or []),
            moto_task=mt)
        if svc is not None:
            for lb in svc.load_balancers:
                if lb.get("targetGroupArn") and ip:
                    t.targets.append(TargetRegistration(lb["targetGroupArn"], ip, int(lb.get("containerPort", 80))))
        rs.add_task(t)
        if running:
            t.last_status, t.started_at = TaskStatus.RUNNING, now
            t.pull_started_at = t.pull_stopped_at = now
            for c in t.containers:
                c.last_status = "RUNNING"
        else:
            self.agent.launch(t, now)
        self._sync_moto_task(t)
        return t

    def _pull_problem(self, image: str, digest: str | None) -> str:
        ref = parse_uri(image)
        if ref is None:
            return ""
        reg = self.region(ref.region, ref.account).registry
        if ref.repo not in reg.repositories:
            return ""
        shown = f"{image.split('@')[0].rsplit(':', 1)[0]}@{digest}" if digest else image
        if digest is None or not reg.exists(ref.repo, digest):
            return (f"CannotPullContainerError: pull image manifest has been retried 7 time(s): failed to resolve "
                    f"ref {shown}: {shown}: not found")
        b = reg.behaviours.get(digest)
        if b is not None and b.broken:
            return (f"CannotPullContainerError: pull image manifest has been retried 7 time(s): failed to resolve "
                    f"ref {shown}: unexpected status from HEAD request to {shown}: 403 Forbidden")
        return ""

    def _behaviour(self, image: str, digest: str) -> Behaviour | None:
        ref = parse_uri(image)
        if ref is None:
            return None
        return self.region(ref.region, ref.account).registry.behaviours.get(digest)

    def stop_task(self, rs: RegionState, t: SimTask, now: float, code: StopCode, reason: str) -> bool:
        done = self.agent.request_stop(t, now, code, reason)
        if done:
            self._mutations += 1
            self._sync_moto_task(t)
            if t.service is not None:
                svc = rs.services.get((t.cluster_name, t.service))
                if svc is not None and code == StopCode.SERVICE_SCHEDULER_INITIATED:
                    self.service_event(svc, now, f"(service {svc.name}) has stopped 1 running tasks: (task {t.id}).")
        return done

    @staticmethod
    def _sync_moto_task(t: SimTask) -> None:
        """Keep moto's own task object in step, for the moto APIs the simulator does not answer."""
        mt = t.moto_task
        if mt is None:
            return
        mt.status = str(t.last_status)
        mt.desired_status = str(t.desired_status)
        mt.stopped_reason = t.stopped_reason or ""

    # ---- helpers for tests ----------------------------------------------------------------------
    def service(self, cluster: str, name: str, region: str = "us-east-1",
                account: str = ACCOUNT) -> SimService:
        return self.region(region, account).services[(cluster, name)]

    def tasks(self, cluster: str, service: str | None = None, region: str = "us-east-1",
              account: str = ACCOUNT) -> list[SimTask]:
        rs = self.region(region, account)
        return sorted((t for t in rs.tasks.values() if t.cluster_name == cluster
                       and (service is None or t.service == service)), key=lambda t: t.created_at)

    def run_until(self, predicate: Any, timeout: float = 300.0) -> float:
        """Advance until ``predicate()`` holds; the simulated seconds it took. TimeoutError otherwise."""
        start = self.clock.now()
        while not predicate():
            if self.clock.now() - start > timeout:
                raise TimeoutError(f"condition not met within {timeout} simulated seconds")
            self.advance(self.timings.step)
        return self.clock.now() - start
