"""The audit exporter (stream -> hash-chained rows), the chain verifier, and retention.

Runs on SQLite and PostgreSQL (the ``db_url`` fixture) against real Redis;
the last tests start the real ``valetkey audit consume`` / ``audit verify``
processes and SIGKILL the exporter in the middle of a run.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import redis as redis_lib
from sqlalchemy import select, text

from audit.chain import GENESIS, PURGE_ACTION, entry_hash, purge_anchor
from audit.exporter import GROUP, Exporter
from audit.queries import verify_chain
from audit.retention import LOCK_KEY, Retention, purge
from jobs.audit_stream import STREAM, AuditEvent
from scope.db import make_engine, make_sessionmaker
from scope.models import AuditEntry
from wiring.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent


# ---- helpers (also used by test_audit_api.py) ---------------------------------------------
def event(i: int = 0, **kw: Any) -> AuditEvent:
    base: dict[str, Any] = dict(actor="dev@acme.test", source="api", action="service.restart", outcome="requested",
                                environment="staging", target="orders-api", detail=f"event {i}", job_id=f"{i:032x}")
    base.update(kw)
    return AuditEvent(**base)


def exporter(rt: Runtime, **kw: Any) -> Exporter:
    kw.setdefault("block_ms", 1)
    kw.setdefault("claim_idle_ms", 60_000)
    return Exporter(rt.redis, rt.sessions, **kw)


def export_all(rt: Runtime, ex: Exporter | None = None) -> int:
    """Run an exporter until the stream has nothing more for it; returns how many entries it handled."""
    ex = ex or exporter(rt)
    total = 0
    while n := ex.step():
        total += n
    return total


def rows(rt: Runtime) -> list[Any]:
    with rt.sessions() as s:
        return list(s.execute(select(AuditEntry.__table__).order_by(AuditEntry.id)))


def sql(rt: Runtime, statement: str, **params: Any) -> None:
    with rt.engine.begin() as c:
        c.execute(text(statement), params)


def pending(rt: Runtime) -> int:
    return int(rt.redis.xpending(STREAM, GROUP)["pending"])


def ago(days: float) -> str:
    return (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)).isoformat().replace("+00:00", "Z")


# ---- exactly once ---------------------------------------------------------------------------
def test_every_event_becomes_one_chained_row(rt):
    for i in range(7):
        rt.audit.record(event(i, before={"image": "sha:1", "running": 2}, after={"image": "sha:2", "running": 2}))
    assert export_all(rt) == 7
    got = rows(rt)
    assert [r.detail for r in got] == [f"event {i}" for i in range(7)]
    assert [r.id for r in got] == list(range(1, 8))
    assert got[0].prev_hash == GENESIS and all(b.prev_hash == a.hash for a, b in zip(got, got[1:]))
    assert all(entry_hash(r, r.prev_hash) == r.hash for r in got)
    assert got[0].before == {"image": "sha:1", "running": 2} and got[0].after["image"] == "sha:2"
    assert pending(rt) == 0
    res = verify_chain(rt.sessions)
    assert res.ok and res.checked == 7 and res.head_id == 7 and res.head_hash == got[-1].hash


def test_events_appended_before_the_first_exporter_are_exported(rt):
    rt.audit.record(event(1))  # no consumer group exists yet
    assert export_all(rt) == 1 and len(rows(rt)) == 1


def test_commit_without_ack_is_redelivered_and_inserted_once(rt):
    """A crash between the commit and the XACK: the entries are reclaimed, found stored, acked."""
    for i in range(5):
        rt.audit.record(event(i))
    dead = exporter(rt, consumer="dead")
    dead.ensure_group()
    entries = rt.redis.xreadgroup(GROUP, "dead", {STREAM: ">"}, count=10)[0][1]
    dead.store(entries)  # committed, then the process "dies" before acking
    assert len(rows(rt)) == 5 and pending(rt) == 5

    time.sleep(0.2)
    assert export_all(rt, exporter(rt, consumer="heir", claim_idle_ms=100)) == 5
    assert len(rows(rt)) == 5 and pending(rt) == 0
    assert verify_chain(rt.sessions).ok


def test_entries_of_a_dead_exporter_are_reclaimed_only_after_the_idle_time(rt):
    for i in range(3):
        rt.audit.record(event(i))
    exporter(rt).ensure_group()
    rt.redis.xreadgroup(GROUP, "dead", {STREAM: ">"}, count=10)  # read, never stored
    heir = exporter(rt, consumer="heir", claim_idle_ms=1500)
    assert heir.step() == 0 and rows(rt) == []  # still within the dead one's idle time
    time.sleep(1.6)
    assert export_all(rt, heir) == 3
    assert [r.detail for r in rows(rt)] == ["event 0", "event 1", "event 2"] and pending(rt) == 0


def test_a_failed_batch_is_retried_at_once_by_the_same_exporter(rt, tmp_path):
    for i in range(4):
        rt.audit.record(event(i))
    broken = make_engine(f"sqlite:///{tmp_path / 'no-tables.db'}")  # no schema: every insert fails
    ex = exporter(rt, claim_idle_ms=3_600_000)
    ex.sessions = make_sessionmaker(broken)
    with pytest.raises(Exception):
        ex.step()
    assert pending(rt) == 4  # nothing acknowledged
    ex.sessions = rt.sessions  # the database is back
    assert export_all(rt, ex) == 4  # its own pending entries, without waiting an hour for XAUTOCLAIM
    assert len(rows(rt)) == 4 and pending(rt) == 0
    broken.dispose()


def test_malformed_stream_entries_are_recorded_not_dropped(rt):
    rt.audit.record(event(1))
    rt.redis.xadd(STREAM, {"event": "{not json"})
    rt.redis.xadd(STREAM, {"event": '{"actor": "x", "time": "yesterday"}'})
    rt.audit.record(event(2))
    assert export_all(rt) == 4
    got = rows(rt)
    assert [r.detail for r in (got[0], got[3])] == ["event 1", "event 2"]
    assert got[1].detail.startswith("malformed audit stream entry: {not json") and got[1].outcome == "failed"
    assert got[2].detail.startswith("malformed") and pending(rt) == 0
    assert verify_chain(rt.sessions).ok


def test_values_every_backend_can_store(rt):
    """Over-long, NUL and non-UTC values are made storable instead of blocking the exporter forever."""
    rt.audit.record(event(1, actor="a" * 400 + "@acme.test", detail="nul\x00byte", job_id="x" * 40,
                          time="2026-11-24T20:00:00.5+02:00", before={"ratio": float("nan")}))
    assert export_all(rt) == 1
    r = rows(rt)[0]
    assert len(r.actor) == 320 and r.detail == "nulbyte" and len(r.job_id) == 32
    assert r.time == dt.datetime(2026, 11, 24, 18, 0, 0, 500000, tzinfo=dt.timezone.utc)
    assert r.before == {"ratio": None}
    assert verify_chain(rt.sessions).ok


# ---- trimming -------------------------------------------------------------------------------
def test_trim_keeps_every_entry_not_yet_acknowledged(rt):
    for i in range(6):
        rt.audit.record(event(i))
    ex = exporter(rt, claim_idle_ms=1000)
    ex.ensure_group()
    held = rt.redis.xreadgroup(GROUP, "dead", {STREAM: ">"}, count=2)[0][1]  # 0 and 1 pending elsewhere
    assert ex.step() == 4  # 2..5 stored and acked
    ex.trim()
    left = [i for i, _ in rt.redis.xrange(STREAM)]
    assert left[:2] == [i for i, _ in held]  # the unacknowledged ones survive (and what follows them)
    rt.audit.record(event(6))  # appended, not yet delivered
    time.sleep(1.1)
    export_all(rt, ex)
    ex.trim()
    assert rt.redis.xlen(STREAM) == 0 and len(rows(rt)) == 7


def test_trim_never_drops_undelivered_entries(rt):
    rt.audit.record(event(1))
    ex = exporter(rt)
    export_all(rt, ex)
    rt.audit.record(event(2))  # after the last delivery
    ex.trim()
    assert rt.redis.xlen(STREAM) == 1
    export_all(rt, ex)
    assert [r.detail for r in rows(rt)] == ["event 1", "event 2"]


def test_dead_consumers_holding_nothing_are_forgotten(rt):
    ex = exporter(rt)
    ex.ensure_group()
    rt.redis.xreadgroup(GROUP, "long-gone", {STREAM: ">"}, count=1)
    ex.forget_dead_consumers(idle_ms=0)
    names = [c["name"] for c in rt.redis.xinfo_consumers(STREAM, GROUP)]
    assert "long-gone" not in names and "long-gone".encode() not in names


# ---- concurrency: two exporters never fork the chain ------------------------------------------
def test_two_exporters_in_parallel_share_the_stream_without_forking(rt, db_url):
    engines = [make_engine(db_url) for _ in range(2)]
    exporters = [Exporter(redis_lib.Redis.from_url(rt.settings.redis_url), make_sessionmaker(e),
                          consumer=f"exp{i}", batch=7, block_ms=20, claim_idle_ms=60_000)
                 for i, e in enumerate(engines)]
    exporters[0].ensure_group()
    stop = threading.Event()
    errors: list[BaseException] = []

    def work(ex: Exporter) -> None:
        while not stop.is_set():
            try:
                ex.step()
            except BaseException as e:  # noqa: BLE001 - reported by the test
                errors.append(e)
                return

    threads = [threading.Thread(target=work, args=(ex,)) for ex in exporters]
    for t in threads:
        t.start()
    for i in range(200):
        rt.audit.record(event(i))
    deadline = time.monotonic() + 60
    while len(rows(rt)) < 200 and time.monotonic() < deadline and not errors:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(10)
    for e in engines:
        e.dispose()
    assert not errors, errors
    got = rows(rt)
    assert sorted(r.detail for r in got) == sorted(f"event {i}" for i in range(200))
    assert [r.id for r in got] == list(range(1, 201))
    assert verify_chain(rt.sessions).ok and pending(rt) == 0


def test_concurrent_stores_of_the_same_entries_insert_them_once(rt, db_url):
    """Worst case for the head lock: two exporters store the very same batch at the same moment."""
    for i in range(30):
        rt.audit.record(event(i))
    exporter(rt).ensure_group()
    entries = rt.redis.xreadgroup(GROUP, "a", {STREAM: ">"}, count=30)[0][1]
    engines = [make_engine(db_url) for _ in range(4)]
    barrier = threading.Barrier(4)
    results: list[Any] = []

    def store(e: Any, chunk: list[Any]) -> None:
        ex = Exporter(rt.redis, make_sessionmaker(e), consumer="x")
        barrier.wait()
        try:
            results.append(ex.store(chunk))
        except BaseException as err:  # noqa: BLE001
            results.append(err)

    chunks = [entries, entries[::-1], entries[10:], entries[:20]]
    threads = [threading.Thread(target=store, args=(e, c)) for e, c in zip(engines, chunks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for e in engines:
        e.dispose()
    assert all(isinstance(n, int) for n in results), results
    assert sum(results) == 30
    got = rows(rt)
    assert len(got) == 30 and len({r.stream_id for r in got}) == 30
    assert verify_chain(rt.sessions).ok


# ---- verify: every edit or deletion is found ------------------------------------------------
@pytest.fixture
def chain(rt) -> Runtime:
    for i in range(6):
        rt.audit.record(event(i))
    export_all(rt)
    assert verify_chain(rt.sessions).ok
    return rt


def test_verify_names_an_edited_entry(chain):
    sql(chain, "UPDATE audit_entries SET detail = 'nothing happened' WHERE id = 3")
    res = verify_chain(chain.sessions)
    assert not res.ok and res.bad_id == 3 and "altered" in res.reason


@pytest.mark.parametrize("column,value", [("actor", "someone@else.test"), ("outcome", "succeeded"),
                                          ("time", "2020-01-01 00:00:00"), ("stream_id", "1-1")])
def test_verify_notices_any_column_edit(chain, column, value):
    sql(chain, f"UPDATE audit_entries SET {column} = :v WHERE id = 4", v=value)
    res = verify_chain(chain.sessions)
    assert not res.ok and res.bad_id == 4


def test_verify_names_the_entry_after_a_deleted_one(chain):
    sql(chain, "DELETE FROM audit_entries WHERE id = 3")
    res = verify_chain(chain.sessions)
    assert not res.ok and res.bad_id == 4 and "deleted" in res.reason


def test_verify_names_the_entry_after_one_whose_hash_was_recomputed(chain):
    r = rows(chain)[2]
    forged = {**r._mapping, "detail": "forged"}
    sql(chain, "UPDATE audit_entries SET detail = 'forged', hash = :h WHERE id = 3",
        h=entry_hash(forged, r.prev_hash))
    res = verify_chain(chain.sessions)
    assert not res.ok and res.bad_id == 4


def test_verify_detects_deleting_the_last_entries_through_the_head(chain):
    sql(chain, "DELETE FROM audit_entries WHERE id >= 5")
    res = verify_chain(chain.sessions)
    assert not res.ok and res.bad_id == 5 and "end" in res.reason


def test_verify_detects_deleting_the_first_entries(chain):
    sql(chain, "DELETE FROM audit_entries WHERE id <= 2")
    res = verify_chain(chain.sessions)
    assert not res.ok and res.bad_id == 3 and "no purge entry" in res.reason


def test_verify_detects_deleting_everything(chain):
    sql(chain, "DELETE FROM audit_entries")
    assert not verify_chain(chain.sessions).ok


def test_verify_while_exporters_keep_appending(chain):
    """A walk stops at the head it read first: rows appended meanwhile are no false alarm."""
    stop = threading.Event()
    ex = exporter(chain, consumer="busy")

    def append() -> None:
        i = 100
        while not stop.is_set():
            chain.audit.record(event(i))
            ex.step()
            i += 1

    t = threading.Thread(target=append)
    t.start()
    try:
        for _ in range(5):
            assert verify_chain(chain.sessions).ok
    finally:
        stop.set()
        t.join(10)
    assert len(rows(chain)) > 6 and verify_chain(chain.sessions).ok


# ---- retention ----------------------------------------------------------------------------
@pytest.fixture
def aged(rt) -> Runtime:
    """Ten entries: four 100 days old, one 95 days old but logged after a newer one, five recent."""
    for i in range(4):
        rt.audit.record(event(i, time=ago(100 - i)))
    rt.audit.record(event(4, time=ago(1)))
    rt.audit.record(event(5, time=ago(95)))  # a late, old entry: kept until the prefix reaches it
    for i in range(6, 10):
        rt.audit.record(event(i, time=ago(0)))
    export_all(rt)
    return rt


def test_purge_deletes_the_old_prefix_and_records_itself(aged):
    res = purge(aged.sessions, days=90)
    assert res is not None and (res.count, res.first_id, res.last_id) == (4, 1, 4)
    got = rows(aged)
    assert [r.id for r in got] == [5, 6, 7, 8, 9, 10, 11]
    entry = got[-1]
    assert (entry.action, entry.outcome, entry.source, entry.environment) == (PURGE_ACTION, "succeeded",
                                                                             "scheduler", "")
    assert "4 entries" in entry.detail and purge_anchor(entry.detail) == (4, res.anchor_hash)
    assert got[0].prev_hash == res.anchor_hash
    res2 = verify_chain(aged.sessions)
    assert res2.ok and res2.checked == 7


def test_purge_with_nothing_old_records_nothing(rt):
    rt.audit.record(event(1))
    export_all(rt)
    assert purge(rt.sessions, days=90) is None and len(rows(rt)) == 1


def test_after_purges_an_unrecorded_deletion_is_still_found(aged):
    purge(aged.sessions, days=90)
    sql(aged, "DELETE FROM audit_entries WHERE id = 5")  # the first row the purge kept
    res = verify_chain(aged.sessions)
    assert not res.ok and res.bad_id == 6 and "newest purge ended at entry 4" in res.reason


def test_later_purges_move_the_anchor_and_the_chain_still_verifies(aged):
    first = purge(aged.sessions, days=90)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=100)
    second = purge(aged.sessions, days=90, now=later)  # everything is old by then, the first purge entry too
    assert first and second and second.first_id == 5
    got = rows(aged)
    assert len(got) == 1 and got[0].action == PURGE_ACTION and got[0].prev_hash == second.anchor_hash
    assert verify_chain(aged.sessions).ok
    export_all(aged)
    aged.audit.record(event(99))
    export_all(aged)
    assert verify_chain(aged.sessions).ok


def test_a_forged_purge_entry_does_not_hide_a_deletion(aged):
    """Deleting old rows and writing a purge-like detail into a kept row breaks that row's hash."""
    victim = rows(aged)[3]
    sql(aged, "DELETE FROM audit_entries WHERE id <= 3")
    sql(aged, "UPDATE audit_entries SET action = :a, detail = :d WHERE id = 10",
        a=PURGE_ACTION, d=f"the chain continues after entry 3 (hash {victim.prev_hash})")
    res = verify_chain(aged.sessions)
    assert not res.ok and res.bad_id == 10


