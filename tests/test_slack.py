"""The Slack app (docs/slack.md) against a local Slack Web API stand-in (tests/slack_standin.py):
signature first, people mapped by e-mail, the API's own rules, approvals by button, outcomes and
signed outbound webhooks delivered by the notify worker."""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import signal
import time
from typing import Any, Iterator
from urllib.parse import urlencode

import pytest
from dramatiq import Worker
from slack_sdk.signature import SignatureVerifier

from ecssim.seed import ServiceSpec, seed
from jobs.kinds import NOTIFY_QUEUE
from jobs.slack_messages import APPROVE, REJECT
from tests.conftest import BASE_TOML, audit_events
from tests.slack_standin import SlackStandIn, start
from web.slack import EXTENSION
from workers.actors import declare_notify
from workers.notify import Notifier
from workers.runner import JobRunner

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"  # Slack's documented example secret
DOC_TIMESTAMP = "1531420618"
DOC_BODY = ("token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&"
            "channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&"
            "response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&"
            "trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c")
DOC_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
BOT_TOKEN = "xoxb-test-bot-token-0000"
NOTIFY_SECRET = "notify-secret-abc"
TEAM = "T0ACME"
HOOK_LINE = '''webhook_secret_env = "STAGING_WEBHOOK_SECRET"'''
TOML = BASE_TOML.replace(HOOK_LINE, HOOK_LINE + '''
slack_channel = "#staging-ops"

[[environments.staging.notify]]
url_env = "STAGING_NOTIFY_URL"
secret_env = "STAGING_NOTIFY_SECRET"''') + '''
[environments.pair]
region = "us-east-1"
cluster = "stg"
approval = "two-person"
slack_channel = "#pair-ops"
'''


@pytest.fixture
def standin() -> Iterator[SlackStandIn]:
    s = SlackStandIn()
    server = start(s)
    yield s
    server.shutdown()
    server.server_close()


@pytest.fixture
def environ(environ: dict[str, str], config_file: Any, standin: SlackStandIn) -> dict[str, str]:
    return {**environ, "VALETKEY_ENVIRONMENTS": config_file(TOML),
            "VALETKEY_SLACK_SIGNING_SECRET": SECRET, "VALETKEY_SLACK_BOT_TOKEN": BOT_TOKEN,
            "VALETKEY_SLACK_API_URL": standin.api_url,
            "STAGING_NOTIFY_URL": standin.hook_url("chat-a"), "STAGING_NOTIFY_SECRET": NOTIFY_SECRET,
            # Simulated ECS takes simulated minutes: poll and wait as a worker would.
            "VALETKEY_POLL_INTERVAL": "3", "VALETKEY_STABILITY_TIMEOUT": "900"}


@pytest.fixture
def people(make_user: Any, standin: SlackStandIn) -> dict[str, dict[str, str]]:
    """Valet Key users, each with a Slack id whose users.info e-mail is theirs (U… = the name)."""
    tokens = {"dev": make_user("dev@acme.test", ("staging", "developer"), ("pair", "developer"), ("prod", "developer")),
              "op": make_user("op@acme.test", ("pair", "operator"), ("staging", "operator")),
              "viewer": make_user("viewer@acme.test", ("staging", "viewer")),
              "off": make_user("off@acme.test", ("staging", "developer"))}
    for name in tokens:
        standin.person(f"U{name.upper()}", f"{name.title()}@Acme.test")  # Slack's case is not ours
    standin.person("USTRANGER", "stranger@elsewhere.test")  # no such Valet Key user
    return tokens


@pytest.fixture
def staging(sim: Any) -> Any:
    return seed(sim, "stg", [ServiceSpec("orders-api", min_percent=50)], cidr="10.9")


@pytest.fixture
def notify_worker(rt: Any) -> Iterator[Worker]:
    """The notify actors on a real Dramatiq worker (its queue only), with short backoffs."""
    declare_notify(rt.broker, Notifier.from_runtime(rt), min_backoff_ms=50)
    worker = Worker(rt.broker, queues={NOTIFY_QUEUE}, worker_threads=2, worker_timeout=100)
    worker.start()
    yield worker
    worker.stop(timeout=5_000)


