"""Throughput and tail latency of signed redeploy webhooks, relative to an empty Flask app.

    cd /work/main && .venv/bin/python -m bench.webhook

Prints details, then ``webhook: ratio=<x> p99=<y>``:

- ratio = accepted webhooks/s ÷ requests/s of a minimal Flask app answering ``{}``;
- p99 = p99 latency of the webhook run ÷ p99 of the baseline run;

and as its last line ``webhook: floor_ratio=<x> p99_ratio=<y>``: accepted
webhooks/s ÷ the floor's accepted/s, and the webhook run's p99 ÷ the floor's.

Before it, ``floor: ratio=<x> p99=<y>`` gives the same figures for
``bench/webhook_floor.py``, a bare route doing only the contract's own work
per accepted webhook, so the product's figures can be read against what any
implementation on this stack could reach.

Both apps run under the same gunicorn configuration as ``valetkey web`` (2
workers × 16 threads, gthread, access log; here into a file) and receive the
same pre-signed POST requests from a second process on loopback: ``wrk`` when
installed (``apt-get install wrk``), otherwise a Python load generator
(threads + http.client; slower, so it flatters the ratio less reliably).
One warm-up period, then one measured run, for each app.

What counts as accepted: a job row created during the measured run (a fresh,
validated, HMAC-signed request with a distinct X-GitHub-Delivery that was
authenticated, checked, written to the database and the audit stream and
enqueued). Repeats and refusals do not count, and are reported.

Why this is a fair load: one job per service at a time is a rule (a second
redeploy gets 409), so the benchmark environment has many services and the
requests rotate through them, while a "completer" thread in this process plays
an infinitely fast worker: it finishes queued jobs (one UPDATE every 20 ms),
which frees their services as a real worker would. The service-existence
check is served from the webhook's 10-second cache after the warm-up (per
process, and per service name in Redis for both web processes), as it would be
for CI bursts; each entry is refreshed from ECS (moto here) when it expires,
which is included in the measurement.

Infrastructure: Redis at VALETKEY_REDIS_URL, else redis://127.0.0.1:6379/12
(the database must be empty, or be that default one; it is flushed after the
run), a temporary SQLite database, and a ThreadedMotoServer for ECS.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_REDIS = "redis://127.0.0.1:6379/12"
SECRET = "bench-webhook-secret-0f3a9c"
ENV = "bench"
CLUSTER = "bench-cluster"
SERVICES = 400
WORKERS, THREADS = 2, 16  # valetkey web's defaults
CONNECTIONS = 32
WARMUP_SECONDS = 5
MEASURE_SECONDS = 6
PATH = "/hooks/redeploy"


def make_baseline() -> Any:
    """The minimal Flask app: the same route, answering {} (gunicorn factory)."""
    from flask import Flask

    app = Flask("baseline")

    @app.post(PATH)
    def empty() -> dict[str, Any]:
        return {}

    return app


# ---- infrastructure ---------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_for_bench() -> tuple[str, Any]:
    import redis

    url = os.environ.get("VALETKEY_REDIS_URL") or DEFAULT_REDIS
    r = redis.Redis.from_url(url)
    r.ping()
    if r.dbsize() and url != DEFAULT_REDIS:
        sys.exit(f"bench.webhook: {url.split('@')[-1]} is not empty; give it an empty Redis database "
                 "(it writes jobs, audit events and queue messages, and flushes them afterwards)")
    r.flushdb()
    return url, r


def seed_moto(url: str, services: int) -> None:
    import boto3

    ecs = boto3.client("ecs", region_name="us-east-1", endpoint_url=url)
    ecs.create_cluster(clusterName=CLUSTER)
    ecs.register_task_definition(family="bench-app", containerDefinitions=[
        {"name": "app", "image": "example/app:latest", "memory": 256, "essential": True}])
    for i in range(services):
        ecs.create_service(cluster=CLUSTER, serviceName=f"svc-{i:03d}", taskDefinition="bench-app",
                           desiredCount=1)


def write_requests(path: Path, count: int, prefix: str) -> None:
    """One line per request: signature, delivery id, body (bodies rotate through the services)."""
    with path.open("w") as f:
        for n in range(count):
            body = json.dumps({"environment": ENV, "service": f"svc-{n % SERVICES:03d}"},
                              separators=(",", ":"))
            sig = "sha256=" + hmac.new(SECRET.encode(), body.encode(), hashlib.sha256).hexdigest()
            f.write(f"{sig}\t{prefix}-{n}\t{body}\n")


WRK_SCRIPT = r"""
local counter = 1
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
function init(args)
  local path, nthreads = args[1], tonumber(args[2])
  reqs, idx = {}, 0
  local n = 0
  for line in io.lines(path) do
    if n % nthreads == tid - 1 then
      local sig, delivery, body = line:match("^(%S+)\t(%S+)\t(.*)$")
      reqs[#reqs + 1] = wrk.format("POST", "/hooks/redeploy", {["Content-Type"] = "application/json",
        ["X-Hub-Signature-256"] = sig, ["X-GitHub-Delivery"] = delivery}, body)
    end
    n = n + 1
  end