def test_daily_purge_runs_once_across_exporters(aged):
    ret = Retention(days=90)
    assert ret.run_daily(aged.redis, aged.sessions) is not None
    assert Retention(days=1).run_daily(aged.redis, aged.sessions) is None  # another exporter, same day
    assert 3600 < aged.redis.ttl(LOCK_KEY) <= 24 * 3600
    assert sum(r.action == PURGE_ACTION for r in rows(aged)) == 1


def test_a_failed_purge_releases_the_daily_lock(rt, tmp_path):
    broken = make_engine(f"sqlite:///{tmp_path / 'no-tables.db'}")
    with pytest.raises(Exception):
        Retention(days=90).run_daily(rt.redis, make_sessionmaker(broken))
    assert not rt.redis.exists(LOCK_KEY)
    broken.dispose()


def test_the_exporter_loop_runs_the_purge(aged):
    aged.audit.record(event(50))
    ex = exporter(aged, retention=Retention(days=90))
    assert ex.step() == 1
    got = rows(aged)
    assert got[-1].action == PURGE_ACTION and got[0].id == 5
    assert verify_chain(aged.sessions).ok


# ---- the real processes ---------------------------------------------------------------------
def _env(environ: dict[str, str], **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("VALETKEY_")}
    return {**keep, **environ, "PYTHONUNBUFFERED": "1", **extra}