def signed(body: str, ts: int | None = None, secret: str = SECRET) -> dict[str, str]:
    stamp = str(int(time.time()) if ts is None else ts)
    sig = SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body)
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": sig or "",
            "Content-Type": "application/x-www-form-urlencoded"}


def command(client: Any, text: str, user: str = "UDEV", response_url: str = "") -> Any:
    body = urlencode({"token": "legacy", "team_id": TEAM, "user_id": user, "command": "/valet", "text": text,
                      "response_url": response_url, "channel_id": "C0ANY"})
    return client.post("/slack/commands", data=body, headers=signed(body))


def press(client: Any, action_id: str, job_id: str, user: str, response_url: str = "",
          message_ts: str = "1700000000.000001") -> Any:
    payload = {"type": "block_actions", "team": {"id": TEAM}, "user": {"id": user}, "response_url": response_url,
               "container": {"type": "message", "channel_id": "C0STAGING", "message_ts": message_ts},
               "actions": [{"action_id": action_id, "value": job_id, "type": "button"}]}
    body = urlencode({"payload": json.dumps(payload)})
    return client.post("/slack/interactions", data=body, headers=signed(body))


def denied(rt: Any) -> list[dict[str, Any]]:
    return [e for e in audit_events(rt) if e["outcome"] == "denied"]


def text_of(resp: Any) -> str:
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["response_type"] == "ephemeral"
    return str(body["text"])


# ---- the signature, before anything else ------------------------------------------------------------
def test_slacks_documented_signing_example_verifies(app, client, rt, people):
    class At:  # Slack's example was signed at 1531420618: a clock there puts it inside the 5 minutes
        def now(self) -> float:
            return float(DOC_TIMESTAMP) + 30

    assert SignatureVerifier(SECRET).generate_signature(timestamp=DOC_TIMESTAMP, body=DOC_BODY) == DOC_SIGNATURE
    app.extensions[EXTENSION].verifier.clock = At()
    r = client.post("/slack/commands", data=DOC_BODY, headers={
        "X-Slack-Request-Timestamp": DOC_TIMESTAMP, "X-Slack-Signature": DOC_SIGNATURE,
        "Content-Type": "application/x-www-form-urlencoded"})
    # Verified: the request got as far as mapping its person (U2CERLKJA is nobody Valet Key knows).
    assert "does not know you" in text_of(r)
    [entry] = denied(rt)
    assert entry["actor"] == "slack:T1DC2JH3J/U2CERLKJA" and entry["source"] == "slack"
    assert "Slack user refused" in entry["detail"]


@pytest.mark.parametrize("tamper", ["byte", "stale", "future", "no signature", "bad timestamp", "other secret"])
def test_an_unverified_request_is_401_and_audited_before_parsing(client, rt, people, standin, tamper):
    body = urlencode({"team_id": TEAM, "user_id": "UDEV", "text": "restart orders-api in staging"})
    headers = signed(body)
    if tamper == "byte":
        body = body.replace("orders-api", "orders-apj")
    elif tamper == "stale":
        headers = signed(body, ts=int(time.time()) - 330)
    elif tamper == "future":
        headers = signed(body, ts=int(time.time()) + 330)
    elif tamper == "no signature":
        headers.pop("X-Slack-Signature")
    elif tamper == "bad timestamp":
        headers["X-Slack-Request-Timestamp"] = "soon"
    else:
        headers = signed(body, secret="another app's secret")
    r = client.post("/slack/commands", data=body, headers=headers)
    assert r.status_code == 401 and r.mimetype == "application/problem+json"
    [entry] = denied(rt)
    assert (entry["actor"], entry["source"], entry["action"]) == ("slack", "slack", "login")
    assert "X-Slack-Signature" in entry["detail"]
    assert standin.recorded("/api/") == []  # nothing parsed, nobody looked up
    assert rt.redis.hlen("dramatiq:valetkey.msgs") == 0
    r = client.post("/slack/interactions", data=body, headers=headers)
    assert r.status_code == 401


