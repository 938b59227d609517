"""``valetkey demo``: the whole system on one machine, with no AWS account.

It starts moto (the local AWS stand-in) in this process with the ECS
simulator (``ecssim.realtime``) installed, so services start, stop and crash
at Fargate-like speed; starts a private ``redis-server`` on a free port (no
persistence, in the work directory) for Valet Key's own Redis and the
flushable target databases; seeds both (``valetkey.demo_seed``), writes
``environments.toml`` and a fresh SQLite database into a temporary work
directory, creates demo accounts, and runs the four Procfile processes (web,
worker, exporter, scheduler) as children. Ctrl-C or SIGTERM stops all of it
and exits 0, leaving nothing behind.

The demo never touches a real database, a real Redis or a real AWS account:
it ignores VALETKEY_REDIS_URL and VALETKEY_DATABASE_URL, uses its own SQLite
file and Redis, points every child at moto with fake credentials, and hides
any AWS profile of the person running it.
"""
from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

import redis

from scope.errors import ValetKeyError

log = logging.getLogger("valetkey.demo")

HEALTH_TIMEOUT = 90.0  # seconds for the web process to answer /healthz
STOP_TIMEOUT = 12.0  # seconds children get to stop after SIGTERM before SIGKILL
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class DemoAccount:
    email: str
    name: str
    grants: tuple[tuple[str, str], ...]  # (environment, role)

    def describe(self) -> str:
        by_role: dict[str, list[str]] = {}
        for env, role in self.grants:
            by_role.setdefault(role, []).append("every environment" if env == "*" else env)
        return "; ".join(f"{role} in {', '.join(envs)}" for role, envs in by_role.items())


ACCOUNTS: tuple[DemoAccount, ...] = (
    DemoAccount("dev@demo.test", "Dana Developer", (("staging", "developer"), ("qa-eu", "developer"))),
    DemoAccount("ops@demo.test", "Oskar Operator", (("staging", "operator"),)),
    DemoAccount("viewer@demo.test", "Vera Viewer", (("staging", "viewer"), ("qa-eu", "viewer"))),
    DemoAccount("auditor@demo.test", "Audrey Auditor", (("*", "auditor"),)),
    DemoAccount("admin@demo.test", "Ada Admin", (("*", "admin"),)),
)


def process_commands(port: int) -> dict[str, list[str]]:
    """The Procfile's process types, run with this interpreter (no console script needed on PATH)."""
    cli = [sys.executable, "-m", "valetkey.cli"]
    return {"web": [*cli, "web", "--bind", f"127.0.0.1:{port}"], "worker": [*cli, "worker"],
            "exporter": [*cli, "audit", "consume"], "scheduler": [*cli, "schedule", "run"]}


# ---- small helpers ---------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise ValetKeyError(f"--port must be between 1 and 65535, not {port}")
    with socket.socket() as s:
        # Same options as gunicorn's listener, so TIME_WAIT leftovers do not count as "taken".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ValetKeyError(f"port {port} is already in use; choose another with --port") from None
            raise ValetKeyError(f"cannot listen on 127.0.0.1:{port}: {e.strerror}") from None


def redis_db(url: str) -> int:
    p = urlparse(url)
    raw = parse_qs(p.query).get("db", [""])[0] if p.scheme == "unix" else (p.path or "/").strip("/")
    return int(raw) if raw.isdigit() else 0


def with_db(url: str, db: int) -> str:
    """The same Redis server (and credentials) with another database number."""
    p = urlparse(url)
    if p.scheme == "unix":
        q = {k: v[0] for k, v in parse_qs(p.query).items()}
        q["db"] = str(db)
        return urlunparse(p._replace(query=urlencode(q)))
    return urlunparse(p._replace(path=f"/{db}"))


def where(url: str) -> str:
    """Where a Redis URL points, without user name or password (safe to print)."""
    p = urlparse(url)
    place = p.path if p.scheme == "unix" else f"{p.hostname or 'localhost'}:{p.port or 6379}"
    return f"{place} db {redis_db(url)}"


