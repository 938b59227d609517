"""Long-polls of job events through the real `valetkey web`: waiting holds no thread.

Each test starts `valetkey web` as a subprocess on loopback (the Procfile's command) and talks
HTTP to it; bounds are generous: these are correctness tests, not benchmarks.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis as redis_lib
import requests

from bench.watchers import stop_group
from jobs.events import stream_key
from tests.conftest import PASSWORD, free_port

ROOT = Path(__file__).resolve().parent.parent
FLUSH = "/api/v1/environments/staging/redis/cache/flush"


@dataclass
class Web:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def raw(self, path: str, headers: dict[str, str] | None = None, timeout: float = 40) -> tuple[int, dict[str, str], bytes]:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request("GET", path, headers=headers or {})
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            c.close()

    def get(self, path: str, headers: dict[str, str] | None = None, timeout: float = 40) -> tuple[int, dict[str, str], Any]:
        status, head, body = self.raw(path, headers, timeout)
        return status, head, json.loads(body) if body else None


def start_web(environ: dict[str, str], tmp_path: Path, *args: str) -> Web:
    port = free_port()
    log = tmp_path / f"web-{port}.log"
    env = {**os.environ, **environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "valetkey.cli", "web", "--bind", f"127.0.0.1:{port}", *args],
                            cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    web = Web(port, proc, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if web.get("/healthz", timeout=2)[0] == 200:
                return web
        except OSError:
            time.sleep(0.2)
    stop_web(web)
    raise AssertionError(f"valetkey web did not start: {log.read_text()[-2000:]}")


def stop_web(web: Web) -> None:
    stop_group(web.proc, 20)


@pytest.fixture
def web(environ: dict[str, str], tmp_path: Path) -> Iterator[Web]:
    """`valetkey web` as configured by default (2 workers × 16 threads)."""
    w = start_web(environ, tmp_path)
    yield w
    stop_web(w)
    assert "Traceback" not in w.log.read_text(), w.log.read_text()[-3000:]


def new_job(rt: Any, target: str, actor: str = "dev@acme.test") -> str:
    return rt.jobs.create(action="service.restart", environment="staging", target=target, actor=actor,
                          source="api").id


def tip(web: Web, job_id: str, headers: dict[str, str]) -> str:
    status, _, page = web.get(f"/api/v1/jobs/{job_id}/events", headers)
    assert status == 200, page
    return page["next"]


def p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))]


def test_long_poll_returns_new_events_promptly_and_done(web, rt, make_user):
    dev = make_user("dev@acme.test", ("staging", "developer"))
    job = new_job(rt, "orders-api")
    after = tip(web, job, dev)
    got: dict[str, Any] = {}

    def poll(name: str, cursor: str) -> None:
        t0 = time.monotonic()
        status, headers, raw = web.raw(f"/api/v1/jobs/{job}/events?after={cursor}&wait=20",
                                       {**dev, "X-Request-ID": f"req-{name}-0001"})
        got[name] = (status, headers, json.loads(raw), time.monotonic() - t0, raw)

    t = threading.Thread(target=poll, args=("progress", after))
    t.start()
    time.sleep(1.5)  # the poll is waiting now
    appended = time.monotonic()
    eid = rt.events.append(job, "progress", "Stopped 1 of 2 tasks")
    t.join(10)
    status, headers, page, took, _ = got["progress"]
    assert status == 200 and page == {"events": [{"id": eid, "time": page["events"][0]["time"], "type": "progress",
                                                   "message": "Stopped 1 of 2 tasks"}], "next": eid, "done": False}
    assert time.monotonic() - appended < 10 and took >= 1.4  # it waited, and woke on the append (not at 20 s)
    # The response is the Flask app's own: its headers, and the request id the client sent.
    assert headers["x-request-id"] == "req-progress-0001" and headers["cache-control"] == "no-store"
    assert "default-src 'self'" in headers["content-security-policy"]
    # Byte for byte what the view answers for the same cursor.
    again = web.raw(f"/api/v1/jobs/{job}/events?after={after}", dev)
    assert again[2] == got["progress"][4] and again[1]["content-type"] == headers["content-type"]
    # The job ends while a poll waits: the final event comes back with done.
    t = threading.Thread(target=poll, args=("final", eid))
    t.start()
    time.sleep(1.0)
    assert rt.jobs.claim(job) is not None
    rt.jobs.finish(job, "succeeded", "HEALTHY after 3s")
    t.join(10)
    status, _, page, _, _ = got["final"]
    assert status == 200 and [e["type"] for e in page["events"]] == ["succeeded"] and page["done"] is True
    # A finished job never waits.
    t0 = time.monotonic()
    status, _, page = web.get(f"/api/v1/jobs/{job}/events?after={page['next']}&wait=20", dev)
    assert status == 200 and page["events"] == [] and page["done"] is True and time.monotonic() - t0 < 10


def test_long_poll_times_out_with_nothing_new(web, rt, make_user):
    dev = make_user("dev@acme.test", ("staging", "developer"))
    job = new_job(rt, "orders-api")
    after = tip(web, job, dev)
    t0 = time.monotonic()
    status, _, page = web.get(f"/api/v1/jobs/{job}/events?after={after}&wait=2", dev)
    took = time.monotonic() - t0
    assert status == 200 and page == {"events": [], "next": after, "done": False}
    assert 1.9 <= took < 4


def test_refusals_on_the_long_poll_path_are_unchanged(web, rt, make_user):
    dev = make_user("dev@acme.test", ("staging", "developer"))
    qa = make_user("qa@acme.test", ("qa", "developer"))
    job = new_job(rt, "orders-api")
    path = f"/api/v1/jobs/{job}/events?wait=20"
    t0 = time.monotonic()
    status, headers, body = web.get(path)  # anonymous
    assert status == 401 and headers["content-type"].startswith("application/problem+json") and body["status"] == 401
    status, headers, body = web.get(path, qa)  # a job in an environment qa cannot see: it does not exist
    assert status == 404 and headers["content-type"].startswith("application/problem+json")
    assert body["detail"] == f"No job {job!r}."
    status, _, body = web.get("/api/v1/jobs/0123456789abcdef0123456789abcdef/events?wait=20", dev)
    assert status == 404
    status, _, body = web.get(f"/api/v1/jobs/{job}/events?after=yesterday&wait=20", dev)
    assert status == 400 and "after" in json.dumps(body)
    status, _, body = web.get(f"/api/v1/jobs/{job}/events", {"Authorization": "Bearer vk_not-a-token"})
    assert status == 401
    assert time.monotonic() - t0 < 5  # none of them waited


def test_session_cookie_long_poll(web, rt, make_user):
    """A browser's session (login form, CSRF, cookie) works through the front like a token."""
    make_user("dev@acme.test", ("staging", "developer"))
    job = new_job(rt, "orders-api")
    s = requests.Session()
    form = s.get(web.base + "/login", timeout=10)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert form.status_code == 200 and csrf
    r = s.post(web.base + "/login", data={"email": "dev@acme.test", "password": PASSWORD, "next": "/",
                                          "csrf_token": csrf.group(1)}, allow_redirects=False, timeout=10)
    assert r.status_code in (302, 303), r.text[:500]
    after = s.get(f"{web.base}/api/v1/jobs/{job}/events", timeout=10).json()["next"]
    threading.Timer(1.0, lambda: rt.events.append(job, "progress", "hello")).start()
    page = s.get(f"{web.base}/api/v1/jobs/{job}/events?after={after}&wait=10", timeout=15)
    assert page.status_code == 200 and [e["message"] for e in page.json()["events"]] == ["hello"]
    # Signed out, a copy of the cookie stops working at once (the server-side session check).
    copied = dict(s.cookies)
    token = re.search(r'name="csrf_token" value="([^"]+)"', s.get(web.base + "/", timeout=10).text)
    assert token and s.post(web.base + "/logout", data={"csrf_token": token.group(1)}, allow_redirects=False,
                            timeout=10).status_code in (302, 303)
    r = requests.get(f"{web.base}/api/v1/jobs/{job}/events?wait=5", cookies=copied, timeout=10)
    assert r.status_code == 401