def test_slack_urls_do_not_exist_without_a_signing_secret(environ):
    from web import create_app
    from wiring.runtime import Runtime

    runtime = Runtime.from_env({**environ, "VALETKEY_SLACK_SIGNING_SECRET": ""})
    try:
        client = create_app({"TESTING": True}, runtime=runtime).test_client()
        body = "text=help"
        assert client.post("/slack/commands", data=body, headers=signed(body)).status_code == 404
        assert client.post("/slack/interactions", data=body, headers=signed(body)).status_code == 404
    finally:
        runtime.close()


# ---- who is asking -----------------------------------------------------------------------------------
def test_people_are_mapped_by_their_slack_email_cached_briefly(client, rt, people, standin):
    assert "status ENV" in text_of(command(client, "help"))
    assert "status ENV" in text_of(command(client, "help"))
    assert len(standin.recorded("/api/users.info")) == 1  # the second time from the cache
    [call] = standin.recorded("/api/users.info")
    assert call.headers["Authorization"] == f"Bearer {BOT_TOKEN}"


@pytest.mark.parametrize("who", ["USTRANGER", "UNOBODY", "UOFF"])
def test_unknown_or_disabled_people_are_refused(client, rt, people, standin, who):
    if who == "UOFF":
        rt.users.set_disabled("off@acme.test")
    text = text_of(command(client, "restart orders-api in staging", user=who))
    assert "does not know you" in text
    [entry] = denied(rt)
    assert entry["source"] == "slack" and entry["action"] == "service.restart"
    assert entry["actor"] == {"USTRANGER": "stranger@elsewhere.test", "UNOBODY": f"slack:{TEAM}/UNOBODY",
                              "UOFF": "off@acme.test"}[who]
    assert rt.redis.hlen("dramatiq:valetkey.msgs") == 0


# ---- the API's rules, word for word -----------------------------------------------------------------------
@pytest.mark.parametrize("who,text", [
    ("viewer", "restart orders-api in staging"),  # role too weak
    ("viewer", "redeploy orders-api in staging"),
    ("viewer", "restart orders-api in qa"),  # an environment they hold no role in ...
    ("viewer", "restart orders-api in nowhere"),  # ... reads exactly like one that does not exist
    ("dev", "restart orders-api in prod"),  # prod is off, whatever the role
])
def test_refusals_are_the_apis_own(client, rt, people, staging, who, text):
    verb, svc, _, env = text.split()
    slack_text = text_of(command(client, text, user=f"U{who.upper()}"))
    api = client.post(f"/api/v1/environments/{env}/services/{svc}/{verb}", headers=people[who], json={})
    assert api.status_code in (403, 404)
    assert slack_text == api.get_json()["detail"]
    refusals = denied(rt)
    assert [e["source"] for e in refusals] == ["slack", "api"]
    assert refusals[0]["detail"] == refusals[1]["detail"] and refusals[0]["actor"] == f"{who}@acme.test"
    assert rt.redis.hlen("dramatiq:valetkey.msgs") == 0


def test_no_role_reads_like_no_such_environment(client, people):
    qa = text_of(command(client, "status qa", user="UVIEWER"))
    assert qa == "No environment named 'qa'."
    assert text_of(command(client, "status nowhere", user="UVIEWER")) == "No environment named 'nowhere'."


def test_help_lists_only_what_this_person_may_do(client, people):
    viewer = text_of(command(client, "help", user="UVIEWER"))
    assert "restart" not in viewer and "approve" not in viewer and "`/valet status ENV` in staging" in viewer
    dev = text_of(command(client, "", user="UDEV"))
    assert "restart SERVICE in ENV [-- reason]` in pair, staging" in dev and "approve" not in dev
    assert "prod" not in dev.split("status")[0]  # prod is off: no action offered there
    assert "approve JOB" in text_of(command(client, "help", user="UOP"))


