"""Service logs: where they are found, history, filter, tail without duplicates, throttling, access, audit."""
from __future__ import annotations

import json
import re
import time
from typing import Any

import boto3
import pytest
import redis as redis_lib
from botocore.stub import ANY, Stubber

from cloud.logs import (
    MAX_MARKS,
    CursorCodec,
    LogReader,
    LogSource,
    LogsThrottled,
    SharedCache,
)
from scope.errors import UpstreamError, ValidationFailed
from tests.conftest import (
    PASSWORD,
    REGION,
    SECRET_VALUE,
    audit_events,
    boto,
    seed_cluster,
)

PROBLEM = "application/problem+json"
GROUP = "/ecs/staging-orders-api"
URL = "/api/v1/environments/staging/services/orders-api/logs"
SOURCE = LogSource(group=GROUP, stream_prefix="app/app/", container="app")


def now_ms() -> int:
    return int(time.time() * 1000)


def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def put(stream: str, *events: tuple[int, str], group: str = GROUP) -> None:
    """Write events (timestamp ms, message) to a stream of moto's CloudWatch Logs."""
    logs = boto("logs")
    if not logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]:
        logs.create_log_group(logGroupName=group)
    if not logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=stream)["logStreams"]:
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
    logs.put_log_events(logGroupName=group, logStreamName=stream,
                        logEvents=[{"timestamp": ts, "message": m} for ts, m in events])


def messages(body: dict[str, Any]) -> list[str]:
    return [e["message"] for e in body["events"]]


def assert_problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.get_data(as_text=True)
    assert r.headers["Content-Type"].startswith(PROBLEM)
    body = r.get_json(force=True)
    assert body["status"] == status and body["title"] and body["detail"]
    assert "Traceback" not in r.get_data(as_text=True)
    return body


@pytest.fixture
def seeded(aws: str) -> None:
    seed_cluster("stg", ["orders-api", "payments-api"], family_prefix="staging")
    seed_cluster("qa", ["search-api"])


@pytest.fixture
def viewer(make_user: Any) -> dict[str, str]:
    return make_user("viewer@acme.test", ("staging", "viewer"))


def register_service(name: str, log_configuration: dict[str, Any] | None) -> None:
    """A service in the staging cluster whose task definition logs as given."""
    ecs = boto("ecs")
    container: dict[str, Any] = {"name": "app", "image": "nginx:1", "memory": 256, "essential": True,
                                 "environment": [{"name": "API_KEY", "value": SECRET_VALUE}]}
    if log_configuration is not None:
        container["logConfiguration"] = log_configuration
    ecs.register_task_definition(family=f"staging-{name}", containerDefinitions=[container])
    ecs.create_service(cluster="stg", serviceName=name, taskDefinition=f"staging-{name}", desiredCount=1)


# ---- history --------------------------------------------------------------------
def test_history_is_oldest_first_across_streams(client, viewer, seeded) -> None:
    t = now_ms() - 60_000
    put("app/app/task-a", (t, "GET /orders 200"), (t + 2000, "GET /orders/7 404"))
    put("app/app/task-b", (t + 1000, "POST /orders 201"))
    r = client.get(URL, headers=viewer)
    assert r.status_code == 200, r.get_data(as_text=True)
    body = r.get_json()
    assert messages(body) == ["GET /orders 200", "POST /orders 201", "GET /orders/7 404"]
    assert [e["stream"] for e in body["events"]] == ["app/app/task-a", "app/app/task-b", "app/app/task-a"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["events"][0]["timestamp"])
    assert body["cursor"] and body["more"] is False
    assert body["log_group"] == GROUP and body["stream_prefix"] == "app/app/"
    assert SECRET_VALUE not in r.get_data(as_text=True)


def test_empty_parameters_mean_not_given(client, viewer, seeded) -> None:
    put("app/app/task-a", (now_ms() - 5000, "GET /health 200"))
    r = client.get(URL + "?since=&until=&filter=&limit=&cursor=", headers=viewer)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert messages(r.get_json()) == ["GET /health 200"]