def test_200_long_polls_leave_healthz_and_actions_fast(web, rt, make_user, target_redis):
    dev = make_user("dev@acme.test", ("staging", "developer"))
    target_redis.set("session:1", "x")
    jobs = [new_job(rt, f"svc-{i}") for i in range(20)]
    cursors = {j: tip(web, j, dev) for j in jobs}
    answered: list[tuple[str, float, dict[str, Any]]] = []
    lock = threading.Lock()

    def poll(i: int) -> None:
        job = jobs[i % len(jobs)]
        status, _, page = web.get(f"/api/v1/jobs/{job}/events?after={cursors[job]}&wait=25", dev, timeout=60)
        assert status == 200, page
        with lock:
            answered.append((job, time.monotonic(), page))

    pool = ThreadPoolExecutor(200)
    try:
        futures = [pool.submit(poll, i) for i in range(200)]
        time.sleep(3)  # all 200 are waiting now
        assert not answered
        health, actions = [], []
        for _ in range(40):
            t0 = time.monotonic()
            assert web.get("/healthz")[0] == 200
            health.append(time.monotonic() - t0)
        for _ in range(5):
            t0 = time.monotonic()
            r = requests.post(web.base + FLUSH, headers=dev, json={"pattern": "session:*", "dry_run": True}, timeout=10)
            actions.append(time.monotonic() - t0)
            assert r.status_code == 200 and r.json()["matched"] == 1, r.text
        assert p99(health) < 1.0, health
        assert max(actions) < 1.0, actions
        # One job moves: its 10 watchers answer within about a second, the other 190 keep waiting.
        moved = jobs[0]
        t_append = time.monotonic()
        rt.events.append(moved, "progress", "Stopped 1 of 2 tasks")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(answered) < 10:
            time.sleep(0.05)
        with lock:
            woke = list(answered)
        assert len(woke) == 10 and {j for j, _, _ in woke} == {moved}
        assert max(t for _, t, _ in woke) - t_append < 1.5
        assert all(p["events"][0]["message"] == "Stopped 1 of 2 tasks" for _, _, p in woke)
        # Then every job moves and all polls answer.
        for j in jobs[1:]:
            rt.events.append(j, "progress", "step")
        for f in futures:
            f.result(timeout=15)
        assert len(answered) == 200
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def test_client_disconnect_frees_its_wait(environ, rt, make_user, tmp_path, redis_url):
    dev = make_user("dev@acme.test", ("staging", "developer"))
    gone_job, other_job = new_job(rt, "orders-api"), new_job(rt, "payments-api")
    web = start_web(environ, tmp_path, "--workers", "1")
    try:
        after = tip(web, gone_job, dev)
        c = http.client.HTTPConnection("127.0.0.1", web.port, timeout=30)
        c.request("GET", f"/api/v1/jobs/{gone_job}/events?after={after}&wait=25", headers=dev)
        time.sleep(1.5)  # waiting on the hub now
        c.close()  # the page is closed
        time.sleep(0.5)
        # The next read of the process's one XREAD (started by another poll) no longer names the
        # closed page's stream.
        mon = redis_lib.Redis.from_url(redis_url)
        reads: list[str] = []
        with mon.monitor() as m:
            other = tip(web, other_job, dev)
            t = threading.Thread(target=web.get, args=(f"/api/v1/jobs/{other_job}/events?after={other}&wait=3", dev))
            t.start()
            deadline = time.monotonic() + 10
            for cmd in m.listen():
                if "XREAD" in cmd["command"].upper() and stream_key(other_job) in cmd["command"]:
                    reads.append(cmd["command"])
                    break
                if time.monotonic() > deadline:
                    break
            t.join(10)
        mon.close()
        assert reads and stream_key(gone_job) not in reads[0], reads
        # And its job's stream moving now wakes nobody: nothing is answered to a closed socket, no error.
        rt.events.append(gone_job, "progress", "late")
        time.sleep(0.5)
        assert web.get("/healthz")[0] == 200
    finally:
        stop_web(web)
    out = web.log.read_text()
    assert web.proc.returncode == 0 and "Traceback" not in out, out[-3000:]