def test_a_command_it_does_not_understand_gets_the_usage(client, rt, people):
    text = text_of(command(client, "restart everything now please", user="UDEV"))
    assert "did not understand" in text and "Usage:" in text
    assert rt.redis.hlen("dramatiq:valetkey.msgs") == 0


def test_status_shows_the_environment(client, people, staging):
    text = text_of(command(client, "status staging", user="UVIEWER"))
    assert text.startswith("*staging*, your role: viewer") and "*orders-api*" in text


# ---- a restart from Slack, run and reported ----------------------------------------------------------------
def test_a_restart_from_slack_runs_and_its_outcome_is_posted(client, rt, people, staging, sim, standin,
                                                             notify_worker, caplog):
    caplog.set_level(logging.DEBUG)
    reply = standin.response_url("cmd-1")
    text = text_of(command(client, "restart orders-api in staging -- stuck consumers", response_url=reply))
    # Slack's 3-second limit is met by what the acknowledgement does not do: it only queues the job
    # (no ECS write, no wait on the job); its latency is not timed here, on a shared 2-core machine.
    assert sim.calls.count("UpdateService") == 0 and sim.calls.count("StopTask") == 0
    [job] = [rt.jobs.get(e["job_id"]) for e in audit_events(rt) if e["outcome"] == "requested"]
    assert f"/jobs/{job.id}" in text and "queued" in text
    assert (job.source, job.actor, job.reason, job.status) == ("slack", "dev@acme.test", "stuck consumers", "queued")
    [requested] = [e for e in audit_events(rt) if e["job_id"] == job.id]
    assert (requested["source"], requested["actor"], requested["action"]) == ("slack", "dev@acme.test",
                                                                             "service.restart")

    assert JobRunner(rt, sleep=sim.advance, clock=sim.clock.now).run(job.id) == "succeeded"
    detail = rt.jobs.get(job.id).detail
    assert "HEALTHY" in detail
    # Progress and the verified outcome, to the person (response_url) and to the channel ...
    answers = standin.wait_for("/response/cmd-1", 2)
    assert [a.json["response_type"] for a in answers] == ["ephemeral", "ephemeral"]
    assert "is running" in answers[0].json["text"] and detail in answers[1].json["text"]
    [posted] = standin.wait_for("/api/chat.postMessage")
    assert posted.json["channel"] == "#staging-ops" and detail in posted.json["text"]
    assert posted.headers["Authorization"] == f"Bearer {BOT_TOKEN}"
    # ... and to the signed outbound webhook.
    [hook] = standin.wait_for("/hook/chat-a")
    assert hook.json["job"]["id"] == job.id and hook.json["job"]["detail"] == detail
    outcome = [e for e in audit_events(rt) if e["job_id"] == job.id and e["outcome"] == "succeeded"]
    assert len(outcome) == 1 and outcome[0]["source"] == "slack"
    # The bot token and the response_url never reach the logs or the audit trail.
    trail = json.dumps(audit_events(rt))
    for secret in (BOT_TOKEN, reply, NOTIFY_SECRET, standin.hook_url("chat-a")):
        assert secret not in caplog.text and secret not in trail


def test_a_second_restart_while_one_runs_is_refused_naming_it(client, rt, people, staging):
    first = text_of(command(client, "restart orders-api in staging"))
    second = text_of(command(client, "redeploy orders-api in staging"))
    assert "queued" in first and "already has a job in progress" in second
    assert [e["source"] for e in denied(rt)] == ["slack"]