def test_since_and_until_select_the_range(client, viewer, seeded) -> None:
    t = now_ms()
    put("app/app/a", (t - 3 * 3600_000, "three hours ago"), (t - 90 * 60_000, "ninety minutes ago"),
        (t - 60_000, "a minute ago"))
    assert messages(client.get(URL, headers=viewer).get_json()) == ["a minute ago"]  # default: the last 15 min
    body = client.get(URL, headers=viewer, query_string={"since": "2h", "until": "1h"}).get_json()
    assert messages(body) == ["ninety minutes ago"]
    body = client.get(URL, headers=viewer, query_string={"since": iso(t - 4 * 3600_000), "until": "1h"}).get_json()
    assert messages(body) == ["three hours ago", "ninety minutes ago"]


def test_filter_pattern(client, viewer, seeded) -> None:
    t = now_ms() - 30_000
    put("app/app/a", (t, "GET /orders 200"), (t + 1, "ERROR payment gateway timeout order=A-1042"),
        (t + 2, "GET /health 200"), (t + 3, "ERROR db pool exhausted"))
    body = client.get(URL, headers=viewer, query_string={"filter": "ERROR"}).get_json()
    assert messages(body) == ["ERROR payment gateway timeout order=A-1042", "ERROR db pool exhausted"]
    body = client.get(URL, headers=viewer, query_string={"filter": '"payment gateway"'}).get_json()
    assert messages(body) == ["ERROR payment gateway timeout order=A-1042"]


def test_empty_ranges(client, viewer, seeded) -> None:
    put("app/app/a", (now_ms() - 60_000, "recent"))
    # A closed range in the past without events: nothing, and nothing more will come.
    body = client.get(URL, headers=viewer, query_string={"since": "3h", "until": "2h"}).get_json()
    assert body["events"] == [] and body["cursor"] is None and body["more"] is False
    # An open range without events yet: nothing, but a cursor to tail with.
    body = client.get(URL, headers=viewer, query_string={"since": "30s"}).get_json()
    assert body["events"] == [] and body["cursor"]


def test_missing_log_group_is_an_empty_page_with_a_notice(client, viewer, seeded) -> None:
    body = client.get(URL, headers=viewer).get_json()
    assert body["events"] == [] and body["cursor"]
    assert "does not exist yet" in body["notice"]


def test_paging_with_limit_returns_each_event_once(client, viewer, seeded) -> None:
    t = now_ms() - 120_000
    put("app/app/a", *[(t + i * 1000, f"line {i}") for i in range(5)])
    r1 = client.get(URL, headers=viewer, query_string={"limit": 2}).get_json()
    assert messages(r1) == ["line 0", "line 1"] and r1["more"] is True
    r2 = client.get(URL, headers=viewer, query_string={"limit": 2, "cursor": r1["cursor"]}).get_json()
    assert messages(r2) == ["line 2", "line 3"] and r2["more"] is True
    r3 = client.get(URL, headers=viewer, query_string={"limit": 2, "cursor": r2["cursor"]}).get_json()
    assert messages(r3) == ["line 4"] and r3["more"] is False


def test_closed_range_ends_with_a_null_cursor(client, viewer, seeded) -> None:
    t = now_ms()
    put("app/app/a", *[(t - 3 * 3600_000 + i, f"old {i}") for i in range(3)])
    args = {"since": iso(t - 4 * 3600_000), "until": iso(t - 2 * 3600_000), "limit": 2}
    r1 = client.get(URL, headers=viewer, query_string=args).get_json()
    assert messages(r1) == ["old 0", "old 1"] and r1["cursor"]
    r2 = client.get(URL, headers=viewer, query_string={**args, "cursor": r1["cursor"]}).get_json()
    assert messages(r2) == ["old 2"] and r2["cursor"] is None


# ---- live tail ------------------------------------------------------------------
def test_tail_returns_only_new_events_none_twice(client, viewer, seeded) -> None:
    t = now_ms() - 10_000
    put("app/app/a", (t, "one"), (t + 1, "two"), (t + 2, "three"))
    first = client.get(URL, headers=viewer).get_json()
    assert messages(first) == ["one", "two", "three"]
    again = client.get(URL, headers=viewer, query_string={"cursor": first["cursor"]}).get_json()
    assert again["events"] == []
    put("app/app/a", (t + 3, "four"), (t + 4, "five"))
    more = client.get(URL, headers=viewer, query_string={"cursor": again["cursor"]}).get_json()
    assert messages(more) == ["four", "five"]
    last = client.get(URL, headers=viewer, query_string={"cursor": more["cursor"]}).get_json()
    assert last["events"] == []


