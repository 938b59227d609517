"""``GET /metrics``: Prometheus text format for the platform team's scraper.

Every figure is read from where all processes write it, so any web process
answers for the whole system: jobs from the database (cached a few seconds),
the Dramatiq queue, AWS call counters and budget buckets (kept in Redis by
every process's botocore hooks, cloud/budget.py) and the audit exporter's
consumer group. Labels are bounded sets only (actions, statuses, API names,
Regions, budget categories); never a person, an environment, a job id or a
secret. A source that does not answer is left out and reported by
``valetkey_metrics_source_up{source} 0``: a scrape never fails with a 500.

Access: open by default, as scrapers expect; with ``VALETKEY_METRICS_TOKEN``
set, only ``Authorization: Bearer <token>`` gets an answer (401 otherwise).
"""
from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis
from dramatiq.common import dq_name, xq_name
from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from cloud.budget import bucket_levels, call_counters
from jobs.audit_stream import GROUP, STREAM
from jobs.kinds import NOTIFY_QUEUE, QUEUE
from jobs.metrics import JobFigures, job_figures
from jobs.suspended import DUE_KEY as SUSPENDED_KEY
from web.context import runtime
from web.errors import problem
from wiring.runtime import Runtime

log = logging.getLogger("valetkey.metrics")
bp = Blueprint("metrics", __name__)
JOB_FIGURES_TTL = 5.0  # seconds: scrapes every few seconds from several Prometheus replicas share one query
DRAMATIQ_NAMESPACE = "dramatiq"  # RedisBroker's default key prefix (jobs/broker.py keeps it)
WAITING = ("awaiting_approval", "queued", "running")
# The classic text format every Prometheus reads (our names are plain ASCII, so the body is the same
# as the newer 1.0.0 format's, which older scrapers may not accept by its content type).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _JobFiguresCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value: tuple[float, JobFigures] | None = None

    def get(self, rt: Runtime) -> JobFigures:
        with self._lock:  # one query per TTL, however many scrapes arrive at once
            if self._value is None or time.monotonic() >= self._value[0]:
                self._value = (time.monotonic() + JOB_FIGURES_TTL, job_figures(rt.engine))
            return self._value[1]


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _masked(account: str) -> str:
    # Enough to tell a few accounts apart on a dashboard; the full id stays off an endpoint that may be open.
    return "****" + account[-4:] if account.isdigit() else account