# ---- approvals by button ---------------------------------------------------------------------------------
def test_an_approval_by_button_works_and_self_approval_is_refused(client, rt, people, staging, sim, standin,
                                                                  notify_worker):
    text = text_of(command(client, "restart orders-api in pair -- queue stuck", response_url=standin.response_url("r")))
    assert "waits for a second person's approval" in text
    [job] = rt.jobs.awaiting()
    # The request is posted to the environment's channel with Approve / Reject buttons.
    [request] = standin.wait_for("/api/chat.postMessage")
    assert request.json["channel"] == "#pair-ops" and "dev@acme.test" in request.json["text"]
    buttons = request.json["blocks"][-1]["elements"]
    assert [(b["action_id"], b["value"]) for b in buttons] == [(APPROVE, job.id), (REJECT, job.id)]

    # The requester's own press is refused, in an ephemeral answer, and audited.
    r = press(client, APPROVE, job.id, "UDEV", response_url=standin.response_url("press-dev"))
    assert r.status_code == 200
    [refusal] = standin.wait_for("/response/press-dev")
    assert "second person" in refusal.json["text"] and refusal.json["response_type"] == "ephemeral"
    [entry] = denied(rt)
    assert (entry["actor"], entry["action"], entry["source"]) == ("dev@acme.test", "approval.approve", "slack")
    assert rt.jobs.get(job.id).status == "awaiting_approval"
    # A viewer-less stranger gets nothing either.
    press(client, APPROVE, job.id, "USTRANGER", response_url=standin.response_url("press-x"))
    assert "does not know you" in standin.wait_for("/response/press-x")[0].json["text"]

    # The operator's press approves as the operator; the message then says who decided.
    assert press(client, APPROVE, job.id, "UOP").status_code == 200
    approved = rt.jobs.get(job.id)
    assert (approved.status, approved.approved_by) == ("queued", "op@acme.test")
    [ev] = [e for e in audit_events(rt) if e["action"] == "approval.approve" and e["outcome"] == "succeeded"]
    assert (ev["actor"], ev["source"], ev["job_id"]) == ("op@acme.test", "slack", job.id)
    [update] = standin.wait_for("/api/chat.update")
    assert "Approved by op@acme.test" in update.json["text"]
    assert (update.json["channel"], update.json["ts"]) == ("C0STAGING", "1700000000.000001")  # the message pressed
    assert update.json["blocks"] and all(b["type"] != "actions" for b in update.json["blocks"])
    assert "Approved by op@acme.test" in standin.wait_for("/response/r")[0].json["text"]

    assert JobRunner(rt, sleep=sim.advance, clock=sim.clock.now).run(job.id) == "succeeded"
    # The outcome goes under the approval request (its thread).
    outcome = standin.wait_for("/api/chat.postMessage", 2)[1]
    assert outcome.json["thread_ts"] == "1700000000.000001" and rt.jobs.get(job.id).detail in outcome.json["text"]


def test_a_reject_by_button_ends_the_job(client, rt, people, staging, standin, notify_worker):
    text_of(command(client, "restart orders-api in pair"))
    [job] = rt.jobs.awaiting()
    press(client, REJECT, job.id, "UOP")
    assert rt.jobs.get(job.id).status == "rejected"
    [update] = standin.wait_for("/api/chat.update")
    assert "Rejected by op@acme.test" in update.json["text"]


def test_approve_by_command(client, rt, people, staging):
    text_of(command(client, "restart orders-api in pair"))
    [job] = rt.jobs.awaiting()
    assert "second person" in text_of(command(client, f"approve {job.id}", user="UDEV"))
    assert "Approved" in text_of(command(client, f"approve {job.id} -- looks right", user="UOP"))
    assert rt.jobs.get(job.id).approved_by == "op@acme.test"
    assert text_of(command(client, "approve 0123abcd", user="UOP")) == "No job '0123abcd'."


# ---- signed outbound webhooks ------------------------------------------------------------------------------
def finished_job(rt: Any, env: str = "staging") -> Any:
    job = rt.jobs.create(action="service.restart", environment=env, target="orders-api", actor="dev@acme.test",
                         source="api")
    claimed = rt.jobs.claim(job.id)
    assert rt.jobs.finish(job.id, "succeeded", "HEALTHY after 38s · same image sha:a3f2b1",
                          attempt=claimed.attempts)
    return rt.jobs.get(job.id)