def test_tail_keeps_a_late_batch_of_another_task(aws) -> None:
    """awslogs sends each task's stream in batches: task B's older line may arrive after task A's newer one."""
    put("app/app/task-a", (now_ms() - 3000, "A newer"))
    reader = LogReader(boto("logs"))
    page = reader.read(SOURCE, since=now_ms() - 60_000, until=None, pattern="", limit=100)
    assert [e["message"] for e in page.events] == ["A newer"]
    put("app/app/task-b", (now_ms() - 8000, "B older, arrived later"))
    page = reader.read(SOURCE, since=0, until=None, pattern="", limit=100, position=page.position)
    assert [e["message"] for e in page.events] == ["B older, arrived later"]
    page = reader.read(SOURCE, since=0, until=None, pattern="", limit=100, position=page.position)
    assert page.events == []


def test_a_burst_at_one_timestamp_pages_without_loss_or_repeat(aws) -> None:
    t = now_ms() - 5000
    put("app/app/a", *[(t, f"stack frame {i}") for i in range(5)])
    reader, seen, pos = LogReader(boto("logs")), [], None
    for _ in range(4):
        page = reader.read(SOURCE, since=t - 1000, until=None, pattern="", limit=2, position=pos)
        seen += [e["message"] for e in page.events]
        pos = page.position
    assert seen == [f"stack frame {i}" for i in range(5)]


def test_cursor_stays_small_with_many_streams(aws) -> None:
    t = now_ms() - 10_000
    for i in range(MAX_MARKS + 12):
        put(f"app/app/task-{i:03}", (t + i, f"from task {i}"))
    reader = LogReader(boto("logs"))
    page = reader.read(SOURCE, since=t - 1000, until=None, pattern="", limit=1000)
    assert len(page.events) == MAX_MARKS + 12
    assert page.position is not None and len(page.position.marks) <= MAX_MARKS
    cursor = CursorCodec("k").encode(page.position, "b")
    assert len(cursor) < 2000  # stays far below URL length limits
    again = reader.read(SOURCE, since=0, until=None, pattern="", limit=1000,
                        position=CursorCodec("k").decode(cursor, "b"))
    assert again.events == []


# ---- where the logs are ------------------------------------------------------------
def test_another_log_driver_gets_a_clear_message(client, viewer, seeded) -> None:
    register_service("legacy-api", {"logDriver": "splunk", "options": {"splunk-url": "https://splunk.example"}})
    body = assert_problem(client.get("/api/v1/environments/staging/services/legacy-api/logs", headers=viewer), 422)
    assert body["detail"] == "legacy-api logs with the 'splunk' driver; Valet Key can only read awslogs."


def test_no_log_configuration_or_no_stream_prefix_is_a_clear_message(client, viewer, seeded) -> None:
    register_service("quiet-api", None)
    body = assert_problem(client.get("/api/v1/environments/staging/services/quiet-api/logs", headers=viewer), 422)
    assert "no log configuration" in body["detail"]
    register_service("plain-api", {"logDriver": "awslogs", "options": {"awslogs-group": "/ecs/shared",
                                                                      "awslogs-region": REGION}})
    body = assert_problem(client.get("/api/v1/environments/staging/services/plain-api/logs", headers=viewer), 422)
    assert "awslogs-stream-prefix" in body["detail"]
    assert SECRET_VALUE not in json.dumps(body)


# ---- who may read -------------------------------------------------------------------
def test_viewer_and_auditor_may_read(client, make_user, seeded) -> None:
    put("app/app/a", (now_ms() - 5000, "hello"))
    for headers in (make_user("v@acme.test", ("staging", "viewer")), make_user("aud@acme.test", ("*", "auditor"))):
        r = client.get(URL, headers=headers)
        assert r.status_code == 200 and messages(r.get_json()) == ["hello"]


