"""Watchers: many open job pages long-polling one ``valetkey web``, while a prober times /healthz and an action.

    cd /work/main && .venv/bin/python -m bench.watchers [--n 100 1000] [--jobs 50] [--seconds 30]

For each N (default 100, then 1,000) it starts ``valetkey web`` exactly as ``valetkey web`` runs by
default (2 worker processes × 16 threads; the Procfile's command), and:

- N clients (asyncio, one keep-alive connection each, in a process of their own) long-poll
  ``GET /api/v1/jobs/{id}/events?after=<next>&wait=25`` with an API token, spread over ``--jobs``
  running jobs, each re-polling at once with the ``next`` it got, like the job page does;
- an appender adds a progress event to each job every ``--event-interval`` seconds (staggered),
  as a running restart does, so watchers wake, answer and re-poll during the run;
- a prober (this process) times ``GET /healthz`` every 50 ms and a flush dry run
  (``POST .../redis/cache/flush {"pattern": "session:*", "dry_run": true}``) every 250 ms for
  ``--seconds`` once every client is waiting. The same prober also runs for a few seconds with no
  watchers first: the "idle" figures, measured in the same run, that the loaded ones compare to.

Per N it prints the details and one line

    watchers: n=<N> healthz_p99=<s> action_p99=<s> poll_errors=<k>

(the LAST line is the largest N). poll_errors counts polls that did not end in a 200 with a body
(timeouts, resets, non-200) — a poll cancelled when the run ends is not one. ``delivery`` is the
time from an event's append (its ``time``) to a watcher receiving it. ``--compare-gthread`` also
runs the same load against the former configuration (gunicorn gthread, 2 × 16, the WSGI app, where
every waiting poll holds a thread) for contrast.

Loopback only; bounded (each N takes about ``--seconds`` + 30 s); raises this process's open-file
limit to its hard limit (the server inherits it). Redis: VALETKEY_BENCH_REDIS_URL (default
redis://127.0.0.1:6379/10, and the next database as the flush target) — both must be empty or
earlier bench data, and are flushed before and after. A temporary SQLite database.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.client
import json
import multiprocessing as mp
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("VALETKEY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
DEV = "dev@bench.test"
FLUSH = "/api/v1/environments/staging/redis/cache/flush"
TOML = """
[environments.staging]
region = "us-east-1"
cluster = "staging"