def test_notify_webhooks_are_signed_and_retried_with_backoff(rt, people, standin, notify_worker, caplog):
    caplog.set_level(logging.DEBUG)
    standin.fail_hooks["chat-a"] = 2
    job = finished_job(rt)
    hooks = standin.wait_for("/hook/chat-a", 3)
    assert len(hooks) == 3  # two 500s, then delivered
    assert len({h.body for h in hooks}) == 1 and {h.headers["X-Valetkey-Delivery"] for h in hooks} == {f"{job.id}.0"}
    for h in hooks:
        expected = "sha256=" + hmac.new(NOTIFY_SECRET.encode(), h.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(h.headers["X-Valetkey-Signature-256"], expected)
    body = hooks[0].json
    assert body["event"] == "job.finished" and body["job"]["status"] == "succeeded"
    assert body["job_url"].endswith(f"/jobs/{job.id}")
    time.sleep(0.5)
    assert len(standin.recorded("/hook/chat-a")) == 3  # delivered once, not again
    # The job's audit entry was written once, whatever the receiver did; no URL or secret anywhere.
    assert [e["outcome"] for e in audit_events(rt) if e["job_id"] == job.id] == ["requested", "succeeded"]
    for secret in (NOTIFY_SECRET, standin.hook_url("chat-a")):
        assert secret not in caplog.text and secret not in json.dumps(audit_events(rt))


def test_a_refused_webhook_is_not_retried(rt, people, standin, notify_worker, monkeypatch):
    standin.fail_hooks["chat-a"] = 0
    orig = standin.answer

    def refuse(path: str, headers: dict[str, str], body: bytes, query: str) -> tuple[int, dict[str, Any]]:
        status, answer = orig(path, headers, body, query)
        return (410, {}) if path.startswith("/hook/") else (status, answer)

    monkeypatch.setattr(standin, "answer", refuse)
    finished_job(rt)
    standin.wait_for("/hook/chat-a")
    time.sleep(0.8)
    assert len(standin.recorded("/hook/chat-a")) == 1


def test_an_outcome_is_recorded_even_when_the_notify_queue_is_down(rt, people, standin):
    rt.jobs.announce.broker = None  # nothing can be announced
    job = finished_job(rt)
    assert job.status == "succeeded"
    assert [e["outcome"] for e in audit_events(rt) if e["job_id"] == job.id] == ["requested", "succeeded"]


# ---- configuration ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra,key", [
    ('slack_channel = "not a channel!"', "environments.qa.slack_channel"),
    ('notify = [{ url_env = "MISSING_URL", secret_env = "STAGING_NOTIFY_SECRET" }]',
     "environments.qa.notify[0].url_env"),
    ('notify = [{ url_env = "STAGING_NOTIFY_URL" }]', "environments.qa.notify[0].secret_env"),
    ('notify = [{ url_env = "STAGING_NOTIFY_URL", secret_env = "STAGING_NOTIFY_SECRET", x = 1 }]',
     "environments.qa.notify[0].x"),
])
def test_bad_slack_and_notify_config_fails_naming_the_key(tmp_path, extra, key):
    from scope.catalog import load_catalog
    from scope.errors import ConfigError

    path = tmp_path / "e.toml"
    path.write_text(f'[environments.qa]\ncluster = "qa"\n{extra}\n')
    with pytest.raises(ConfigError) as e:
        load_catalog(str(path), {"STAGING_NOTIFY_URL": "https://chat.example/hook", "STAGING_NOTIFY_SECRET": "s"})
    assert key in str(e.value)


def test_the_two_urls_are_in_the_openapi_document(client):
    doc = client.get("/api/v1/openapi.json").get_json()
    for path in ("/slack/commands", "/slack/interactions"):
        op = doc["paths"][path]["post"]
        assert "application/x-www-form-urlencoded" in op["requestBody"]["content"]
        assert {p["name"] for p in op["parameters"]} == {"X-Slack-Signature", "X-Slack-Request-Timestamp"}
        assert "401" in op["responses"]