end
function request()
  idx = idx + 1
  if idx > #reqs then idx = 1 end
  return reqs[idx]
end
"""


@dataclass
class LoadResult:
    requests: int
    non_2xx: int
    seconds: float
    p99_ms: float
    errors: int = 0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def _ms(value: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", value)
    if not m:
        raise ValueError(value)
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]


def run_wrk(base: str, requests: Path, seconds: int, workdir: Path) -> LoadResult:
    script = workdir / "signed.lua"
    script.write_text(WRK_SCRIPT)
    threads = 2
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(CONNECTIONS), "-d", f"{seconds}s", "--latency",
                          "-s", str(script), base, "--", str(requests), str(threads)],
                         capture_output=True, text=True, check=True).stdout
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    p99 = re.search(r"^\s*99%\s+(\S+)", out, re.M)
    if not total or not p99:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return LoadResult(requests=int(total.group(1)), non_2xx=int(non2xx.group(1)) if non2xx else 0,
                      seconds=_ms(total.group(2) + total.group(3)) / 1000.0, p99_ms=_ms(p99.group(1)),
                      errors=sum(int(x) for x in errs.groups()) if errs else 0)


def run_python_loader(base: str, requests: Path, seconds: int) -> LoadResult:
    out = subprocess.run([sys.executable, "-m", "bench.webhook", "_load", base, str(requests), str(seconds)],
                         capture_output=True, text=True, check=True).stdout
    return LoadResult(**json.loads(out.strip().splitlines()[-1]))


def python_loader(base: str, requests: str, seconds: float) -> None:
    """The fallback load generator (runs in its own process): keep-alive connections in threads."""
    import http.client
    from urllib.parse import urlsplit

    lines = Path(requests).read_text().splitlines()
    host = urlsplit(base)
    lock = threading.Lock()
    latencies: list[float] = []
    counts = {"non_2xx": 0, "errors": 0}
    nxt = iter(range(10**12))
    deadline = time.monotonic() + seconds

    def worker() -> None:
        conn = http.client.HTTPConnection(host.hostname or "127.0.0.1", host.port, timeout=30)
        mine: list[float] = []
        while time.monotonic() < deadline:
            with lock:
                sig, delivery, body = lines[next(nxt) % len(lines)].split("\t", 2)
            t0 = time.perf_counter()
            try:
                conn.request("POST", PATH, body=body, headers={
                    "Content-Type": "application/json", "X-Hub-Signature-256": sig, "X-GitHub-Delivery": delivery})
                resp = conn.getresponse()
                resp.read()
            except OSError:
                counts["errors"] += 1
                conn.close()
                conn = http.client.HTTPConnection(host.hostname or "127.0.0.1", host.port, timeout=30)
                continue
            mine.append(time.perf_counter() - t0)
            if not 200 <= resp.status < 400:
                counts["non_2xx"] += 1
        with lock:
            latencies.extend(mine)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000 if latencies else 0.0
    print(json.dumps({"requests": len(latencies), "non_2xx": counts["non_2xx"], "seconds": elapsed,
                      "p99_ms": p99, "errors": counts["errors"]}))


def load(base: str, requests: Path, seconds: int, workdir: Path) -> LoadResult:
    if shutil.which("wrk"):
        return run_wrk(base, requests, seconds, workdir)
    return run_python_loader(base, requests, seconds)


class Gunicorn:
    """The app under ``valetkey web``'s gunicorn settings, in its own process group."""

    def __init__(self, target: str, env: dict[str, str], workdir: Path, name: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        log = workdir / f"{name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", target, "--bind", f"127.0.0.1:{self.port}",
             "--workers", str(WORKERS), "--threads", str(THREADS), "--worker-class", "gthread",
             "--timeout", "60", "--graceful-timeout", "10", "--keep-alive", "5",
             "--access-logfile", str(workdir / f"{name}-access.log"), "--error-logfile", str(log),
             "--log-level", "info"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.base}/healthz", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # the baseline has no /healthz: a 404 means it is serving
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start; see {log}:\n{log.read_text()[-2000:]}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()