def test_no_role_is_404_and_audited_as_denied(client, rt, make_user, seeded) -> None:
    qa_only = make_user("qa@acme.test", ("qa", "viewer"))
    assert_problem(client.get(URL, headers=qa_only), 404)
    denied = [e for e in audit_events(rt) if e["action"] == "logs.view"]
    assert [(e["outcome"], e["actor"], e["environment"]) for e in denied] == [("denied", "qa@acme.test", "staging")]


def test_unauthenticated_is_401(client, seeded) -> None:
    assert_problem(client.get(URL), 401)


def test_another_environments_service_is_404(client, rt, viewer, seeded) -> None:
    body = assert_problem(client.get("/api/v1/environments/staging/services/search-api/logs", headers=viewer), 404)
    assert "search-api" in body["detail"]
    assert_problem(client.get("/api/v1/environments/staging/services/nope/logs", headers=viewer), 404)
    denied = [e for e in audit_events(rt) if e["action"] == "logs.view"]
    assert [(e["outcome"], e["target"]) for e in denied] == [("denied", "search-api"), ("denied", "nope")]


# ---- audit: once per viewing session ------------------------------------------------
def test_viewing_is_audited_once_per_session(client, rt, make_user, viewer, seeded) -> None:
    put("app/app/a", (now_ms() - 5000, "hello"))
    first = client.get(URL, headers=viewer).get_json()
    client.get(URL, headers=viewer, query_string={"cursor": first["cursor"]})
    client.get(URL, headers=viewer, query_string={"filter": "hello"})
    views = [e for e in audit_events(rt) if e["action"] == "logs.view"]
    assert len(views) == 1
    v = views[0]
    assert (v["actor"], v["source"], v["environment"], v["target"], v["outcome"]) == \
        ("viewer@acme.test", "api", "staging", "orders-api", "succeeded")
    assert v["detail"] == f"log group {GROUP}"
    # Another service and another person are sessions of their own.
    client.get("/api/v1/environments/staging/services/payments-api/logs", headers=viewer)
    client.get(URL, headers=make_user("other@acme.test", ("staging", "developer")))
    views = [(e["actor"], e["target"]) for e in audit_events(rt) if e["action"] == "logs.view"]
    assert views == [("viewer@acme.test", "orders-api"), ("viewer@acme.test", "payments-api"),
                     ("other@acme.test", "orders-api")]


def test_a_failed_read_is_not_audited_as_a_view(client, rt, viewer, seeded) -> None:
    assert_problem(client.get(URL, headers=viewer, query_string={"limit": 0}), 400)
    assert [e for e in audit_events(rt) if e["action"] == "logs.view"] == []


# ---- bad input -------------------------------------------------------------------------
@pytest.mark.parametrize("args,field", [
    ({"since": "yesterday"}, "since"),
    ({"since": "15x"}, "since"),
    ({"until": "2026-13-45T99:00:00Z"}, "until"),
    ({"since": "1h", "until": "2h"}, "until"),
    ({"since": "99999999d"}, "since"),
    ({"limit": "0"}, "limit"),
    ({"limit": "1001"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"filter": "x" * 1025}, "filter"),
    ({"filter": "ERROR\nWARN"}, "filter"),
    ({"cursor": "garbage"}, "cursor"),
    ({"cursor": "x" * 5000}, "cursor"),
])
def test_bad_parameters_are_400_naming_the_field(client, viewer, seeded, args, field) -> None:
    body = assert_problem(client.get(URL, headers=viewer, query_string=args), 400)
    assert field in body["errors"], body


def test_tampered_or_foreign_cursors_are_400(client, viewer, seeded) -> None:
    put("app/app/a", (now_ms() - 5000, "hello"))
    cursor = client.get(URL, headers=viewer).get_json()["cursor"]
    payload, sig = cursor.split(".")
    forged = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1] + "." + sig
    body = assert_problem(client.get(URL, headers=viewer, query_string={"cursor": forged}), 400)
    assert "cursor" in body["errors"]
    other = client.get("/api/v1/environments/staging/services/payments-api/logs", headers=viewer,
                       query_string={"cursor": cursor})
    assert "another service" in assert_problem(other, 400)["errors"]["cursor"][0]
    refiltered = client.get(URL, headers=viewer, query_string={"cursor": cursor, "filter": "ERROR"})
    assert "cursor" in assert_problem(refiltered, 400)["errors"]