def test_announcements_wait_in_their_own_queue_shown_in_metrics(client, rt, people):
    from tests.test_metrics import sample, scrape

    finished_job(rt)  # no worker runs: its outcome's announcement waits beside the job's own message
    _, fams = scrape(client)
    assert sample(fams, "valetkey_queue_depth", queue="valetkey.notify", state="ready") == 1
    assert sample(fams, "valetkey_queue_depth", queue="valetkey", state="ready") == 1


def test_slacks_certificate_check_and_other_interactions_are_answered_quietly(client, rt, people, standin):
    body = "ssl_check=1&token=legacy"
    r = client.post("/slack/commands", data=body, headers=signed(body))
    assert r.status_code == 200 and r.get_data() == b""
    body = urlencode({"payload": json.dumps({"type": "shortcut", "callback_id": "x"})})
    assert client.post("/slack/interactions", data=body, headers=signed(body)).status_code == 200
    body = urlencode({"payload": "not json"})
    r = client.post("/slack/interactions", data=body, headers=signed(body))
    assert r.status_code == 400 and "payload" in r.get_json()["detail"] + json.dumps(r.get_json())
    assert audit_events(rt) == [] and standin.recorded("/api/") == []


def test_the_worker_process_delivers_a_slack_restarts_outcome(client, rt, people, standin, environ, tmp_path,
                                                              realtime_sim):
    """The Procfile's worker, as a process of its own: it runs the job and delivers every announcement."""
    from tests.test_processes import start as start_process
    from tests.test_processes import wait_for

    sim = realtime_sim
    seed(sim, "stg", [ServiceSpec("orders-api", desired=2, min_percent=50)], settle=False)
    wait_for(lambda: len([t for t in sim.tasks("stg", "orders-api") if t.wanted_running
                          and t.counted_healthy(sim.clock.now(), 0)]) == 2, 30, "the service to run 2 tasks")
    reply = standin.response_url("proc")
    text_of(command(client, "restart orders-api in staging -- from the worker process", response_url=reply))
    log = open(tmp_path / "worker.log", "wb")
    worker = start_process(["worker", "--threads", "2"], {**environ, "VALETKEY_POLL_INTERVAL": "0.2",
                                                          "VALETKEY_STABILITY_TIMEOUT": "60"}, log)
    try:
        [posted] = standin.wait_for("/api/chat.postMessage", timeout=90)
        hooks = standin.wait_for("/hook/chat-a", timeout=30)
        answers = standin.wait_for("/response/proc", 2, timeout=30)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(20)
        log.close()
    [job] = [rt.jobs.get(e["job_id"]) for e in audit_events(rt) if e["outcome"] == "requested"]
    worker_log = (tmp_path / "worker.log").read_text()
    assert job.status == "succeeded", (job.detail, worker_log[-3000:])
    assert job.detail in posted.json["text"] and len(hooks) == 1 and job.detail in answers[-1].json["text"]
    for secret in (BOT_TOKEN, reply, NOTIFY_SECRET, standin.hook_url("chat-a")):
        assert secret not in worker_log


def test_approve_by_the_short_id_slack_shows(client, rt, people, staging, make_user, standin):
    text_of(command(client, "restart orders-api in pair"))
    [job] = rt.jobs.awaiting()
    short = job.id[:8]
    # Someone who cannot see pair learns nothing from the short id: not even the job's full id.
    make_user("stg-op@acme.test", ("staging", "operator"))
    standin.person("USTGOP", "stg-op@acme.test")
    assert text_of(command(client, f"approve {short}", user="USTGOP")) == f"No job {short!r}."
    assert "Approved" in text_of(command(client, f"approve {short}", user="UOP"))
    assert rt.jobs.get(job.id).approved_by == "op@acme.test"


