"""The ``valetkey`` command line (Contract: command line).

Every command reports a configuration problem as one line naming file, key
and reason, and exits 2; other refusals exit 1 with one line. No traceback
reaches the terminal for an error we know about.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Callable, Sequence

from scope.errors import ConfigError, ValetKeyError
from scope.settings import Settings

Handler = Callable[[argparse.Namespace], int]


def _runtime(with_broker: bool = False) -> Any:
    from wiring.runtime import Runtime

    return Runtime.from_settings(Settings.from_env(os.environ), with_broker=with_broker)


def _cli_actor() -> str:
    return os.environ.get("VALETKEY_CLI_ACTOR") or f"cli:{_whoami()}"


def _whoami() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return "unknown"


# ---- commands -----------------------------------------------------------------
def cmd_db_upgrade(a: argparse.Namespace) -> int:
    from scope.db import make_engine
    from scope.migrate import upgrade

    settings = Settings.from_env(os.environ)
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
    except Exception as e:  # noqa: BLE001 - report the database problem in one line
        raise ValetKeyError(f"database upgrade failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
    finally:
        engine.dispose()
    print("database is up to date")
    return 0


def _when(t: Any) -> str:
    from scope.times import iso

    return iso(t, "seconds") if t is not None else "never"


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


def cmd_user_add(a: argparse.Namespace) -> int:
    from wiring.access_changes import add_user

    rt = _runtime()
    password = None
    if a.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise ValetKeyError("no password on standard input")
    user = add_user(rt, a.email, a.name or "", password, actor=_cli_actor(), source="cli")
    print(f"added {user.email}")
    return 0


def cmd_user_list(a: argparse.Namespace) -> int:
    rt = _runtime()
    _table(("EMAIL", "NAME", "STATUS", "LOGIN", "CREATED", "LAST SIGN-IN"),
           [(u.email, u.name, "disabled" if u.disabled else "active", "password" if u.password_hash else "sso",
             _when(u.created_at), _when(u.last_login_at)) for u in rt.users.list_users()])
    return 0


def cmd_user_disable(a: argparse.Namespace) -> int:
    from wiring.access_changes import disable_user

    user, changed = disable_user(_runtime(), a.email, actor=_cli_actor(), source="cli")
    print(f"disabled {user.email}: sessions and API tokens stop working" if changed
          else f"{user.email} was already disabled")
    return 0


def cmd_grant(a: argparse.Namespace) -> int:
    from scope.models import utcnow
    from scope.times import iso, parse_duration
    from wiring.access_changes import add_grant

    expires_at = None
    if a.duration:
        try:
            expires_at = utcnow() + parse_duration(a.duration)
        except ValueError as e:
            raise ValetKeyError(f"--for: {e}") from None
    rt = _runtime()
    grant, created = add_grant(rt, a.subject, a.environment, a.role, actor=_cli_actor(), source="cli",
                               expires_at=expires_at, reason=a.reason)
    if created:
        until = f" until {iso(grant.expires_at)}" if grant.expires_at else ""
        print(f"granted {grant.role} in {grant.environment} to {grant.subject}{until}")
    else:
        print(f"{grant.subject} already holds {grant.role} in {grant.environment}")
    return 0


def cmd_revoke(a: argparse.Namespace) -> int:
    from wiring.access_changes import remove_grant

    rt = _runtime()
    gone = remove_grant(rt, a.subject, a.environment, a.role, actor=_cli_actor(), source="cli")
    for g in gone:
        print(f"revoked {g.role} in {g.environment} from {g.subject}")
    if not gone:
        print("no matching grant", file=sys.stderr)
        return 1
    return 0


def cmd_token_create(a: argparse.Namespace) -> int:
    from scope.times import parse_duration
    from wiring.access_changes import create_token

    try:
        ttl = parse_duration(a.expires_in) if a.expires_in is not None else None
    except ValueError as e:
        raise ValetKeyError(f"--expires-in: {e}") from None
    rt = _runtime()
    tok, clear = create_token(rt, a.email, a.name or "", actor=_cli_actor(), source="cli", expires_in=ttl)
    print(f"token {tok.id} for {a.email}, expires {_when(tok.expires_at)} (shown once, store it now):",
          file=sys.stderr)
    print(clear)
    return 0


def cmd_token_list(a: argparse.Namespace) -> int:
    from scope.times import utcnow

    rt = _runtime()
    if a.email and rt.users.by_email(a.email) is None:
        raise ValetKeyError(f"no user {a.email}")
    now = utcnow()
    _table(("ID", "USER", "NAME", "STATUS", "CREATED", "EXPIRES", "LAST USED"),
           [(str(t.id), email, t.name or "-",
             "revoked" if t.revoked_at else "expired" if t.expires_at <= now else "active",
             _when(t.created_at), _when(t.expires_at), _when(t.last_used_at))
            for t, email in rt.users.list_tokens(a.email)])
    return 0


def cmd_token_revoke(a: argparse.Namespace) -> int:
    from wiring.access_changes import revoke_token

    tok, email, changed = revoke_token(_runtime(), a.id, actor=_cli_actor(), source="cli")
    print(f"revoked token {tok.id} of {email}" if changed else f"token {tok.id} of {email} was already revoked")
    return 0


def cmd_web(a: argparse.Namespace) -> int:
    from valetkey.serve import serve

    serve(bind=a.bind, workers=a.workers, threads=a.threads)
    return 0


def cmd_worker(a: argparse.Namespace) -> int:
    from valetkey.process import stop_event

    stop = stop_event()  # before the heavy imports: a SIGTERM during start-up still stops cleanly
    from workers.process import run_worker

    run_worker(_runtime(with_broker=True), stop, threads=a.threads)
    return 0


def cmd_audit_consume(a: argparse.Namespace) -> int:
    from valetkey.process import stop_event

    stop = stop_event()  # before the heavy imports: a SIGTERM during start-up still stops cleanly
    from audit.exporter import Exporter
    from audit.retention import Retention

    rt = _runtime()
    settings = rt.settings
    Exporter(rt.redis, rt.sessions, claim_idle_ms=settings.audit_claim_idle_ms,
             retention=Retention(settings.audit_retention_days)).run(stop)
    rt.close()
    return 0


def _audit_sessions() -> Any:
    """Only the database: reading the audit trail needs no catalog (whose Redis target URLs and
    secrets would have to be set), no Redis and no AWS."""
    from scope.db import make_engine, make_sessionmaker

    engine = make_engine(Settings.from_env(os.environ).database_url)
    return engine, make_sessionmaker(engine)


def cmd_audit_verify(a: argparse.Namespace) -> int:
    if a.file:
        return _verify_file(a.file, a.allow_gaps)
    from audit.queries import verify_chain

    engine, sessions = _audit_sessions()
    try:
        res = verify_chain(sessions)
    finally:
        engine.dispose()
    if res.ok:
        # The head hash, written down elsewhere, later proves that nothing at the end was cut off.
        print(f"audit chain intact: {res.checked} entries; head: entry {res.head_id} hash {res.head_hash}")
        return 0
    print(f"audit chain BROKEN at entry {res.bad_id}: {res.reason} ({res.checked} entries verified before it)",
          file=sys.stderr)
    return 3


def _verify_file(path: str, allow_gaps: bool) -> int:
    """An export checked offline: no settings, database, Redis or AWS."""
    from audit.exportfile import summary, verify_file

    try:
        with open(path, encoding="utf-8", newline="") as f:
            res = verify_file(f, allow_gaps=allow_gaps)
    except (OSError, UnicodeDecodeError) as e:
        raise ValetKeyError(f"cannot read {path}: {e}") from e
    print(summary(res), file=sys.stdout if res.ok else sys.stderr)
    return 0 if res.ok else 3


def cmd_audit_export(a: argparse.Namespace) -> int:
    from audit.export import write_export
    from audit.queries import AuditFilter
    from scope.errors import ValidationFailed

    try:
        flt = AuditFilter.parse({k: v for k, v in (("environment", a.environment), ("actor", a.actor),
                                                      ("action", a.action), ("outcome", a.outcome),
                                                      ("since", a.since), ("until", a.until)) if v})
    except ValidationFailed as e:
        raise ValetKeyError("; ".join(f"--{k}: {' '.join(map(str, v))}" for k, v in e.fields.items())) from e
    engine, sessions = _audit_sessions()
    try:
        out = sys.stdout.buffer
        for chunk in write_export(sessions, flt, a.format):
            out.write(chunk)
        out.flush()
    finally:
        engine.dispose()
    return 0


def cmd_schedule_run(a: argparse.Namespace) -> int:
    from valetkey.process import stop_event

    stop = stop_event()  # before the heavy imports: a SIGTERM during start-up still stops cleanly
    from workers.schedule_reconciler import run_scheduler

    run_scheduler(_runtime(), stop)
    return 0


def cmd_iam_policy(a: argparse.Namespace) -> int:
    import json

    from cloud.iam_policy import (
        MANAGED_POLICY_MAX_CHARS,
        discover,
        gaps,
        policies_for,
        policy_size,
    )
    from scope.catalog import Catalog, load_catalog

    settings = Settings.from_env(os.environ)
    catalog = load_catalog(settings.environments_path, settings.environ, own_redis_url=settings.redis_url)
    if a.environment:
        unknown = sorted(set(a.environment) - set(catalog.environments))
        if unknown:
            raise ValetKeyError(f"no environment named {unknown[0]!r} in {catalog.path}")
        catalog = Catalog(catalog.path, {n: e for n, e in catalog.environments.items() if n in a.environment})
    warnings: list[str] = []
    task_roles: dict[str, list[str]] | None = None
    log_groups: dict[str, list[str]] | None = None
    repositories: dict[str, list[str]] | None = None
    if not a.offline:
        from cloud.aws import AwsClients

        found = discover(catalog, AwsClients(), partition=a.partition)
        task_roles, log_groups, warnings, repositories = (found.task_roles, found.log_groups, found.warnings,
                                                          found.repositories)
    policies = policies_for(catalog, account=a.account, partition=a.partition,
                            task_roles=task_roles, log_groups=log_groups, repositories=repositories)
    seen = set(warnings)
    for w in warnings + [g for g in gaps(catalog, task_roles, log_groups, repositories) if g not in seen]:
        print(f"valetkey: warning: {w}", file=sys.stderr)
    if len(policies) == 1:
        print(json.dumps(policies[0], indent=2))
        return 0
    # Over IAM's managed-policy quota: a JSON list of documents, each within it; attach all of them.
    sizes = ", ".join(str(policy_size(p)) for p in policies)
    print(f"valetkey: note: the permissions exceed one managed policy ({MANAGED_POLICY_MAX_CHARS} characters): "
          f"printed as a JSON list of {len(policies)} policies ({sizes} characters); attach each of them",
          file=sys.stderr)
    print(json.dumps(policies, indent=2))
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from valetkey.demo import run_demo

    return run_demo(port=a.port)


# ---- parser -------------------------------------------------------------------
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("valetkey")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="valetkey", description="Valet Key: scoped, audited operations on ECS.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}", help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Handler, help: str, parent: Any = sub) -> argparse.ArgumentParser:
        sp = parent.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        return sp

    demo = add("demo", cmd_demo, "run the whole system locally with a stand-in for AWS")
    demo.add_argument("--port", type=int, default=8000, help="port of the web app (default: 8000)")

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_command", required=True)
    add("upgrade", cmd_db_upgrade, "create or migrate the schema", db)

    user = sub.add_parser("user", help="local accounts").add_subparsers(dest="user_command", required=True)
    ua = add("add", cmd_user_add, "add a local account", user)
    ua.add_argument("email", help="the account's e-mail address")
    ua.add_argument("--name", help="display name (default: the part of the e-mail before @)")
    ua.add_argument("--password-stdin", action="store_true",
                    help="read the password (12 characters or more) from the first line of stdin; "
                         "without it the account can only sign in with SSO")
    add("list", cmd_user_list, "list accounts: e-mail, name, status, last sign-in", user)
    ud = add("disable", cmd_user_disable, "disable an account: its sessions and API tokens stop at once", user)
    ud.add_argument("email", help="the account's e-mail address")

    g = add("grant", cmd_grant, "give SUBJECT (e-mail or group:NAME) ROLE in ENV ('*' for auditor/admin)")
    g.add_argument("subject", help="an e-mail address or group:NAME (an SSO group)")
    g.add_argument("environment", help="an environment name, or '*' for the global roles")
    g.add_argument("role", help="viewer, developer or operator; auditor or admin with '*'")
    g.add_argument("--for", dest="duration", metavar="DURATION",
                   help="time-boxed: the grant stops counting after this long (e.g. 8h, 2d)")
    g.add_argument("--reason", default="", help="why (kept with the grant and its audit entry)")
    r = add("revoke", cmd_revoke, "take SUBJECT's role (or all roles) in ENV away")
    r.add_argument("subject", help="an e-mail address or group:NAME")
    r.add_argument("environment", help="an environment name, or '*'")
    r.add_argument("role", nargs="?", help="only this role (default: every role SUBJECT holds in ENV)")

    tok = sub.add_parser("token", help="API tokens").add_subparsers(dest="token_command", required=True)
    tc = add("create", cmd_token_create, "create an API token; printed once as the last line", tok)
    tc.add_argument("email", help="the user the token acts as")
    tc.add_argument("--name", help="what the token is for, shown in listings (e.g. ci-orders-api)")
    tc.add_argument("--expires-in", metavar="DURATION",
                    help="lifetime: a number with unit s, m, h, d or w, like 30d "
                         "(default: VALETKEY_TOKEN_TTL_DAYS days, 90 unless set)")
    tl = add("list", cmd_token_list, "list tokens: id, user, name, created, expires, last used (never the secret)",
             tok)
    tl.add_argument("email", nargs="?", help="only this user's tokens")
    tr = add("revoke", cmd_token_revoke, "revoke a token at once", tok)
    tr.add_argument("id", type=int, help="the token's id (from 'valetkey token list')")

    w = add("web", cmd_web, "serve the web app and API with gunicorn")
    w.add_argument("--bind", default=f"0.0.0.0:{os.environ.get('PORT', '8000')}",
                   help="HOST:PORT to listen on (default: 0.0.0.0:$PORT, 8000 without PORT)")
    w.add_argument("--workers", type=int, default=2, help="gunicorn worker processes (default: 2)")
    w.add_argument("--threads", type=int, default=16, help="threads per worker process (default: 16)")
    wk = add("worker", cmd_worker, "run jobs from the queue")
    wk.add_argument("--threads", type=int, default=None,
                    help="job threads (default: 16; a job waiting on ECS holds none, a step waits on AWS calls)")

    au = sub.add_parser("audit", help="the audit trail").add_subparsers(dest="audit_command", required=True)
    add("consume", cmd_audit_consume, "the exporter: audit stream -> database", au)
    av = add("verify", cmd_audit_verify, "check the hash chain; non-zero naming the first bad entry", au)
    av.add_argument("--file", metavar="EXPORT", help="check a CSV or JSON export offline instead (no database)")
    av.add_argument("--allow-gaps", action="store_true",
                    help="with --file: the export was filtered; check each entry's hash across gaps in the ids")
    ex = add("export", cmd_audit_export, "write audit entries to stdout", au)
    ex.add_argument("--format", choices=["csv", "json"], default="csv", help="output format (default: csv)")
    for f, what in (("environment", "only this environment"), ("actor", "only this person or caller"),
                    ("action", "only this action, like service.restart"),
                    ("outcome", "only requested, succeeded, failed or denied"),
                    ("since", "from this time: ISO 8601 or an age like 7d"),
                    ("until", "up to this time: ISO 8601 or an age like 1h")):
        ex.add_argument(f"--{f}", help=what)

    sc = sub.add_parser("schedule", help="on/off schedules").add_subparsers(dest="schedule_command", required=True)
    add("run", cmd_schedule_run, "the scheduler process", sc)

    iam = add("iam-policy", cmd_iam_policy, "print the least-privilege IAM policy for the configured environments")
    iam.add_argument("--account", default="*", help="AWS account id to put in ARNs (default: any)")
    iam.add_argument("--partition", default="aws", help="ARN partition (default: aws; a role_arn's wins)")
    iam.add_argument("--offline", action="store_true",
                     help="do not ask AWS for task roles and log groups (no iam:PassRole; logs on /ecs/*)")
    iam.add_argument("--environment", action="append", metavar="NAME",
                     help="only this environment (repeatable); default: all")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("VALETKEY_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"valetkey: configuration error: {e.file}: {e.key}: {e.reason}", file=sys.stderr)
        return 2
    except ValetKeyError as e:
        print(f"valetkey: {e.detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
