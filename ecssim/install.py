"""Route moto's ECS, ECR, elbv2 and Application Auto Scaling calls through a Simulator.

moto dispatches every call to ``<Service>Response.call_action``, which looks
the action's method up on the class by name. ``install`` therefore
(1) wraps ``call_action`` of the four response classes (API latency, call log,
throttling, catching up with the clock, one lock with the ticker) and (2) replaces the
methods of the few actions whose behaviour changes, adding the ones moto
lacks (DescribeServiceDeployments...). Product code talks plain boto3 to the
same endpoint and cannot tell. Process-wide: one simulator at a time.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from typing import Any

from moto.core.responses import ActionResult

from .calllog import Call
from .errors import ThrottlingException
from .simulator import Simulator

_active: Simulator | None = None
_saved: list[tuple[type, str, Any]] = []  # (class, attribute, original or _MISSING)
_MISSING = object()

# Parameters worth keeping in the call log (names as the APIs spell them).
_KEY_PARAMS = ("cluster", "service", "services", "task", "tasks", "taskDefinition", "desiredCount",
               "forceNewDeployment", "clientToken", "count", "startedBy", "group", "serviceName", "desiredStatus",
               "reason", "serviceDeploymentArns", "repositoryName", "imageIds", "TargetGroupArn",
               "ServiceNamespace", "ResourceIds", "ResourceId", "MinCapacity", "MaxCapacity")


def active() -> Simulator | None:
    return _active


def _classes() -> list[tuple[type, str, dict[str, Any]]]:
    from moto.applicationautoscaling.responses import ApplicationAutoScalingResponse
    from moto.ecr.responses import ECRResponse
    from moto.ecs.responses import EC2ContainerServiceResponse
    from moto.elbv2.responses import ELBV2Response

    from .handlers_ecs import HANDLERS
    from .handlers_other import ECR_HANDLERS, ELBV2_HANDLERS

    return [(EC2ContainerServiceResponse, "ecs", HANDLERS), (ECRResponse, "ecr", ECR_HANDLERS),
            (ELBV2Response, "elbv2", ELBV2_HANDLERS), (ApplicationAutoScalingResponse, "application-autoscaling", {})]


def _patch(cls: type, name: str, value: Any) -> None:
    _saved.append((cls, name, cls.__dict__.get(name, _MISSING)))
    setattr(cls, name, value)


def _key_params(resp: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in _KEY_PARAMS:
        try:
            v = resp._get_param(k)
        except Exception:  # noqa: BLE001 - a parameter that does not parse is simply not logged
            v = None
        if v is not None:
            out[k] = v
    return out


def _error_code(body: Any) -> str:
    try:
        data = json.loads(body)
        return str(data.get("__type", "")).rsplit("#", 1)[-1] or "Error"
    except Exception:  # noqa: BLE001 - XML (elbv2) or empty bodies
        return "Error"


def _wrap_call_action(service: str, original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def call_action(self: Any) -> Any:
        sim = _active
        if sim is None:
            return original(self)
        action = self._get_action()
        account, region = self.current_account, self.region
        sim.latency.wait()  # outside the lock: calls in flight overlap, as against AWS
        with sim.lock:
            sim.catch_up()
            now = sim.clock.now()
            call = Call(now, service, action, account, region, _key_params(self))
            sim.calls.add(call)
            if not sim.throttle.allow(account, region, action, now):
                sim.calls.mark_error(call, ThrottlingException.code)
                with warnings.catch_warnings():
                    # ECS's model has no ThrottlingException shape (AWS sends it anyway); moto warns.
                    warnings.simplefilter("ignore", UserWarning)
                    status, headers, body = self.serialized(ActionResult(ThrottlingException()))
                headers, body = self._enrich_response(headers, body)
                return status, headers, body
            status, headers, body = original(self)
            sim.touch()
            if int(status) >= 400:
                sim.calls.mark_error(call, _error_code(body))
            return status, headers, body
    return call_action


def _wrap_handler(handler: Callable[[Simulator, Any, Any], Any], original: Any) -> Callable[[Any], Any]:
    def method(self: Any) -> Any:
        sim = _active
        if sim is None:
            if original is None:
                raise NotImplementedError("ecssim is not installed")
            return original(self)
        # ServiceExceptions raised here reach moto's call_action, which serializes them.
        return handler(sim, self, original)
    return method


def install(sim: Simulator) -> Simulator:
    """Make moto's backends in this process behave as ``sim`` says; returns ``sim``."""
    global _active
    if _active is not None:
        uninstall()
    for cls, service, handlers in _classes():
        _patch(cls, "call_action", _wrap_call_action(service, cls.call_action))  # type: ignore[attr-defined]
        for name, handler in handlers.items():
            _patch(cls, name, _wrap_handler(handler, getattr(cls, name, None)))
    _active = sim
    return sim


def uninstall() -> None:
    global _active
    for cls, name, original in reversed(_saved):
        if original is _MISSING:
            delattr(cls, name)
        else:
            setattr(cls, name, original)
    _saved.clear()
    if _active is not None:
        _active.stop_ticker()
    _active = None
