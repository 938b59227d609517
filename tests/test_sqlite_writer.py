"""SQLite writers queue on one lock per database file, across threads and processes; readers never wait."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from dramatiq.middleware import AgeLimit, CurrentMessage, Retries, ShutdownNotifications, TimeLimit
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from jobs.broker import make_broker
from scope.db import make_engine
from scope.sqlite_writer import _is_write, writer_lock

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "w.db"
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as c:
        c.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT UNIQUE)"))
    yield engine, path
    engine.dispose()
    writer_lock(str(path)).timeout = 30.0


def count(engine) -> int:
    with engine.connect() as c:
        return int(c.execute(text("SELECT count(*) FROM t")).scalar_one())


def test_statement_kinds():
    assert _is_write("  insert into t values (1)") and _is_write("UPDATE t SET x=1")
    assert _is_write("DELETE FROM t") and _is_write("REPLACE INTO t VALUES (1)")
    assert _is_write("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x")
    assert not _is_write("SELECT * FROM t") and not _is_write("PRAGMA journal_mode=WAL")
    # Leading comments are skipped, as Python's sqlite3 skips them before its implicit BEGIN.
    assert _is_write("/* why */ INSERT INTO t VALUES (1)") and _is_write("-- note\nDELETE FROM t")
    assert _is_write("BEGIN") and _is_write("SAVEPOINT sa_1") and not _is_write("INSERTED")


def test_many_leading_comments_are_read_in_linear_time():
    answers: list[bool] = []
    t = threading.Thread(target=lambda: answers.append(_is_write("/**/" * 200 + "SELECT 1")), daemon=True)
    t.start()
    t.join(5)  # a backtracking pattern would still be running (it took seconds at 22 comments)
    assert answers == [False]


def test_every_way_to_write_on_the_connection_holds_the_turn(db):
    engine, path = db
    lock = writer_lock(str(path))
    raw = engine.raw_connection()
    try:
        dbapi = raw.driver_connection
        dbapi.execute("INSERT INTO t (who) VALUES ('shortcut')")  # the C shortcut, routed through our cursor
        assert dbapi.in_transaction and not lock._threads.acquire(blocking=False)
        dbapi.commit()
        assert lock._threads.acquire(blocking=False)
        lock._threads.release()
        dbapi.executescript("INSERT INTO t (who) VALUES ('script'); INSERT INTO t (who) VALUES ('script2');")
        assert lock._threads.acquire(blocking=False)  # given back when the script ended
        lock._threads.release()
        dbapi.execute("SAVEPOINT one")
        dbapi.execute("INSERT INTO t (who) VALUES ('nested')")
        assert not lock._threads.acquire(blocking=False)  # held from the SAVEPOINT on
        dbapi.execute("RELEASE one")
        assert lock._threads.acquire(blocking=False)
        lock._threads.release()
        with dbapi:  # the context manager commits in C
            dbapi.execute("INSERT INTO t (who) VALUES ('with')")
        assert lock._threads.acquire(blocking=False)
        lock._threads.release()
        dbapi.cursor().executescript("INSERT INTO t (who) VALUES ('cursor script');")
        assert lock._threads.acquire(blocking=False)
        lock._threads.release()
    finally:
        raw.close()
    assert count(engine) == 6


def test_threads_write_concurrently_without_losing_a_row(db):
    engine, _ = db
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(40):
                with engine.begin() as c:
                    c.execute(text("INSERT INTO t (who) VALUES (:w)"), {"w": f"{n}-{i}"})
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert count(engine) == 320


def test_processes_queue_on_the_lock_file(db, tmp_path):
    engine, path = db
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from sqlalchemy import text
        from scope.db import make_engine
        e = make_engine("sqlite:///{path}")
        for i in range(60):
            with e.begin() as c:
                c.execute(text("INSERT INTO t (who) VALUES (:w)"), {{"w": sys.argv[1] + str(i)}})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, f"p{n}-"]) for n in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert count(engine) == 180
    assert Path(f"{path}.lock").exists()


def test_a_failed_write_gives_the_turn_back(db):
    engine, path = db
    with engine.begin() as c:
        c.execute(text("INSERT INTO t (who) VALUES ('a')"))
    with pytest.raises(IntegrityError):
        with engine.begin() as c:
            c.execute(text("INSERT INTO t (who) VALUES ('a')"))
    # Were the turn still held, this write would wait for the (short) timeout and fail.
    writer_lock(str(path)).timeout = 0.5
    with engine.begin() as c:
        c.execute(text("INSERT INTO t (who) VALUES ('b')"))
    assert count(engine) == 2


def test_a_writer_that_cannot_get_a_turn_fails_naming_the_lock(db):
    engine, path = db
    lock = writer_lock(str(path))
    lock.timeout = 0.3
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with engine.begin() as c:
            c.execute(text("INSERT INTO t (who) VALUES ('holder')"))
            holding.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    assert holding.wait(10)
    try:
        started = time.monotonic()
        with pytest.raises(OperationalError, match="database is locked"):
            with engine.begin() as c:
                c.execute(text("INSERT INTO t (who) VALUES ('waiter')"))
        assert 0.25 < time.monotonic() - started < 5
        # Reads never queue: WAL serves them during the write.
        assert count(engine) == 0
    finally:
        release.set()
        t.join()
    assert count(engine) == 1


def test_another_process_holding_the_lock_makes_writers_wait_not_fail(db):
    engine, path = db
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from scope.sqlite_writer import WriterLock
        lock = WriterLock({str(path)!r})
        lock.acquire()
        print("held", flush=True)
        time.sleep(0.5)
        lock.release()
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    started = time.monotonic()
    with engine.begin() as c:
        c.execute(text("INSERT INTO t (who) VALUES ('after')"))
    waited = time.monotonic() - started
    assert p.wait(10) == 0
    assert waited > 0.2  # it queued behind the other process ...
    assert count(engine) == 1  # ... and then wrote


def test_the_worker_broker_never_interrupts_a_thread_asynchronously():
    """TimeLimit and ShutdownNotifications raise inside a running thread, wherever it is: halfway through
    taking this lock, say."""
    broker = make_broker("redis://127.0.0.1:6379/15")
    try:
        kinds = {type(m) for m in broker.middleware}
        assert not kinds & {TimeLimit, ShutdownNotifications} and {AgeLimit, Retries, CurrentMessage} <= kinds
    finally:
        broker.close()