def redis_problem(url: str) -> str | None:
    """None when a Redis answers PING at url, else a short reason (never the URL itself)."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, ValueError, OSError) as e:
        return type(e).__name__
    return None


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - our own local web process
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def tail(path: Path, lines: int = 12) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


# ---- the demo ----------------------------------------------------------------------
@dataclass
class Demo:
    port: int
    out: IO[str] = field(default_factory=lambda: sys.stdout)
    workdir: Path | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    redis_proc: subprocess.Popen[bytes] | None = None
    moto: Any = None
    sim: Any = None  # the ECS simulator (ecssim.Simulator) installed into moto
    demo_logs: Any = None
    keep_workdir: bool = False
    _stopping: bool = False
    _logs: list[IO[bytes]] = field(default_factory=list)

    def say(self, line: str = "") -> None:
        print(line, file=self.out, flush=True)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._stopping = True

    # -- start-up ---------------------------------------------------------------
    def run(self) -> int:
        check_port(self.port)
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self._run()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _run(self) -> int:
        self.workdir = Path(tempfile.mkdtemp(prefix="valetkey-demo-"))
        own_url = self._redis()
        self.say(f"Files (environments.toml, demo.db, logs) go to {self.workdir}")
        targets = [1, 2]  # databases of the demo's own Redis; Valet Key itself uses db 0
        moto_url = self._moto()
        from valetkey import demo_seed

        self.say("Seeding the AWS stand-in: staging, qa-eu, prod (disabled) ...")
        seeded = demo_seed.seed_aws(moto_url, self.sim)
        target_urls: dict[str, str] = {}
        for spec, db in zip([s.spec for s in seeded if s.spec.redis_env], targets):
            assert spec.redis_env is not None
            target_urls[spec.redis_env] = with_db(own_url, db)
            client = redis.Redis.from_url(target_urls[spec.redis_env], socket_connect_timeout=5, socket_timeout=10)
            try:
                demo_seed.seed_redis(client, spec.name)
            except redis.RedisError as e:
                raise ValetKeyError(f"could not write demo keys to Redis {where(target_urls[spec.redis_env])}: "
                                    f"{type(e).__name__}") from e
            finally:
                client.close()
        windows = demo_seed.schedule_windows(dt.datetime.now(dt.timezone.utc))
        catalog = self.workdir / "environments.toml"
        catalog.write_text(demo_seed.catalog_toml(seeded, windows))

        webhook_secret = secrets.token_urlsafe(24)
        env = self._child_env(own_url, moto_url, catalog, target_urls, webhook_secret)
        self._database(env)
        passwords, tokens = self._accounts(env)
        env["VALETKEY_DEMO_LOGINS"] = demo_logins(passwords)

        self.demo_logs = demo_seed.DemoLogs(moto_url, self.sim, seeded)
        self.demo_logs.start()
        self.say("Starting web, worker, exporter and scheduler ...")
        for name, cmd in process_commands(self.port).items():
            self._start(name, cmd, env)
        base = f"http://127.0.0.1:{self.port}"
        failed = self._wait_healthy(base)
        if failed is not None:
            return failed
        if self._stopping:
            return 0
        self._banner(base, moto_url, own_url, target_urls, passwords, tokens, webhook_secret, seeded, windows)
        return self._supervise()

    def _redis(self) -> str:
        """A private redis-server on a free port: never anyone's existing Redis (its keys stay untouched)."""
        exe = shutil.which("redis-server")
        if exe is None:
            raise ValetKeyError("the demo runs its own Redis and redis-server is not on PATH: install it "
                                "(apt-get install redis-server, or brew install redis)")
        assert self.workdir is not None
        port = free_port()
        logf = open(self.workdir / "redis.log", "wb")  # noqa: SIM115 - closed in shutdown()
        self._logs.append(logf)
        # No persistence: the demo's Redis is thrown away with the demo.
        self.redis_proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 15
        while redis_problem(url) is not None:
            if self.redis_proc.poll() is not None:
                raise ValetKeyError(f"redis-server exited at start (code {self.redis_proc.returncode}); "
                                    f"see {self.workdir / 'redis.log'}")
            if time.monotonic() > deadline:
                raise ValetKeyError(f"redis-server did not answer within 15s; see {self.workdir / 'redis.log'}")
            time.sleep(0.1)
        self.say(f"Valet Key's own Redis: started redis-server on 127.0.0.1:{port} (no persistence)")
        return url

    def _moto(self) -> str:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError:  # a production install has no moto: the demo is an extra
            raise ValetKeyError('The demo needs its local AWS stand-in: pip install "valetkey[demo]" '
                                '(the README\'s command installs it).') from None

        # One line per AWS call or migration step is noise in the demo's terminal.
        for noisy in ("werkzeug", "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        port = free_port()
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.moto.start()
        import ecssim.realtime

        # ECS as it behaves: the scheduler starts and replaces tasks on the wall clock, images
        # crash, counts lag, throttling buckets apply. Installed into this process's moto.
        self.sim = ecssim.realtime.start(seed=1)
        return f"http://127.0.0.1:{port}"

    def _child_env(self, own_url: str, moto_url: str, catalog: Path, target_urls: dict[str, str],
                   webhook_secret: str) -> dict[str, str]:
        assert self.workdir is not None
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("VALETKEY_", "AWS_"))}
        if os.environ.get("VALETKEY_LOG_LEVEL"):
            keep["VALETKEY_LOG_LEVEL"] = os.environ["VALETKEY_LOG_LEVEL"]
        nowhere = str(self.workdir / "no-aws-config")  # hides ~/.aws: no real profile can be used
        pythonpath = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        return {
            **keep,
            "PYTHONPATH": pythonpath,
            "PYTHONUNBUFFERED": "1",
            "VALETKEY_REDIS_URL": own_url,
            "VALETKEY_DATABASE_URL": f"sqlite:///{self.workdir / 'demo.db'}",
            "VALETKEY_ENVIRONMENTS": str(catalog),
            "VALETKEY_SECRET_KEY": secrets.token_urlsafe(32),
            "VALETKEY_BASE_URL": f"http://127.0.0.1:{self.port}",
            "VALETKEY_LOCAL_LOGIN": "true",
            "VALETKEY_POLL_INTERVAL": "1",
            "VALETKEY_STABILITY_TIMEOUT": "180",
            "AWS_ENDPOINT_URL": moto_url,
            "AWS_ACCESS_KEY_ID": "demo",
            "AWS_SECRET_ACCESS_KEY": "demo",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": nowhere,
            "AWS_SHARED_CREDENTIALS_FILE": nowhere,
            "AWS_EC2_METADATA_DISABLED": "true",
            "STAGING_WEBHOOK_SECRET": webhook_secret,
            **target_urls,
        }

    def _database(self, env: dict[str, str]) -> None:
        from scope.db import make_engine
        from scope.migrate import upgrade

        engine = make_engine(env["VALETKEY_DATABASE_URL"])
        try:
            upgrade(engine)
        except Exception as e:  # noqa: BLE001 - one line, not a traceback
            raise ValetKeyError(f"database upgrade failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
        finally:
            engine.dispose()

    def _accounts(self, env: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        """Create the demo accounts, their grants and API tokens (audited like the CLI does)."""
        from jobs.audit_stream import AuditEvent
        from scope.settings import Settings
        from wiring.runtime import Runtime

        rt = Runtime.from_settings(Settings.from_env(env), with_broker=False)
        passwords: dict[str, str] = {}
        tokens: dict[str, str] = {}
        try:
            for acct in ACCOUNTS:
                passwords[acct.email] = "demo-" + secrets.token_urlsafe(12)
                rt.users.add_user(acct.email, acct.name, passwords[acct.email])
                for environment, role in acct.grants:
                    rt.users.grant(acct.email, environment, role, rt.catalog, by="demo")
                    rt.audit.record(AuditEvent(actor="cli:demo", source="cli", action="grant.add",
                                               outcome="succeeded", environment=environment, target=acct.email,
                                               detail=f"role {role}"))
                tok, tokens[acct.email] = rt.users.create_token(acct.email, "demo")
                rt.audit.record(AuditEvent(actor="cli:demo", source="cli", action="token.create",
                                           outcome="succeeded", target=acct.email,
                                           detail=f"token {tok.prefix}… (demo)"))
        finally:
            rt.close()
        return passwords, tokens

    def _start(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        assert self.workdir is not None
        logf = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - closed in shutdown()
        self._logs.append(logf)
        # A session of its own: Ctrl-C reaches only the demo, which then stops each
        # child's whole process group (gunicorn's workers included) in order.
        self.procs[name] = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

    def _dead_child(self) -> str | None:
        for name, p in self.procs.items():
            if exited(p):
                return name
        return None

    def _report_death(self, name: str) -> int:
        assert self.workdir is not None
        logfile = self.workdir / f"{name}.log"
        p = self.procs[name]
        _signal_group(p.pid, signal.SIGKILL)  # what is left of its group, before the leader is reaped
        p.wait(5)
        print(f"valetkey: the demo's {name} process exited with code {p.returncode}; "
              f"its log is {logfile}", file=sys.stderr, flush=True)
        for line in tail(logfile):
            print(f"    {line}", file=sys.stderr)
        self.keep_workdir = True
        return 1

    def _wait_healthy(self, base: str) -> int | None:
        deadline = time.monotonic() + HEALTH_TIMEOUT
        while not self._stopping:
            dead = self._dead_child()
            if dead:
                return self._report_death(dead)
            if http_ok(f"{base}/healthz"):
                return None
            if time.monotonic() > deadline:
                self.keep_workdir = True
                print(f"valetkey: the web process did not answer {base}/healthz within {HEALTH_TIMEOUT:.0f}s; "
                      f"see {self.workdir}/web.log", file=sys.stderr, flush=True)
                return 1
            time.sleep(0.25)
        return None

    def _banner(self, base: str, moto_url: str, own_url: str, target_urls: dict[str, str],
                passwords: dict[str, str], tokens: dict[str, str], webhook_secret: str, seeded: list[Any],
                windows: list[str]) -> None:
        width = max(len(a.email) for a in ACCOUNTS) + 2
        self.say()
        self.say(f"Valet Key demo is ready: {base}")
        self.say()
        self.say("Sign in with one of these accounts:")
        self.say(f"  {'e-mail':<{width}}{'password':<24}role")
        for a in ACCOUNTS:
            self.say(f"  {a.email:<{width}}{passwords[a.email]:<24}{a.describe()}")
        self.say()
        self.say("API tokens, for scripts and curl (-H 'Authorization: Bearer TOKEN'):")
        for a in ACCOUNTS:
            self.say(f"  {a.email:<{width}}{tokens[a.email]}")
        self.say(f"  e.g. curl -H 'Authorization: Bearer {tokens[ACCOUNTS[0].email]}' {base}/api/v1/environments")
        self.say(f"Webhook secret of staging (STAGING_WEBHOOK_SECRET):  {webhook_secret}")
        self.say()
        self.say("Environments:")
        for s in seeded:
            e = s.spec
            bits = [", ".join(svc.name for svc in e.services), f"run tasks: {', '.join(e.run_task_families)}"]
            if e.redis_env:
                bits.append(f"Redis target 'cache' = {where(target_urls[e.redis_env])}")
            if e.scheduled:
                bits.append(f"schedule: up {' and '.join(windows)} UTC")
            state = "" if e.enabled else " [disabled]"
            self.say(f"  {e.name}{state} ({e.region}, cluster {e.cluster}): " + "; ".join(bits))
        self.say("ECS runs in a simulator at real speed: tasks take 10-30 s to start and restarts tens of "
                 "seconds; staging's pdf-renderer crash-loops (OOM, exit 137) and staging-backfill-invoices "
                 "exits 2, to show how failures are explained.")
        self.say()
        self.say(f"Valet Key's own Redis (private to the demo, gone on exit): {where(own_url)}")
        self.say(f"AWS stand-in (moto): {moto_url}  e.g. aws --endpoint-url {moto_url} ecs list-services "
                 "--cluster staging")
        self.say(f"Files (environments.toml, demo.db, *.log): {self.workdir}")
        self.say("Press Ctrl-C to stop.")

    def _supervise(self) -> int:
        while not self._stopping:
            dead = self._dead_child()
            if dead:
                return self._report_death(dead)
            time.sleep(0.25)
        self.say("Stopping the demo ...")
        return 0

    # -- shut-down ----------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop everything that was started, whatever state the start-up reached."""
        if self.demo_logs is not None:
            self.demo_logs.stop()
        self._stop_children()
        if self.sim is not None:
            import ecssim.realtime

            ecssim.realtime.stop()
        if self.moto is not None:
            try:
                self.moto.stop()
            except Exception as e:  # noqa: BLE001 - shutting down anyway
                log.debug("stopping moto: %s", e)
        if self.redis_proc is not None:
            self._stop_group(self.redis_proc, STOP_TIMEOUT)
        for f in self._logs:
            f.close()
        if self.workdir is not None and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _stop_children(self) -> None:
        for p in self.procs.values():
            if p.returncode is None:
                _signal_group(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for p in self.procs.values():
            self._stop_group(p, max(0.1, deadline - time.monotonic()), signalled=True)

    @staticmethod
    def _stop_group(p: subprocess.Popen[bytes], timeout: float, signalled: bool = False) -> None:
        if p.returncode is not None:
            return  # reaped long ago: its group id may belong to someone else by now
        if not signalled:
            _signal_group(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while not exited(p) and time.monotonic() < deadline:
            time.sleep(0.05)
        # The leader is running or an unreaped zombie, so its group id is still ours:
        # kill whatever is left in the group (everything after a timeout, else a
        # stuck gunicorn worker at most), then reap the leader.
        _signal_group(p.pid, signal.SIGKILL)
        p.wait(5)


def exited(p: subprocess.Popen[bytes]) -> bool:
    """Whether the child has exited, without reaping it (so its process group id stays reserved)."""
    if p.returncode is not None:
        return True
    if hasattr(os, "waitid"):
        try:
            return os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True
    return p.poll() is not None


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def demo_logins(passwords: dict[str, str]) -> str:
    """VALETKEY_DEMO_LOGINS for the demo's web process: one sign-in button per demo account.

    Only ``valetkey demo`` sets it; the web app shows the buttons only when it is set.
    """
    return json.dumps([{"email": a.email, "password": passwords[a.email], "name": a.name,
                        "roles": a.describe()} for a in ACCOUNTS])


def run_demo(port: int) -> int:
    """Run the demo until Ctrl-C or SIGTERM; 0 after a clean stop, 1 when it could not start or a part died."""
    demo = Demo(port)
    try:
        return demo.run()
    finally:
        demo.shutdown()