class Completer(threading.Thread):
    """Plays an infinitely fast worker: finishes queued jobs so their services take the next redeploy."""

    def __init__(self, database_url: str) -> None:
        super().__init__(daemon=True)
        from scope.db import make_engine

        self.engine = make_engine(database_url)
        self.stopped = threading.Event()

    def run(self) -> None:
        from sqlalchemy import update

        from scope.models import Job

        while not self.stopped.wait(0.02):
            # Only queued jobs, as a worker claims them: finishing a row still ``unconfirmed`` (its
            # request between the insert and the confirm) made that request answer 503.
            with self.engine.begin() as c:
                c.execute(update(Job).where(Job.active_key.is_not(None), Job.status == "queued").values(
                    status="succeeded", detail="bench", active_key=None,
                    finished_at=dt.datetime.now(dt.timezone.utc)))

    def stop(self) -> None:
        self.stopped.set()
        self.join()
        self.engine.dispose()


def status_counts(access_log: Path) -> dict[str, int]:
    """HTTP statuses from gunicorn's access log (the field after the quoted request line)."""
    counts: dict[str, int] = {}
    for line in access_log.read_text().splitlines():
        m = re.search(r'" (\d{3}) ', line)
        if m:
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts


def count_jobs(database_url: str) -> int:
    from sqlalchemy import func, select

    from scope.db import make_engine
    from scope.models import Job

    engine = make_engine(database_url)
    try:
        with engine.connect() as c:
            return int(c.scalar(select(func.count()).select_from(Job)) or 0)
    finally:
        engine.dispose()