# ---- throttling and AWS errors (botocore Stubber) ---------------------------------------
def stubbed_logs() -> tuple[Any, Stubber]:
    client = boto3.client("logs", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    return client, Stubber(client)


def expected(**extra: Any) -> dict[str, Any]:
    return {"logGroupName": GROUP, "logStreamNamePrefix": "app/app/", "startTime": ANY, "limit": ANY,
            "interleaved": True, **extra}


def aws_event(ts: int, message: str, stream: str = "app/app/a") -> dict[str, Any]:
    return {"timestamp": ts, "message": message, "logStreamName": stream, "eventId": f"{ts}-{message}",
            "ingestionTime": ts}


def test_throttling_is_retried_then_succeeds() -> None:
    client, stub = stubbed_logs()
    t = now_ms() - 5000
    stub.add_client_error("filter_log_events", service_error_code="ThrottlingException", http_status_code=400)
    stub.add_response("filter_log_events", {"events": [aws_event(t, "after the throttle")]},
                      expected(filterPattern="ERROR"))
    sleeps: list[float] = []
    with stub:
        page = LogReader(client, sleep=sleeps.append).read(SOURCE, since=t - 1000, until=None, pattern="ERROR",
                                                           limit=10)
        stub.assert_no_pending_responses()
    assert [e["message"] for e in page.events] == ["after the throttle"]
    assert len(sleeps) == 1 and 0 < sleeps[0] <= 0.25


def test_persistent_throttling_gives_up_after_bounded_retries() -> None:
    client, stub = stubbed_logs()
    for _ in range(3):
        stub.add_client_error("filter_log_events", service_error_code="ThrottlingException", http_status_code=400)
    sleeps: list[float] = []
    with stub, pytest.raises(LogsThrottled) as e:
        LogReader(client, sleep=sleeps.append).read(SOURCE, since=now_ms() - 60_000, until=None, pattern="",
                                                    limit=10)
    stub.assert_no_pending_responses()
    assert len(sleeps) == 2 and sleeps[1] > sleeps[0] / 2  # backoff grows
    assert e.value.status == 503 and e.value.retry_after > 0


def test_persistent_throttling_is_a_clean_503_with_retry_after(client, rt, viewer, seeded) -> None:
    logs, stub = stubbed_logs()
    rt.aws._clients[("staging", "logs")] = logs  # noqa: SLF001 - the runtime's cached client, stubbed
    for _ in range(3):
        stub.add_client_error("filter_log_events", service_error_code="ThrottlingException", http_status_code=400)
    args = {"since": iso(now_ms() - 600_000)}
    with stub:
        r = client.get(URL, headers=viewer, query_string=args)
        body = assert_problem(r, 503)
        assert int(r.headers["Retry-After"]) > 0
        assert "throttling" in body["detail"]
        # The throttled answer is shared for a moment: an identical poll does not call AWS again.
        assert_problem(client.get(URL, headers=viewer, query_string=args), 503)
        stub.assert_no_pending_responses()
    assert [e for e in audit_events(rt) if e["action"] == "logs.view"] == []


def test_a_rejected_filter_pattern_is_400_naming_filter() -> None:
    client, stub = stubbed_logs()
    stub.add_client_error("filter_log_events", service_error_code="InvalidParameterException",
                          service_message="Invalid filter pattern", http_status_code=400)
    with stub, pytest.raises(ValidationFailed) as e:
        LogReader(client).read(SOURCE, since=now_ms() - 60_000, until=None, pattern="{ $.x = ", limit=10)
    assert "filter" in e.value.fields


def test_access_denied_is_a_safe_upstream_error() -> None:
    client, stub = stubbed_logs()
    stub.add_client_error("filter_log_events", service_error_code="AccessDeniedException",
                          service_message="User arn:aws:sts::1:assumed-role/x is not authorized", http_status_code=400)
    with stub, pytest.raises(UpstreamError) as e:
        LogReader(client).read(SOURCE, since=now_ms() - 60_000, until=None, pattern="", limit=10)
    assert "AccessDenied" in e.value.detail and "arn:" not in e.value.detail


def test_an_interrupted_scan_continues_with_its_token() -> None:
    """CloudWatch may answer empty pages with a nextToken while it searches: the cursor keeps the token."""
    client, stub = stubbed_logs()
    t = now_ms() - 600_000
    for i in range(4):  # MAX_CALLS pages still searching
        stub.add_response("filter_log_events", {"events": [], "nextToken": f"tok{i}"},
                          expected(filterPattern="needle", **({"nextToken": f"tok{i - 1}"} if i else {})))
    stub.add_response("filter_log_events", {"events": [aws_event(t + 5, "found it")]},
                      expected(filterPattern="needle", startTime=t, nextToken="tok3"))
    reader = LogReader(client)
    with stub:
        first = reader.read(SOURCE, since=t, until=None, pattern="needle", limit=10)
        assert first.events == [] and first.more is True
        assert first.position is not None and first.position.token == "tok3"
        codec = CursorCodec("k")
        pos = codec.decode(codec.encode(first.position, "b"), "b")
        second = reader.read(SOURCE, since=t, until=None, pattern="needle", limit=10, position=pos)
        stub.assert_no_pending_responses()
    assert [e["message"] for e in second.events] == ["found it"] and second.more is False


# ---- sharing identical calls ----------------------------------------------------------
@pytest.fixture
def r(redis_url: str) -> Any:
    client = redis_lib.Redis.from_url(redis_url)
    yield client
    client.close()


def test_identical_reads_share_one_aws_call(r) -> None:
    client, stub = stubbed_logs()
    t = now_ms() - 5000
    stub.add_response("filter_log_events", {"events": [aws_event(t, "once")]}, expected())
    reader = LogReader(client, SharedCache(r))
    with stub:
        a = reader.read(SOURCE, since=t - 1000, until=None, pattern="", limit=10)
        b = reader.read(SOURCE, since=t - 1000, until=None, pattern="", limit=10)
        stub.assert_no_pending_responses()  # a second AWS call would have found no stubbed answer
    assert [e["message"] for e in a.events] == [e["message"] for e in b.events] == ["once"]


def test_a_waiting_caller_takes_the_fillers_answer(r) -> None:
    """While another process fills the cache (holds the lock), a caller waits for its answer instead of calling AWS."""
    def fill_meanwhile(_: float) -> None:
        r.set(cache._key("k"), json.dumps({"from": "the filler"}), px=2000)  # noqa: SLF001

    cache = SharedCache(r, sleep=fill_meanwhile)
    lock = r.lock(cache._key("k") + ":fill", timeout=10)  # noqa: SLF001 - the filler's lock
    assert lock.acquire(blocking=False)

    def compute() -> dict[str, Any]:
        raise AssertionError("the waiting caller must not compute")

    assert cache.get_or_compute("k", 2000, compute) == {"from": "the filler"}
    lock.release()


# ---- the page ------------------------------------------------------------------------
def _login(client: Any, email: str) -> None:
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token,
                                       "next": "/"}).status_code == 302