[environments.staging.redis.cache]
url_env = "BENCH_CACHE_REDIS_URL"
max_keys = 100000
"""


def target_url() -> str:
    base, _, db = REDIS_URL.rpartition("/")
    return f"{base}/{int(db) + 1}"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


# ---- setup -----------------------------------------------------------------------------------------
def environ(workdir: Path) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("VALETKEY_")},
            "VALETKEY_DATABASE_URL": f"sqlite:///{workdir / 'valetkey.db'}",
            "VALETKEY_REDIS_URL": REDIS_URL,
            "VALETKEY_ENVIRONMENTS": str(workdir / "environments.toml"),
            "VALETKEY_SECRET_KEY": "bench-watchers-secret-key-0123456789",
            "BENCH_CACHE_REDIS_URL": target_url()}


def flush_redis() -> None:
    import redis

    for url in (REDIS_URL, target_url()):
        r = redis.Redis.from_url(url)
        keys = r.dbsize()
        if keys and not r.keys("valetkey:*") and not r.keys("dramatiq:*") and not r.keys("session:*"):
            raise SystemExit(f"{url} holds {keys} keys that are not the bench's: point VALETKEY_BENCH_REDIS_URL "
                             "at an empty database")
        r.flushdb()
        r.close()


def seed(env: dict[str, str], jobs: int) -> tuple[str, list[str]]:
    """A developer with a token, ``jobs`` running jobs, 50 keys to count in the flush target."""
    import redis

    from scope.migrate import upgrade
    from scope.settings import Settings
    from wiring.runtime import Runtime

    rt = Runtime.from_settings(Settings.from_env(env))
    upgrade(rt.engine)
    rt.users.add_user(DEV, "Bench Dev", None)
    rt.users.grant(DEV, "staging", "developer", rt.catalog)
    _, token = rt.users.create_token(DEV, "bench")
    ids = []
    for i in range(jobs):
        job = rt.jobs.create(action="service.restart", environment="staging", target=f"svc-{i}", actor=DEV,
                             source="api")
        rt.jobs.claim(job.id)
        ids.append(job.id)
    rt.close()
    target = redis.Redis.from_url(target_url())
    target.mset({f"session:{i}": "x" for i in range(50)})
    target.close()
    return token, ids


class Web:
    def __init__(self, env: dict[str, str], workdir: Path, gthread: bool = False) -> None:
        self.port = free_port()
        self.log = workdir / f"web-{self.port}.log"
        if gthread:  # the former configuration, for contrast
            cmd = [sys.executable, "-m", "gunicorn", "-k", "gthread", "-w", "2", "--threads", "16",
                   "-b", f"127.0.0.1:{self.port}", "--timeout", "60", "wsgi:app"]
        else:  # exactly the Procfile's command, defaults and all
            cmd = [sys.executable, "-m", "valetkey.cli", "web", "--bind", f"127.0.0.1:{self.port}"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"web exited; see {self.log}")
            try:
                if get(self.port, "/healthz", {}, 2)[0] == 200:
                    return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"web did not start; see {self.log}")

    def stop(self) -> None:
        stop_group(self.proc, 30)


def stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM a process started with ``start_new_session`` and its children; SIGKILL after ``grace`` s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def get(port: int, path: str, headers: dict[str, str], timeout: float) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers=headers)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


# ---- the watchers (a process of their own) -----------------------------------------------------------
async def _watch(port: int, job: str, token: str, stop: asyncio.Event, ready: list[int], out: dict[str, Any]) -> None:
    auth = f"Authorization: Bearer {token}\r\nHost: 127.0.0.1\r\n"
    cursor = ""
    reader = writer = None
    counted_ready = False
    while not stop.is_set():
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            wait = "&wait=25" if cursor else ""
            writer.write(f"GET /api/v1/jobs/{job}/events?after={cursor}{wait} HTTP/1.1\r\n{auth}\r\n".encode())
            if cursor and not counted_ready:
                counted_ready = True
                ready[0] += 1
            assert reader is not None
            status = int((await asyncio.wait_for(reader.readline(), 40)).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = await reader.readexactly(length)
            if status != 200:
                out["errors"] += 1
                out["statuses"][status] = out["statuses"].get(status, 0) + 1
                await asyncio.sleep(0.5)
                continue
            page = json.loads(body)
            out["polls"] += 1
            now = time.time()
            for e in page["events"]:
                out["events"] += 1
                if cursor:  # not the first read of history
                    out["delivery"].append(now - dt.datetime.fromisoformat(e["time"]).timestamp())
            cursor = page["next"] or cursor
        except asyncio.CancelledError:
            break
        except Exception as e:  # noqa: BLE001 - every failure of a poll is counted
            out["errors"] += 1
            out["statuses"][type(e).__name__] = out["statuses"].get(type(e).__name__, 0) + 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.5)
    if writer is not None:
        writer.close()


def watchers_main(port: int, n: int, jobs: list[str], token: str, conn: Any) -> None:
    """Ramp up n watchers, report 'ready', run until told to stop, report the figures."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)

    async def main() -> None:
        stop = asyncio.Event()
        ready = [0]
        out: dict[str, Any] = {"errors": 0, "polls": 0, "events": 0, "delivery": [], "statuses": {}}
        tasks = []
        for i in range(n):
            tasks.append(asyncio.create_task(_watch(port, jobs[i % len(jobs)], token, stop, ready, out)))
            if i % 50 == 49:
                await asyncio.sleep(0.1)  # a ramp, not a SYN flood
        deadline = time.monotonic() + 60
        while ready[0] < n and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # the last ones are registered on the server
        out["ramp_errors"] = out["errors"]
        conn.send(("ready", ready[0]))
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # "stop"
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        conn.send(("done", out))

    asyncio.run(main())


# ---- the appender and the prober ------------------------------------------------------------------------
def appender(jobs: list[str], interval: float, stop: threading.Event) -> int:
    import redis

    from jobs.events import JobEvents

    events = JobEvents(redis.Redis.from_url(REDIS_URL))
    step = interval / len(jobs)
    n, i = 0, 0
    next_at = time.monotonic()
    while not stop.is_set():
        events.append(jobs[i % len(jobs)], "progress", f"step {i // len(jobs)}", keep=False)
        n, i = n + 1, i + 1
        next_at += step
        stop.wait(max(0.0, next_at - time.monotonic()))
    return n


