"""The floor of ``bench.webhook``: a Flask route doing only what the contract makes every accepted webhook do.

Run by gunicorn as ``bench.webhook_floor:make_floor()`` with the bench's
environment. Per request, in order: HMAC-SHA256 of the raw body compared in
constant time; the JSON body read; the service looked up (in memory, as the
product's warm cache does); the delivery id claimed once (SET NX); the job row
committed (one prebuilt INSERT); the ``requested`` audit event and the first
progress event appended in one round trip; the Dramatiq message enqueued; a
202 with the job's id and Location.

No validation messages, no audit of refusals, no OIDC, no middleware: it is
not a webhook anyone should expose. It measures how fast any implementation
of the contract could accept webhooks on this stack (gunicorn, Flask,
SQLAlchemy Core on the product's engine, redis-py, Dramatiq), so the
product's ratio can be read against it.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import uuid
from typing import Any

import dramatiq
import redis
from flask import Flask, request
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from jobs.audit_stream import STREAM
from jobs.broker import make_broker
from jobs.events import KEEP_SECONDS, stream_key
from jobs.kinds import QUEUE, RUN_JOB_ACTOR
from scope.db import make_engine
from scope.models import Job

PATH = "/hooks/redeploy"


def make_floor() -> Flask:
    secret = os.environ["BENCH_WEBHOOK_SECRET"].encode()
    engine = make_engine(os.environ["VALETKEY_DATABASE_URL"])
    r = redis.Redis.from_url(os.environ["VALETKEY_REDIS_URL"])
    broker = make_broker(os.environ["VALETKEY_REDIS_URL"])
    services = {f"svc-{i:03d}" for i in range(int(os.environ.get("BENCH_SERVICES", "400")))}
    add_job = insert(Job.__table__)
    app = Flask("floor")

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.post(PATH)
    def hook() -> Any:
        raw = request.get_data()
        mac = "sha256=" + hmac.new(secret, raw, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac, request.headers.get("X-Hub-Signature-256", "")):
            return {"title": "Unauthorized"}, 401
        body = json.loads(raw)
        env, svc = body["environment"], body["service"]
        if svc not in services:
            return {"title": "Not Found"}, 404
        if not r.set(f"floor:delivery:{request.headers['X-GitHub-Delivery']}", "1", nx=True, ex=86400):
            return {"title": "repeat"}, 200
        job_id, now = uuid.uuid4().hex, dt.datetime.now(dt.timezone.utc)
        actor = f"webhook:{env}"
        try:
            with engine.begin() as c:
                c.execute(add_job, {"id": job_id, "action": "redeploy", "environment": env, "target": svc,
                                    "status": "queued", "actor": actor, "source": "webhook", "params": {},
                                    "active_key": f"{env}/{svc}", "detail": "", "request_id": "",
                                    "attempts": 0, "created_at": now})
        except IntegrityError:
            return {"title": "Conflict"}, 409
        pipe = r.pipeline(transaction=False)
        pipe.xadd(STREAM, {"event": json.dumps({"actor": actor, "action": "redeploy", "outcome": "requested",
                                                "environment": env, "target": svc, "job_id": job_id})})
        pipe.xadd(stream_key(job_id), {"time": now.isoformat(), "type": "queued", "message": "redeploy requested"})
        pipe.expire(stream_key(job_id), KEEP_SECONDS)
        pipe.execute()
        broker.enqueue(dramatiq.Message(queue_name=QUEUE, actor_name=RUN_JOB_ACTOR, args=(job_id,), kwargs={},
                                        options={}))
        return {"id": job_id, "status": "queued", "url": f"/api/v1/jobs/{job_id}"}, 202, {
            "Location": f"/api/v1/jobs/{job_id}"}

    return app