def test_slack_jobs_are_rechecked_when_they_run(client, rt, people, staging, sim):
    text_of(command(client, "restart orders-api in staging"))
    [job] = [rt.jobs.get(e["job_id"]) for e in audit_events(rt) if e["outcome"] == "requested"]
    rt.users.set_disabled("dev@acme.test")
    assert JobRunner(rt, sleep=sim.advance, clock=sim.clock.now).run(job.id) == "failed"
    assert "no longer an active user" in rt.jobs.get(job.id).detail


def test_slack_unavailable_answers_try_again_and_does_nothing(client, rt, people, standin, monkeypatch):
    orig = standin.answer

    def limited(path: str, headers: dict[str, str], body: bytes, query: str) -> tuple[int, dict[str, Any]]:
        if path == "/api/users.info":
            return 200, {"ok": False, "error": "fatal_error"}
        return orig(path, headers, body, query)

    monkeypatch.setattr(standin, "answer", limited)
    text = text_of(command(client, "restart orders-api in staging"))
    assert "try again" in text and "fatal_error" in text and BOT_TOKEN not in text
    assert rt.redis.hlen("dramatiq:valetkey.msgs") == 0 and audit_events(rt) == []


def test_a_button_naming_no_job_is_answered_quietly(client, rt, people, standin):
    press(client, APPROVE, "x" * 5000, "UOP", response_url=standin.response_url("junk"))
    [answer] = standin.wait_for("/response/junk")
    assert answer.json["text"] == f"No job {'x' * 32!r}." and not rt.redis.keys("valetkey:slack:message:*")


def test_a_signing_secret_without_a_bot_token_fails_at_start():
    from scope.errors import ConfigError
    from scope.settings import Settings

    with pytest.raises(ConfigError) as e:
        Settings.from_env({"VALETKEY_SLACK_SIGNING_SECRET": SECRET})
    assert "VALETKEY_SLACK_BOT_TOKEN" in str(e.value) and SECRET not in str(e.value)
    with pytest.raises(ConfigError, match="VALETKEY_SLACK_API_URL"):
        Settings.from_env({"VALETKEY_SLACK_API_URL": "slack.com/api"})
    assert repr(Settings.from_env({"VALETKEY_SLACK_SIGNING_SECRET": SECRET, "VALETKEY_SLACK_BOT_TOKEN": BOT_TOKEN})) \
        .count("xoxb") == 0


def test_a_job_requested_on_the_api_asks_for_approval_in_the_channel(client, rt, people, staging, standin,
                                                                     notify_worker):
    r = client.post("/api/v1/environments/pair/services/orders-api/restart", headers=people["dev"],
                    json={"reason": "from the API"})
    assert r.status_code == 202 and r.get_json()["status"] == "awaiting_approval"
    [request] = standin.wait_for("/api/chat.postMessage")
    assert request.json["channel"] == "#pair-ops" and "from the API" in request.json["text"]
    assert [b["value"] for b in request.json["blocks"][-1]["elements"]] == [r.get_json()["id"]] * 2
    assert standin.recorded("/response/") == []  # not from Slack: nobody to answer there


def test_a_failed_restart_is_posted_with_its_diagnosis(client, rt, people, sim, standin, notify_worker):
    seed(sim, "stg", [ServiceSpec("orders-api", min_percent=50, crash_after=5.0)], cidr="10.9")
    text_of(command(client, "restart orders-api in staging", response_url=standin.response_url("f")))
    [job] = [rt.jobs.get(e["job_id"]) for e in audit_events(rt) if e["outcome"] == "requested"]
    assert JobRunner(rt, sleep=sim.advance, clock=sim.clock.now).run(job.id) == "failed"
    detail = rt.jobs.get(job.id).detail
    [posted] = standin.wait_for("/api/chat.postMessage")
    assert posted.json["text"].startswith("Failed:") and detail.split(" ")[0] in posted.json["text"]
    assert detail.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in posted.json["text"]
    assert standin.wait_for("/response/f", 2)[-1].json["text"].startswith("Failed:")