def probe(port: int, token: str, seconds: float) -> tuple[list[float], list[float], int]:
    """(healthz latencies, action latencies, failures) over ``seconds``: healthz every 50 ms, a flush dry run
    every 250 ms, each on a new connection as a load balancer's check and a click would be."""
    health: list[float] = []
    actions: list[float] = []
    failures = 0
    body = json.dumps({"pattern": "session:*", "dry_run": True})
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    end = time.monotonic() + seconds
    tick = 0
    while time.monotonic() < end:
        t0 = time.monotonic()
        try:
            status, _ = get(port, "/healthz", {}, 30)
            failures += status != 200
        except OSError:
            failures += 1
        health.append(time.monotonic() - t0)
        if tick % 5 == 0:
            t0 = time.monotonic()
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                c.request("POST", FLUSH, body=body, headers=headers)
                r = c.getresponse()
                ok = r.status == 200 and json.loads(r.read())["matched"] == 50
                c.close()
                failures += not ok
            except OSError:
                failures += 1
            actions.append(time.monotonic() - t0)
        tick += 1
        time.sleep(max(0.0, 0.05 - (time.monotonic() - t0)))
    return health, actions, failures


def run(n: int, args: argparse.Namespace, workdir: Path, gthread: bool = False) -> dict[str, Any]:
    flush_redis()
    env = environ(workdir)
    db = workdir / "valetkey.db"
    for p in workdir.glob("valetkey.db*"):
        p.unlink()
    del db
    token, jobs = seed(env, args.jobs)
    web = Web(env, workdir, gthread=gthread)
    try:
        idle_h, idle_a, _ = probe(web.port, token, 4)
        parent, child = mp.Pipe()
        clients = mp.get_context("spawn").Process(target=watchers_main, args=(web.port, n, jobs, token, child))
        clients.start()
        stop = threading.Event()
        added: list[int] = []
        app = threading.Thread(target=lambda: added.append(appender(jobs, args.event_interval, stop)))
        try:
            if not parent.poll(120):
                raise RuntimeError("watchers did not start")
            _, ready = parent.recv()
            app.start()
            health, actions, failures = probe(web.port, token, args.seconds)
            stop.set()
            app.join(10)
            parent.send("stop")
            if not parent.poll(60):
                raise RuntimeError("watchers did not stop")
            _, out = parent.recv()
        finally:
            stop.set()
            clients.join(30)
            if clients.is_alive():
                clients.kill()
    finally:
        web.stop()
        flush_redis()
    return {"n": n, "ready": ready, "idle_h": idle_h, "idle_a": idle_a, "health": health, "actions": actions,
            "failures": failures, "appended": added[0] if added else 0, **out}


def report(r: dict[str, Any], label: str) -> str:
    d = r["delivery"]
    print(f"{label} n={r['n']}: {r['ready']} watching; {r['polls']} polls answered, {r['events']} events delivered "
          f"({r['appended']} appended), delivery median={statistics.median(d) if d else float('nan'):.3f}s "
          f"p99={pct(d, 0.99):.3f}s; poll errors={r['errors']} (during ramp-up {r['ramp_errors']}) {r['statuses']}")
    print(f"{label} n={r['n']}: healthz median={statistics.median(r['health']):.4f}s p99={pct(r['health'], 0.99):.4f}s "
          f"(idle median={statistics.median(r['idle_h']):.4f}s p99={pct(r['idle_h'], 0.99):.4f}s, "
          f"ratio p99 {pct(r['health'], 0.99) / pct(r['idle_h'], 0.99):.1f}x); "
          f"action median={statistics.median(r['actions']):.4f}s p99={pct(r['actions'], 0.99):.4f}s "
          f"(idle median={statistics.median(r['idle_a']):.4f}s); probe failures={r['failures']}")
    return (f"{label}: n={r['n']} healthz_p99={pct(r['health'], 0.99):.3f} action_p99={pct(r['actions'], 0.99):.3f} "
            f"poll_errors={r['errors']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--jobs", type=int, default=50, help="running jobs the watchers spread over")
    ap.add_argument("--event-interval", type=float, default=10.0, help="seconds between two events of one job")
    ap.add_argument("--seconds", type=float, default=30.0, help="probing time per N (> 25 s: every poll re-polls)")
    ap.add_argument("--compare-gthread", action="store_true", help="also run the former gthread configuration")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the server inherits it
    with tempfile.TemporaryDirectory(prefix="bench-watchers-") as tmp:
        workdir = Path(tmp)
        (workdir / "environments.toml").write_text(TOML)
        lines = []
        for n in args.n:
            if args.compare_gthread:
                lines.append(report(run(n, args, workdir, gthread=True), "gthread (before)"))
            lines.append(report(run(n, args, workdir), "watchers"))
        for line in lines:
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
