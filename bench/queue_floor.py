"""The floor of ``bench.queue``: a restart actor that does only what the contract makes every restart do.

Same message, same job row, same Stubber answers as the product's run, but
no product code around them: prebuilt Core statements, direct boto3 calls
with the fewest arguments, bare XADDs. What it does per job, in order:

- claim the job row (compare-and-set UPDATE ... RETURNING);
- re-check the actor's scope (the user row and the grants: two SELECTs);
- the 22 ECS calls of a 2-task restart at 50% (see ``restart_answers``): the plan, the tasks
  stopped before, and a look at the service and its tasks before each batch, after the last
  and for the outcome;
- checkpoint the tasks to replace (UPDATE) before stopping any, and before each StopTask;
- as many progress events as the product wrote for a job (measured in the
  same run), the last one in one round trip with the outcome audit event;
- finish the row (UPDATE ... RETURNING).

It is not a restart anyone should run (no error handling, no state parsing,
no waiting): it measures how fast *any* implementation of the contract on
this stack could go, so the product's ratio can be read against it.
"""
from __future__ import annotations

import datetime as dt
import json
from typing import Any

import dramatiq
from sqlalchemy import bindparam, select, update

from jobs.audit_stream import STREAM
from jobs.events import KEEP_SECONDS, stream_key
from jobs.kinds import QUEUE, RUN_JOB_ACTOR
from scope.models import Grant, Job, User

CLUSTER = "bench"


def declare_floor(rt: Any, ecs: Any, events: int) -> None:
    """Declare the floor actor under the product's actor name and queue on ``rt.broker``."""
    jobs, users, grants = Job.__table__, User.__table__.c, Grant.__table__.c
    claim = (update(jobs).where(jobs.c.id == bindparam("job_id"), jobs.c.status == "queued")
             .values(status="running", attempts=jobs.c.attempts + 1,
                     heartbeat_at=bindparam("now", type_=jobs.c.heartbeat_at.type),
                     started_at=bindparam("now", type_=jobs.c.started_at.type))
             .returning(jobs.c.id, jobs.c.target, jobs.c.actor))
    checkpoint = (update(jobs).where(jobs.c.id == bindparam("job_id"))
                  .values(params=bindparam("params", type_=jobs.c.params.type)))
    finish = (update(jobs).where(jobs.c.id == bindparam("job_id"), jobs.c.status == "running")
              .values(status="succeeded", detail=bindparam("detail"), active_key=None,
                      finished_at=bindparam("now", type_=jobs.c.finished_at.type))
              .returning(jobs.c.id))
    user = select(users.email, users.groups, users.disabled).where(users.email == bindparam("email"))
    roles = select(grants.environment, grants.role).where(grants.subject.in_(bindparam("subjects", expanding=True)))
    env = rt.catalog.get("bench")
    engine, r = rt.engine, rt.redis

    def run_job(job_id: str) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        with engine.begin() as c:
            job = c.execute(claim, {"job_id": job_id, "now": now}).one()
        with engine.connect() as c:
            u = c.execute(user, {"email": job.actor}).one()
            assert not u.disabled and c.execute(roles, {"subjects": [u.email]}).all()
        key, svc = stream_key(job_id), job.target
        note = {"time": now.isoformat(), "type": "progress", "message": "floor"}
        client = ecs(env)
        client.describe_services(cluster=CLUSTER, services=[svc])
        arns = client.list_tasks(cluster=CLUSTER, serviceName=svc, desiredStatus="RUNNING")["taskArns"]
        client.describe_tasks(cluster=CLUSTER, tasks=arns)
        client.list_tasks(cluster=CLUSTER, serviceName=svc, desiredStatus="STOPPED")
        with engine.begin() as c:
            c.execute(checkpoint, {"job_id": job_id, "params": {"restart_tasks": arns}})
        for i in range(len(arns) + 2):  # a look before each batch, one after the last, one for the outcome
            client.describe_services(cluster=CLUSTER, services=[svc])
            running = client.list_tasks(cluster=CLUSTER, serviceName=svc, desiredStatus="RUNNING")["taskArns"]
            client.list_tasks(cluster=CLUSTER, serviceName=svc, desiredStatus="STOPPED")
            client.describe_tasks(cluster=CLUSTER, tasks=sorted(set(arns) | set(running)))
            if i < len(arns):
                with engine.begin() as c:  # every mutation checkpointed first
                    c.execute(checkpoint, {"job_id": job_id, "params": {"restart_tasks": arns, "stopping": [i]}})
                client.stop_task(cluster=CLUSTER, task=arns[i], reason="bench")
        for _ in range(events - 2):  # all but "queued" (written at creation) and the last one
            r.xadd(key, note, maxlen=2000, approximate=True)
        with engine.begin() as c:
            c.execute(finish, {"job_id": job_id, "detail": "HEALTHY after 0s", "now": now}).one()
        pipe = r.pipeline(transaction=False)
        pipe.xadd(key, {**note, "type": "succeeded"}, maxlen=2000, approximate=True)
        pipe.expire(key, KEEP_SECONDS)
        pipe.xadd(STREAM, {"event": json.dumps({"job_id": job_id, "outcome": "succeeded"})})
        pipe.execute()

    dramatiq.actor(run_job, broker=rt.broker, actor_name=RUN_JOB_ACTOR, queue_name=QUEUE, max_retries=0)