def test_logs_page_and_link(client, viewer, seeded) -> None:
    _login(client, "viewer@acme.test")
    env_page = client.get("/environments/staging").get_data(as_text=True)
    assert 'href="/environments/staging/services/orders-api/logs"' in env_page
    r = client.get("/environments/staging/services/orders-api/logs")
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    assert '<script src="/static/logs.js" defer></script>' in html
    assert 'data-api="/api/v1/environments/staging/services/orders-api/logs"' in html
    assert GROUP in html and 'id="log-follow"' in html
    assert "<script>" not in html  # the CSP forbids inline scripts


def test_logs_page_refusals(client, make_user, seeded) -> None:
    make_user("qa@acme.test", ("qa", "viewer"))
    _login(client, "qa@acme.test")
    html = {"Accept": "text/html"}
    assert client.get("/environments/staging/services/orders-api/logs", headers=html).status_code == 404  # no role
    assert client.get("/environments/qa/services/orders-api/logs", headers=html).status_code == 404  # no such service


def test_logs_page_of_another_driver_says_why(client, viewer, seeded) -> None:
    register_service("legacy-api", {"logDriver": "splunk", "options": {"splunk-url": "https://splunk.example"}})
    _login(client, "viewer@acme.test")
    r = client.get("/environments/staging/services/legacy-api/logs")
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    assert "logs with the &#39;splunk&#39; driver" in html and 'id="log-view"' not in html
