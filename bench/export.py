"""Audit CSV export: throughput and memory of the product's download, relative to the databases' own tools.

    cd /work/main && .venv/bin/python -m bench.export [--rows 1000000] [--small 100000] [--runs 5]

Prints details, then two result lines; the LAST line is SQLite (the default database):

    export postgresql: ratio=<x> memory=<y>
    export: ratio=<x> memory=<y>

- ratio = rows/s of ``GET /api/v1/audit/export.csv`` (all rows, an auditor's token) ÷ rows/s of the
  database's own CSV writer on the same rows: ``sqlite3 -csv -header DB "SELECT <the ten CSV columns>
  ... ORDER BY id" > /dev/null`` and ``psql -c "\\copy (SELECT ...) TO '/dev/null' WITH (FORMAT csv,
  HEADER)"``. The baselines write the raw columns; the product additionally neutralises formula-like
  cells and writes ISO 8601 UTC times, as the contract requires.
- memory = peak RSS (VmHWM) of the serving process after exporting ``--rows`` rows ÷ the same for
  ``--small`` rows, each in a fresh server, so the two high-water marks are independent.
- Baseline and product runs alternate (``--runs`` of each, after one untimed download that checks
  the row count); the best of each side counts. Throughput depends on the machine's load: the
  ratio compares the two under the same conditions.

The serving process is the real one: ``valetkey web`` (gunicorn, gthread; one worker here so that
its peak RSS is the serving process's) started as a subprocess; the download is made by ``curl``
to /dev/null, its time taken from curl's ``time_total``.

Data: the audit table is seeded with bulk inserts (SQLite ``executemany`` with the secondary
indexes rebuilt afterwards; PostgreSQL ``COPY``), realistic rows of 90 days: service actions with
before/after states, logins without an environment, denied attempts. About 2% of details contain a
comma or quotes (AWS error texts) and 0.3% of actors start like a formula (typed into the login
form), so both quoting and the formula guard are exercised. The hash chain columns hold
placeholders (64 hex characters, not a valid chain): the benchmark measures the export, which
does not read them; computing a million hashes would only slow the seeding down.

Needs the ``sqlite3`` and ``psql`` command-line tools (``apt-get install -y sqlite3
postgresql-client``) and curl. PostgreSQL: VALETKEY_BENCH_POSTGRES_URL, default
postgresql://postgres@127.0.0.1:5432/test, in the schemas ``bench_export`` / ``bench_export_small``
(dropped afterwards); ``--no-postgres`` skips it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

PG_URL = os.environ.get("VALETKEY_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
SCHEMAS = {"big": "bench_export", "small": "bench_export_small"}
COLUMNS = "id, time, actor, source, environment, action, target, outcome, detail, job_id"
ROOT = Path(__file__).resolve().parent.parent
AUDITOR = "auditor@bench.test"
TOML = """
[environments.staging]
region = "us-east-1"
cluster = "staging"
"""


# ---- data -----------------------------------------------------------------------------------
ENVS = ["staging", "qa-eu", "qa-us", "perf", "demo", "integration"]
SERVICES = ["orders-api", "payments-api", "search-api", "catalog-worker", "notifications", "gateway"]
PEOPLE = [f"{n}@acme.test" for n in ("alice", "bob", "carol", "dan", "erin", "frank", "grace", "heidi",
                                     "ivan", "judy", "mallory", "niaj", "olivia", "peggy", "rupert", "sybil")]


def rows(n: int, seed: int = 7) -> Iterator[tuple[object, ...]]:
    """n audit rows, ids 1..n, oldest first over 90 days: (id, stream_id, time, actor, source, environment,
    action, target, outcome, detail, job_id, before, after, request_id, prev_hash, hash)."""
    rnd = random.Random(seed)
    start = dt.datetime(2026, 8, 28, tzinfo=dt.timezone.utc)
    step = dt.timedelta(days=90) / max(n, 1)
    placeholder = "ab" * 32
    for i in range(1, n + 1):
        t = (start + step * i).strftime("%Y-%m-%d %H:%M:%S.%f")
        env, svc, who = rnd.choice(ENVS), rnd.choice(SERVICES), rnd.choice(PEOPLE)
        roll = rnd.random()
        before = after = None
        job = f"{rnd.getrandbits(128):032x}"
        source = rnd.choice(("web", "api", "api", "webhook"))
        if roll < 0.30:
            action, outcome, detail = "service.restart", "requested", ""
        elif roll < 0.55:
            action, outcome = rnd.choice(("service.restart", "service.redeploy")), "succeeded"
            detail = f"HEALTHY after {rnd.randint(20, 300)}s" if action == "service.restart" \
                else f"Deployed sha:{rnd.getrandbits(24):06x}"
            before = '{"image": "sha:%06x", "running": 2, "desired": 2}' % rnd.getrandbits(24)
            after = '{"image": "sha:%06x", "running": 2, "desired": 2}' % rnd.getrandbits(24)
        elif roll < 0.70:
            action, outcome, job = "logs.view", "succeeded", ""
            detail = "last 15m, filter ERROR"
        elif roll < 0.78:
            action, outcome, detail = "redis.flush", "succeeded", f"Pattern: session:* — {rnd.randint(0, 90)} keys deleted"
            svc = "cache"
        elif roll < 0.84:
            action, outcome, detail = "task.run", "succeeded", f"exit 0 after {rnd.randint(5, 90)}s"
            svc = f"{env}-orders-migrate"
        elif roll < 0.92:
            action, outcome, job, source = "login", "succeeded", "", "web"
            env, svc, detail = "", "", "local password"
        else:
            action, outcome, job = "service.restart", "denied", ""
            detail = f"Your role in {env} (viewer) does not allow service.restart."
        if rnd.random() < 0.02:
            outcome = "failed"
            detail = ("An error occurred (ThrottlingException) when calling the UpdateService operation: "
                      f"Rate exceeded, retry after {rnd.randint(1, 9)}s; request \"{rnd.getrandbits(32):08x}\"")
        if rnd.random() < 0.003:
            action, outcome, env, svc, job, source = "login", "denied", "", "", "", "web"
            who, detail = "=HYPERLINK(\"http://evil.example\",\"x\")", "local password: wrong e-mail or password"
        yield (i, f"{1788000000000 + i}-0", t, who, source, env, action, svc, outcome, detail, job,
               before, after, f"{rnd.getrandbits(64):016x}", placeholder, placeholder)


# ---- databases -----------------------------------------------------------------------------------
def migrate(url: str) -> None:
    from scope.db import make_engine
    from scope.migrate import upgrade

    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()


def make_auditor(url: str, environments: str) -> str:
    """An auditor with an API token in that database; returns the token."""
    from scope.catalog import load_catalog
    from scope.db import make_engine, make_sessionmaker
    from scope.users import UserService

    engine = make_engine(url)
    users = UserService(make_sessionmaker(engine))
    users.add_user(AUDITOR, "Bench Auditor", None)
    users.grant(AUDITOR, "*", "auditor", load_catalog(environments, {}))
    _, token = users.create_token(AUDITOR, "bench")
    engine.dispose()
    return token


def seed_sqlite(path: Path, n: int) -> None:
    migrate(f"sqlite:///{path}")
    c = sqlite3.connect(path)
    c.execute("PRAGMA synchronous=OFF")
    # Building the secondary indexes once at the end is much faster than maintaining them per row.
    c.execute("DROP INDEX ix_audit_time")
    c.execute("DROP INDEX ix_audit_env_time")
    c.executemany(f"INSERT INTO audit_entries ({COLUMNS}, stream_id, before, after, request_id, prev_hash, hash) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  ((r[0], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[1], r[11], r[12], r[13],
                    r[14], r[15]) for r in rows(n)))
    c.execute("CREATE INDEX ix_audit_time ON audit_entries (time)")
    c.execute("CREATE INDEX ix_audit_env_time ON audit_entries (environment, time)")
    c.execute("UPDATE audit_head SET last_id = ?", (n,))
    c.commit()
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()


def pg_url(schema: str) -> str:
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


def pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as c:
        c.execute(sql)


def seed_postgres(schema: str, n: int) -> None:
    import psycopg

    pg_admin(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    pg_admin(f'CREATE SCHEMA "{schema}"')
    migrate(pg_url(schema))
    with psycopg.connect(PG_URL, options=f"-csearch_path={schema}") as c:
        with c.cursor() as cur:
            cur.execute("DROP INDEX ix_audit_time")
            cur.execute("DROP INDEX ix_audit_env_time")
            with cur.copy(f"COPY audit_entries ({COLUMNS}, stream_id, before, after, request_id, prev_hash, hash) "
                          "FROM STDIN") as copy:
                for r in rows(n):
                    t = r[2] + "+00"
                    copy.write_row((r[0], t, r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[1], r[11], r[12],
                                    r[13], r[14], r[15]))
            cur.execute("CREATE INDEX ix_audit_time ON audit_entries (time)")
            cur.execute("CREATE INDEX ix_audit_env_time ON audit_entries (environment, time)")
            cur.execute("UPDATE audit_head SET last_id = %s", (n,))
            cur.execute("ANALYZE audit_entries")


# ---- measuring ----------------------------------------------------------------------------------
def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t0


def sqlite_cli(path: Path) -> float:
    return timed(["sqlite3", "-csv", "-header", str(path), f"SELECT {COLUMNS} FROM audit_entries ORDER BY id"])


def psql_copy(schema: str) -> float:
    env = {**os.environ, "PGOPTIONS": f"-csearch_path={schema}"}
    return timed(["psql", PG_URL, "-q", "-c",
                  f"\\copy (SELECT {COLUMNS} FROM audit_entries ORDER BY id) TO '/dev/null' WITH (FORMAT csv, HEADER)"],
                 env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base: str

    @property
    def worker_pid(self) -> int:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        assert len(children) == 1, f"expected one gunicorn worker, found {children}"
        return int(children[0])

    def peak_rss_kb(self) -> int:
        for line in Path(f"/proc/{self.worker_pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("no VmHWM")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def serve(database_url: str, workdir: Path) -> Server:
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("VALETKEY_")},
           "VALETKEY_DATABASE_URL": database_url,
           "VALETKEY_REDIS_URL": os.environ.get("VALETKEY_REDIS_URL", "redis://127.0.0.1:6379/0"),
           "VALETKEY_ENVIRONMENTS": str(workdir / "environments.toml"),
           "VALETKEY_SECRET_KEY": "bench-export-secret-key-0123456789", "VALETKEY_LOCAL_LOGIN": "true"}
    log = (workdir / f"web-{port}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "valetkey.cli", "web", "--bind", f"127.0.0.1:{port}",
                             "--workers", "1", "--threads", "4"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(base + "/healthz", timeout=2).status == 200:
                return Server(proc, base)
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"valetkey web did not start; see {log.name}")


def download(server: Server, token: str, check_rows: int | None = None) -> float:
    """Seconds for the whole CSV download (curl's time_total); optionally checks the row count."""
    url = server.base + "/api/v1/audit/export.csv"
    auth = f"Authorization: Bearer {token}"
    if check_rows is not None:
        # The seeded values hold no line breaks, so lines = rows + header.
        curl = subprocess.Popen(["curl", "-sS", "-f", "-H", auth, url], stdout=subprocess.PIPE)
        lines = subprocess.run(["wc", "-l"], stdin=curl.stdout, capture_output=True, text=True, check=True)
        assert curl.wait() == 0, "download failed"
        got = int(lines.stdout.split()[0]) - 1
        assert got == check_rows, f"downloaded {got} rows, expected {check_rows}"
        return 0.0
    out = subprocess.run(["curl", "-sS", "-f", "-o", "/dev/null", "-H", auth, "-w", "%{time_total}", url],
                         capture_output=True, text=True, check=True)
    return float(out.stdout)


def backend(name: str, urls: dict[str, str], baseline, n: int, small: int, runs: int,  # type: ignore[no-untyped-def]
            workdir: Path) -> tuple[float, float]:
    """(ratio, memory) for one database; baseline and product runs alternate, so that a change in
    the machine's load affects both alike; each side's best run counts."""
    tokens = {k: make_auditor(u, str(workdir / "environments.toml")) for k, u in urls.items()}
    server = serve(urls["big"], workdir)
    try:
        download(server, tokens["big"], check_rows=n)
        base_runs, product_runs = [], []
        for _ in range(runs):
            base_runs.append(baseline())
            product_runs.append(download(server, tokens["big"]))
        rss_big = server.peak_rss_kb()
    finally:
        server.stop()
    server = serve(urls["small"], workdir)  # a fresh process: its own high-water mark
    try:
        download(server, tokens["small"], check_rows=small)
        for _ in range(runs):
            download(server, tokens["small"])
        rss_small = server.peak_rss_kb()
    finally:
        server.stop()
    base_secs, secs = min(base_runs), min(product_runs)
    print(f"{name}: baseline {n / base_secs:,.0f} rows/s (best {base_secs:.2f}s of "
          f"{', '.join(f'{x:.2f}' for x in base_runs)}); product {n / secs:,.0f} rows/s (best {secs:.2f}s of "
          f"{', '.join(f'{x:.2f}' for x in product_runs)}); peak RSS {rss_big / 1024:.1f} MiB ({n:,} rows) vs "
          f"{rss_small / 1024:.1f} MiB ({small:,} rows)", flush=True)
    return base_secs / secs, rss_big / rss_small


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--small", type=int, default=100_000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--no-postgres", action="store_true")
    a = p.parse_args()
    for tool in ("curl", "sqlite3") + (() if a.no_postgres else ("psql",)):
        if not shutil.which(tool):
            print(f"bench.export: needs the {tool} command", file=sys.stderr)
            return 2
    workdir = Path(tempfile.mkdtemp(prefix="bench-export-"))
    (workdir / "environments.toml").write_text(TOML)
    results: list[str] = []
    try:
        if not a.no_postgres:
            t0 = time.perf_counter()
            for key, n in (("big", a.rows), ("small", a.small)):
                seed_postgres(SCHEMAS[key], n)
            print(f"postgresql: seeded {a.rows:,} + {a.small:,} rows in {time.perf_counter() - t0:.0f}s", flush=True)
            ratio, memory = backend("postgresql", {k: pg_url(s) for k, s in SCHEMAS.items()},
                                    lambda: psql_copy(SCHEMAS["big"]), a.rows, a.small, a.runs, workdir)
            results.append(f"export postgresql: ratio={ratio:.2f} memory={memory:.2f}")
        t0 = time.perf_counter()
        paths = {"big": workdir / "big.db", "small": workdir / "small.db"}
        for key, n in (("big", a.rows), ("small", a.small)):
            seed_sqlite(paths[key], n)
        print(f"sqlite: seeded {a.rows:,} + {a.small:,} rows in {time.perf_counter() - t0:.0f}s", flush=True)
        ratio, memory = backend("sqlite", {k: f"sqlite:///{v}" for k, v in paths.items()},
                                lambda: sqlite_cli(paths["big"]), a.rows, a.small, a.runs, workdir)
        results.append(f"export: ratio={ratio:.2f} memory={memory:.2f}")
    finally:
        if not a.no_postgres:
            for s in SCHEMAS.values():
                try:
                    pg_admin(f'DROP SCHEMA IF EXISTS "{s}" CASCADE')
                except Exception:  # noqa: BLE001 - cleanup only
                    pass
        shutil.rmtree(workdir, ignore_errors=True)
    for line in results:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
