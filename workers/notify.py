"""Announcements of jobs, run by the notify worker: Slack messages and signed outbound webhooks.

An announcement (jobs/announce.py) is fanned out into deliveries, one Dramatiq
message each, so that one slow or failing receiver is retried on its own, with
backoff, and never repeats the others. Nothing here touches the job or its audit
entries: the job finished (and was audited) before anyone was told. A URL,
token or ``response_url`` is never logged; failures name the delivery only.
"""
from __future__ import annotations

import json
import logging

import dramatiq

from cloud.outbound import deliver
from cloud.slack import SlackApi
from jobs.announce import SLACK_SOURCE
from jobs.kinds import APPROVAL_REQUESTED, DECIDED, DELIVER_ACTOR, NOTIFY_QUEUE, OUTCOME, STARTED
from jobs.service import job_dict
from jobs.slack_messages import approval_request, decided, job_url, outcome, started
from jobs.slack_state import message_of, remember_message, reply_url
from scope.errors import NotFound
from scope.models import Job
from wiring.runtime import Runtime

log = logging.getLogger("valetkey.notify")
CHANNEL, REPLY, WEBHOOK = "channel", "reply", "webhook"


def send_delivery(broker: dramatiq.Broker, target: str, kind: str, job_id: str, index: int = 0) -> None:
    broker.enqueue(dramatiq.Message(queue_name=NOTIFY_QUEUE, actor_name=DELIVER_ACTOR,
                                    args=(target, kind, job_id, index), kwargs={}, options={}))


def webhook_body(base_url: str, job: Job) -> bytes:
    """What a notify webhook receives: the job object of the HTTP contract and its page."""
    return json.dumps({"event": "job.finished", "job": job_dict(job),
                       "job_url": job_url(base_url, job.id)}, separators=(",", ":"), sort_keys=True).encode()


class Notifier:
    def __init__(self, rt: Runtime, slack: SlackApi | None) -> None:
        self.rt, self.slack = rt, slack
        self.base_url = rt.settings.base_url

    @classmethod
    def from_runtime(cls, rt: Runtime) -> "Notifier":
        slack = SlackApi.from_settings(rt.settings, rt.redis) if rt.settings.slack_bot_token else None
        return cls(rt, slack)

    def deliveries(self, kind: str, job: Job) -> list[tuple[str, int]]:
        env = self.rt.catalog.get(job.environment)
        if env is None:
            return []
        out: list[tuple[str, int]] = []
        if self.slack is not None:
            if env.slack_channel and kind in (APPROVAL_REQUESTED, DECIDED, OUTCOME):
                out.append((CHANNEL, 0))
            if job.source == SLACK_SOURCE and kind in (DECIDED, STARTED, OUTCOME):
                out.append((REPLY, 0))
        if kind == OUTCOME:
            out += [(WEBHOOK, i) for i in range(len(env.notify))]
        return out

    def announce(self, kind: str, job_id: str) -> None:
        """Fan an announcement out into deliveries (no I/O but the enqueues)."""
        try:
            job = self.rt.jobs.get(job_id)
        except NotFound:
            return
        assert self.rt.broker is not None
        for target, index in self.deliveries(kind, job):
            send_delivery(self.rt.broker, target, kind, job_id, index)

    def deliver(self, target: str, kind: str, job_id: str, index: int = 0) -> None:
        """One delivery; TransientError or Unavailable make Dramatiq retry it with backoff."""
        job = self.rt.jobs.get(job_id)
        env = self.rt.catalog.get(job.environment)
        if env is None:
            return
        if target == WEBHOOK:
            if index < len(env.notify):
                t = env.notify[index]
                environ = self.rt.settings.environ
                deliver(t.url(environ), t.secret(environ), webhook_body(self.base_url, job), f"{job.id}.{index}")
            return
        if self.slack is None:
            return
        if target == CHANNEL and env.slack_channel:
            self._channel(kind, job, env.slack_channel)
        elif target == REPLY:
            self._reply(kind, job)

    def _channel(self, kind: str, job: Job, channel: str) -> None:
        assert self.slack is not None
        where = message_of(self.rt.redis, job.id)
        if kind == APPROVAL_REQUESTED:
            if where is None:  # a redelivered announcement does not post the request twice
                text, blocks = approval_request(self.base_url, job)
                remember_message(self.rt.redis, job.id, *self.slack.post(channel, text, blocks))
        elif kind == DECIDED:
            text, blocks = decided(self.base_url, job)
            if where is not None:
                self.slack.update(where[0], where[1], text, blocks)
            else:
                self.slack.post(channel, text, blocks)
        elif kind == OUTCOME:
            # Under the approval request when there was one: the thread tells the whole story.
            self.slack.post(where[0] if where else channel, outcome(self.base_url, job),
                            thread_ts=where[1] if where else None)

    def _reply(self, kind: str, job: Job) -> None:
        assert self.slack is not None
        url = reply_url(self.rt.redis, job.id)
        if url is None:  # older than Slack's 30 minutes, or never kept: the channel and the page remain
            return
        if kind == STARTED:
            text = started(self.base_url, job)
        elif kind == DECIDED:
            text = decided(self.base_url, job)[0]
        else:
            text = outcome(self.base_url, job)
        self.slack.respond(url, {"response_type": "ephemeral", "replace_original": False, "text": text})


def delivery_failed(target: str, kind: str, job_id: str, index: int, error: Exception) -> None:
    """Logged when a delivery is given up: which one and why, never where it was going."""
    name = f"notify[{index}]" if target == WEBHOOK else f"Slack {target}"
    detail = getattr(error, "detail", type(error).__name__)
    log.error("job %s: the %s announcement to %s was given up: %s", job_id, kind, name, detail)