def main() -> None:
    logging_quiet()
    from moto.server import ThreadedMotoServer

    from scope.db import make_engine
    from scope.migrate import upgrade

    workdir = Path(tempfile.mkdtemp(prefix="valetkey-bench-"))
    redis_url, r = redis_for_bench()
    moto_port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    moto.start()
    aws_url = f"http://127.0.0.1:{moto_port}"
    servers: list[Gunicorn] = []
    completer: Completer | None = None
    try:
        aws_env = {"AWS_ENDPOINT_URL": aws_url, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                   "AWS_DEFAULT_REGION": "us-east-1"}
        os.environ.update(aws_env)
        seed_moto(aws_url, SERVICES)
        db_url = f"sqlite:///{workdir / 'valetkey.db'}"
        engine = make_engine(db_url)
        upgrade(engine)
        engine.dispose()
        (workdir / "environments.toml").write_text(
            f'[environments.{ENV}]\nregion = "us-east-1"\ncluster = "{CLUSTER}"\n'
            f'webhook_secret_env = "BENCH_WEBHOOK_SECRET"\n')
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("VALETKEY_")}, **aws_env,
               "VALETKEY_REDIS_URL": redis_url, "VALETKEY_DATABASE_URL": db_url,
               "VALETKEY_ENVIRONMENTS": str(workdir / "environments.toml"),
               "VALETKEY_SECRET_KEY": "bench-secret-key-0123456789abcdef", "BENCH_WEBHOOK_SECRET": SECRET,
               "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        # Enough distinct deliveries that no request repeats within a run.
        write_requests(workdir / "warmup.txt", 60_000, "warm")
        write_requests(workdir / "measure.txt", 120_000, "run")
        loader = "wrk" if shutil.which("wrk") else "python (threads + http.client)"

        def describe_calls() -> int:
            """DescribeServices calls made so far, as the product's budget hooks count them (every process)."""
            from cloud.budget import call_counters

            return sum(n for api, n in call_counters(r)[0].items() if api.endswith(":DescribeServices"))

        def accepting(target: str, name: str) -> tuple[LoadResult, int, dict[str, int], int]:
            """Run an app that creates jobs: (load result, jobs created in the measured run, statuses,
            DescribeServices calls in the measured run)."""
            nonlocal completer
            completer = Completer(db_url)
            completer.start()
            app = Gunicorn(target, env, workdir, name)
            servers.append(app)
            load(app.base, workdir / "warmup.txt", WARMUP_SECONDS, workdir)
            before, calls_before = count_jobs(db_url), describe_calls()
            (workdir / f"{name}-access.log").write_text("")  # gunicorn appends: keep only the measured run
            result = load(app.base, workdir / "measure.txt", MEASURE_SECONDS, workdir)
            time.sleep(0.5)  # let requests in flight at the end land
            created, calls = count_jobs(db_url) - before, describe_calls() - calls_before
            statuses = status_counts(workdir / f"{name}-access.log")
            app.stop()
            completer.stop()
            completer = None
            return result, created, statuses, calls

        w, accepted, statuses, described = accepting("wsgi:app", "webhook")
        # The floor gets deliveries of its own (its idempotency keys are separate, the job rows shared).
        write_requests(workdir / "warmup.txt", 60_000, "floor-warm")
        write_requests(workdir / "measure.txt", 120_000, "floor-run")
        f, floor_accepted, floor_statuses, _ = accepting("bench.webhook_floor:make_floor()", "floor")

        base = Gunicorn("bench.webhook:make_baseline()", env, workdir, "baseline")
        servers.append(base)
        load(base.base, workdir / "warmup.txt", WARMUP_SECONDS, workdir)
        b = load(base.base, workdir / "measure.txt", MEASURE_SECONDS, workdir)
        base.stop()

        accepted_rps = accepted / w.seconds
        floor_rps = floor_accepted / f.seconds
        print(f"loader: {loader}, {CONNECTIONS} connections; gunicorn {WORKERS} workers x {THREADS} threads "
              f"(gthread); {os.cpu_count()} CPUs; {SERVICES} services rotating; measured {MEASURE_SECONDS}s "
              f"after {WARMUP_SECONDS}s warm-up")
        print(f"webhook:  {w.requests} responses ({w.non_2xx} non-2xx, {w.errors} socket errors), "
              f"{accepted} jobs created -> {accepted_rps:.0f} accepted/s, p99 {w.p99_ms:.2f} ms; "
              f"statuses {dict(sorted(statuses.items()))}; {described} DescribeServices calls")
        print(f"floor:    {f.requests} responses ({f.non_2xx} non-2xx, {f.errors} socket errors), "
              f"{floor_accepted} jobs created -> {floor_rps:.0f} accepted/s, p99 {f.p99_ms:.2f} ms; "
              f"statuses {dict(sorted(floor_statuses.items()))}")
        print(f"baseline: {b.requests} responses ({b.non_2xx} non-2xx) -> {b.rps:.0f} req/s, p99 {b.p99_ms:.2f} ms")
        print(f"floor: ratio={floor_rps / b.rps:.3f} p99={f.p99_ms / b.p99_ms:.3f} — the contract's own work per "
              f"accepted webhook (bench/webhook_floor.py) with no product code around it; valetkey reaches "
              f"{accepted_rps / floor_rps:.0%} of its rate")
        print(f"webhook: ratio={accepted_rps / b.rps:.3f} p99={w.p99_ms / b.p99_ms:.3f}")
        # Restated against the floor of the same run: its accepted rate and its p99.
        print(f"webhook: floor_ratio={accepted_rps / floor_rps:.3f} p99_ratio={w.p99_ms / f.p99_ms:.3f}")
    finally:
        if completer is not None:
            completer.stop()
        for s in servers:
            s.stop()
        moto.stop()
        r.flushdb()
        r.close()
        shutil.rmtree(workdir, ignore_errors=True)


def logging_quiet() -> None:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.webhook")
    sub = parser.add_subparsers(dest="cmd")
    lp = sub.add_parser("_load", help=argparse.SUPPRESS)
    lp.add_argument("base")
    lp.add_argument("requests")
    lp.add_argument("seconds", type=float)
    a = parser.parse_args()
    if a.cmd == "_load":
        python_loader(a.base, a.requests, a.seconds)
    else:
        main()