def _consume(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "valetkey.cli", "audit", "consume"], cwd=ROOT, env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _wait(predicate: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{log.read_text()[-3000:]}" if log else ""))


def _verify(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "valetkey.cli", "audit", "verify"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_killed_exporter_loses_nothing_and_duplicates_nothing(rt, app, environ, make_user, tmp_path):
    """20 real audited actions (logins) while the exporter process is SIGKILLed half-way and restarted."""
    make_user("dev@acme.test", ("staging", "developer"))
    env = _env(environ, VALETKEY_AUDIT_CLAIM_IDLE_MS="300")
    log = tmp_path / "exporter.log"
    proc = _consume(env, log)
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)

    def attempt(i: int) -> None:
        # One account per attempt: the sign-in throttle locks an account after 5 failures.
        r = client.post("/login", data={"email": f"dev{i}@acme.test", "password": "wrong", "csrf_token": token})
        assert r.status_code == 401

    def logins() -> list[Any]:
        return [r for r in rows(rt) if r.action == "login"]

    try:
        for i in range(10):
            attempt(i)
        _wait(lambda: len(logins()) >= 3, 30, "the exporter to store the first entries", log)
        for i in range(10, 14):
            attempt(i)
        proc.send_signal(signal.SIGKILL)  # mid-way: some stored, some maybe pending or unread
        proc.wait(10)
        for i in range(14, 20):
            attempt(i)
        proc = _consume(env, log)
        _wait(lambda: len(logins()) >= 20 and pending(rt) == 0, 60, "all 20 entries", log)
        time.sleep(1)  # a late duplicate would show up now
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    got = [r for r in rows(rt) if r.action == "login"]
    assert len(got) == 20 and len({r.stream_id for r in got}) == 20
    assert all(r.outcome == "denied" for r in got)
    assert {r.actor for r in got} == {f"dev{i}@acme.test" for i in range(20)}
    assert proc.returncode == 0  # SIGTERM stops it cleanly
    res = _verify(env)
    assert res.returncode == 0, res.stderr
    assert f"audit chain intact: {len(rows(rt))} entries" in res.stdout


def test_verify_command_exits_non_zero_naming_the_entry(chain, environ):
    env = _env(environ)
    assert _verify(env).returncode == 0
    sql(chain, "UPDATE audit_entries SET detail = 'edited' WHERE id = 2")
    res = _verify(env)
    assert res.returncode != 0 and "entry 2" in res.stderr


def test_the_exporter_process_reads_its_claim_idle_setting(environ):
    from scope.settings import Settings

    assert Settings.from_env({**environ, "VALETKEY_AUDIT_CLAIM_IDLE_MS": "500"}).audit_claim_idle_ms == 500
    assert Settings.from_env(environ).audit_claim_idle_ms == 30_000
    from scope.errors import ConfigError

    with pytest.raises(ConfigError):
        Settings.from_env({**environ, "VALETKEY_AUDIT_CLAIM_IDLE_MS": "soon"})