def test_sigterm_answers_waiting_polls_and_stops(environ, rt, make_user, tmp_path):
    dev = make_user("dev@acme.test", ("staging", "developer"))
    job = new_job(rt, "orders-api")
    web = start_web(environ, tmp_path)
    after = tip(web, job, dev)
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(web.get(f"/api/v1/jobs/{job}/events?after={after}&wait=25", dev)))
    t.start()
    time.sleep(1.5)
    t0 = time.monotonic()
    os.killpg(web.proc.pid, signal.SIGTERM)
    assert web.proc.wait(15) == 0
    t.join(5)
    # The waiting poll was answered (nothing new, not done): the page simply polls again elsewhere.
    assert got and got[0][0] == 200 and got[0][2] == {"events": [], "next": after, "done": False}
    assert time.monotonic() - t0 < 8
    assert "Traceback" not in web.log.read_text()


def test_everything_else_passes_through_the_front_unchanged(web, rt, make_user, client):
    dev = make_user("dev@acme.test", ("staging", "developer"))
    status, headers, body = web.get("/readyz", {"X-Request-ID": "probe-0000000001"})
    assert status == 200 and body["checks"] == {"redis": "ok", "database": "ok"}
    assert headers["x-request-id"] == "probe-0000000001" and headers["x-frame-options"] == "DENY"
    status, headers, raw = web.raw("/static/app.js")
    assert status == 200 and raw == (ROOT / "web/static/app.js").read_bytes()
    assert headers["content-type"].startswith("text/javascript")
    # A signed webhook's raw body reaches the app: a wrong signature is refused as before.
    r = requests.post(web.base + "/hooks/redeploy", data=b'{"environment": "staging", "service": "x"}',
                      headers={"Content-Type": "application/json", "X-Hub-Signature-256": "sha256=" + "0" * 64},
                      timeout=10)
    assert r.status_code == 401 and r.headers["Content-Type"].startswith("application/problem+json")
    big = {**dev, "Content-Type": "application/json"}
    r = requests.post(web.base + FLUSH, headers=big, data=b"x" * (2 * 1024 * 1024), timeout=10)
    assert r.status_code == 413 == client.post(FLUSH, headers=big, data=b"x" * (2 * 1024 * 1024)).status_code
    # A long query (a log tail's cursor and filter) is not cut off by the server.
    status, _, _ = web.get("/healthz?" + "q=" + "a" * 8000)
    assert status == 200
    # HEAD on a long-poll does not wait on a thread either, and answers like GET without a body.
    job = new_job(rt, "orders-api")
    c = http.client.HTTPConnection("127.0.0.1", web.port, timeout=10)
    c.request("HEAD", f"/api/v1/jobs/{job}/events", headers=dev)
    r2 = c.getresponse()
    assert r2.status == 200 and r2.read() == b""
    c.close()