class ValetKeyCollector(Collector):
    def __init__(self, rt: Runtime, jobs: _JobFiguresCache) -> None:
        self.rt, self.jobs = rt, jobs

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("valetkey_metrics_source_up", "Whether a source of these metrics answered "
                               "this scrape (1) or its families are missing (0)", labels=["source"])
        for source, part in (("database", self._jobs), ("redis", self._redis)):
            try:
                yield from part()
                up.add_metric([source], 1)
            except (SQLAlchemyError, redis.RedisError, OSError) as e:
                log.warning("metrics: %s unavailable (%s)", source, type(e).__name__)
                up.add_metric([source], 0)
        yield up

    def _jobs(self) -> Iterator[Metric]:
        f = self.jobs.get(self.rt)
        jobs = GaugeMetricFamily("valetkey_jobs", "Jobs in the database by action and status",
                                 labels=["action", "status"])
        waiting = {s: 0 for s in WAITING}
        for (action, status), n in sorted(f.counts.items()):
            jobs.add_metric([action, status], n)
            if status in waiting:
                waiting[status] += n
        w = GaugeMetricFamily("valetkey_jobs_waiting", "Jobs not finished yet: awaiting approval, queued "
                              "or running", labels=["status"])
        for status, n in waiting.items():
            w.add_metric([status], n)
        h = HistogramMetricFamily("valetkey_job_duration_seconds", "Run time (started to finished) of "
                                  "finished jobs by action", labels=["action"])
        for action, d in sorted(f.durations.items()):
            h.add_metric([action], [(repr(float(b)), n) for b, n in d.buckets] + [("+Inf", d.count)], d.total)
        yield from (jobs, w, h)

    def _redis(self) -> Iterator[Metric]:
        r = self.rt.redis
        pipe = r.pipeline(transaction=False)
        queues = (QUEUE, NOTIFY_QUEUE)  # jobs, and Slack/webhook deliveries (retries wait in "delayed")
        for queue in queues:
            pipe.llen(f"{DRAMATIQ_NAMESPACE}:{queue}")
            pipe.llen(f"{DRAMATIQ_NAMESPACE}:{dq_name(queue)}")
            pipe.zcard(f"{DRAMATIQ_NAMESPACE}:{xq_name(queue)}")
        depths = pipe.execute()
        q = GaugeMetricFamily("valetkey_queue_depth", "Messages in the Dramatiq queues: ready to run, delayed "
                              "(retries waiting for their backoff) and dead-lettered", labels=["queue", "state"])
        for i, queue in enumerate(queues):
            for state, n in zip(("ready", "delayed", "dead"), depths[3 * i:3 * i + 3]):
                q.add_metric([queue, state], int(n))
        yield q
        sj = GaugeMetricFamily("valetkey_jobs_suspended", "Running jobs waiting on ECS for their next step "
                               "(no thread held; due times in Redis)")
        sj.add_metric([], int(r.zcard(SUSPENDED_KEY)))
        yield sj

        calls, throttles, refusals = call_counters(r)
        c = CounterMetricFamily("valetkey_aws_calls", "AWS API requests sent (each retry attempt counts), "
                                "by every Valet Key process", labels=["service", "api"])
        t = CounterMetricFamily("valetkey_aws_throttles", "AWS API requests answered with a throttling error",
                                labels=["service", "api"])
        for fam, counts in ((c, calls), (t, throttles)):
            for key, n in sorted(counts.items()):
                service, _, api = key.partition(":")
                fam.add_metric([service, api], n)
        rf = CounterMetricFamily("valetkey_aws_budget_refusals", "Calls not made because Valet Key's share of "
                                 "the throttling budget was spent for longer than a call may wait",
                                 labels=["bucket"])
        for bucket, n in sorted(refusals.items()):
            rf.add_metric([bucket], n)
        yield from (c, t, rf)

        tokens = GaugeMetricFamily("valetkey_aws_budget_tokens", "Calls Valet Key may make at once now in each "
                                   "budget bucket (below zero: callers are waiting for their turn)",
                                   labels=["account", "region", "bucket"])
        cap = GaugeMetricFamily("valetkey_aws_budget_capacity", "Burst of each budget bucket: Valet Key's share "
                                "of AWS' burst", labels=["account", "region", "bucket"])
        for lv in bucket_levels(r):
            labels = [_masked(lv.account), lv.region, lv.bucket]
            tokens.add_metric(labels, round(lv.tokens, 3))
            cap.add_metric(labels, lv.burst)
        yield from (tokens, cap)

        yield from self._exporter(r)

    def _exporter(self, r: redis.Redis) -> Iterator[Metric]:
        lag = GaugeMetricFamily("valetkey_audit_exporter_lag", "Audit stream entries not yet delivered to the "
                                "exporter (XINFO GROUPS lag)")
        pending = GaugeMetricFamily("valetkey_audit_exporter_pending", "Audit stream entries delivered to the "
                                    "exporter but not yet committed and acknowledged")
        try:
            groups: Any = r.xinfo_groups(STREAM)
        except redis.ResponseError:  # no stream yet: nothing was ever audited, nothing is behind
            groups = []
        g = next((x for x in groups if _text(x.get("name")) == GROUP), None)
        if g is None:
            # No exporter has ever joined: every entry on the stream is behind.
            lag.add_metric([], float(r.xlen(STREAM)) if groups else 0.0)
            pending.add_metric([], 0)
        else:
            if g.get("lag") is not None:  # None: Redis < 7, or a trim made the lag unknowable; left out
                lag.add_metric([], float(g["lag"]))
            pending.add_metric([], float(g.get("pending", 0)))
        yield from (lag, pending)


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text exposition of jobs, queue, AWS calls and budget, and the audit exporter."""
    rt = runtime()
    token = rt.settings.metrics_token
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            resp = problem(401, "Unauthorized", "GET /metrics needs Authorization: Bearer <VALETKEY_METRICS_TOKEN>.")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="valetkey-metrics"'
            return resp
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ValetKeyCollector(rt, current_app.extensions["valetkey.metrics"]))
    resp = Response(generate_latest(registry), content_type=CONTENT_TYPE)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def init_app(app: Flask) -> None:
    app.extensions["valetkey.metrics"] = _JobFiguresCache()
    app.register_blueprint(bp)