def test_server_sent_events_on_the_same_data(web, rt, make_user):
    dev = make_user("dev@acme.test", ("staging", "developer"))
    job = new_job(rt, "orders-api")
    sse = {**dev, "Accept": "text/event-stream"}
    # Refusals are the view's own, before any stream starts.
    r = requests.get(f"{web.base}/api/v1/jobs/{job}/events", headers={"Accept": "text/event-stream"}, timeout=10)
    assert r.status_code == 401 and r.headers["Content-Type"].startswith("application/problem+json")
    qa = make_user("qa@acme.test", ("qa", "viewer"))
    r = requests.get(f"{web.base}/api/v1/jobs/{job}/events", headers={**qa, "Accept": "text/event-stream"}, timeout=10)
    assert r.status_code == 404

    r = requests.get(f"{web.base}/api/v1/jobs/{job}/events", headers=sse, stream=True, timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    assert r.headers["Cache-Control"] == "no-store" and r.headers["X-Request-ID"]
    lines = r.iter_lines(decode_unicode=True)

    def next_message() -> dict[str, str]:
        msg: dict[str, str] = {}
        for line in lines:
            if not line:
                if msg:
                    return msg
                continue
            if line.startswith(":"):
                continue
            k, _, v = line.partition(": ")
            msg[k] = v
        return msg

    first = next_message()
    assert json.loads(first["data"])["type"] == "queued" and first["id"] == json.loads(first["data"])["id"]
    threading.Timer(0.5, lambda: rt.events.append(job, "progress", "Stopped 1 of 2 tasks")).start()
    t0 = time.monotonic()
    progress = next_message()
    assert json.loads(progress["data"])["message"] == "Stopped 1 of 2 tasks" and time.monotonic() - t0 < 8
    assert rt.jobs.claim(job) is not None
    rt.jobs.finish(job, "succeeded", "HEALTHY after 3s")
    final = next_message()
    assert json.loads(final["data"])["type"] == "succeeded"
    done = next_message()
    assert done["event"] == "done" and json.loads(done["data"]) == {"next": final["id"]}
    assert next_message() == {}  # the stream ended
    r.close()
    # A reconnecting EventSource resumes after Last-Event-ID: only what it missed, then done.
    r = requests.get(f"{web.base}/api/v1/jobs/{job}/events", headers={**sse, "Last-Event-ID": progress["id"]},
                     timeout=10)
    assert [line for line in r.text.splitlines() if line.startswith("id: ")] == [f"id: {final['id']}"]
    assert "event: done" in r.text
