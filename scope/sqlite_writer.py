"""One SQLite writer at a time, queued on a lock instead of polled by SQLite's busy handler.

SQLite allows a single writer. When a second connection wants to write, its
busy handler sleeps 1, 2, 5, 10, 15, 20, 25, 50, 100 ms between retries, so
under concurrent writers (gunicorn threads creating jobs, worker threads
claiming and finishing them, the audit exporter) most of the time is spent
sleeping while nobody holds the lock: throughput falls and p99 latency climbs
to hundreds of milliseconds.

Here a write transaction first takes a writer lock — a ``threading.Lock`` for
the threads of this process (a waiting thread wakes the moment it is released)
and an ``flock`` on ``<database>.lock`` between processes (polled from 0.1 ms,
backing off to 2 ms) — and gives it back at commit or rollback. Reads take no
lock: WAL lets them run during a write. SQLite's own busy timeout stays as the
safety net for writers that do not go through here (the sqlite3 shell, say).

The lock is taken by the DB-API connection itself (a ``sqlite3.Connection``
subclass passed as ``factory``), at the first data-changing statement of a
transaction, which is exactly where Python's sqlite3 opens the transaction, so
every writer through SQLAlchemy is covered without callers doing anything.

Nothing may raise asynchronously into a thread that is taking or holding the
turn (it could leave the lock taken for good): that is one reason the worker's
broker runs without Dramatiq's TimeLimit (jobs/broker.py).
"""
from __future__ import annotations

import fcntl
import os
import re
import sqlite3
import threading
import time
from typing import Any, Callable, Iterable

# Statements that start a write outside an open transaction, after any leading
# comments (as Python's sqlite3 skips them to decide on its implicit BEGIN).
# WITH is included because a CTE may end in INSERT/UPDATE/DELETE; BEGIN and
# SAVEPOINT open a transaction that may write. A statement that turns out to
# read only takes and drops the lock around itself.
# A comment body cannot contain "*/", so each comment matches one way only (no backtracking blow-up).
_WRITE = re.compile(r"\s*(?:(?:--[^\n]*(?:\n|$)|/\*(?:[^*]|\*(?!/))*\*/)\s*)*"
                    r"(?:INSERT|UPDATE|DELETE|REPLACE|WITH|BEGIN|SAVEPOINT)\b", re.IGNORECASE)


def _is_write(sql: str) -> bool:
    return _WRITE.match(sql) is not None


class WriterLock:
    """The writer lock of one database file, shared by every connection of this process."""

    def __init__(self, database: str, timeout: float = 30.0) -> None:
        self.path = f"{database}.lock"
        self.timeout = timeout
        self._threads = threading.Lock()
        self._fd: int | None = None  # opened lazily, once per process (flock is per open file)
        self._pid = 0

    def acquire(self) -> None:
        deadline = time.monotonic() + self.timeout
        if not self._threads.acquire(timeout=self.timeout):
            raise sqlite3.OperationalError(
                f"database is locked: no write turn within {self.timeout:.0f}s (another thread holds it)")
        try:
            fd = self._file()
            pause = 0.0001
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise sqlite3.OperationalError(
                            f"database is locked: no write turn within {self.timeout:.0f}s "
                            f"(another process holds {self.path})") from None
                    time.sleep(pause)
                    pause = min(pause * 2, 0.002)
        except BaseException:
            self._threads.release()
            raise

    def release(self) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def _file(self) -> int:
        # After a fork the child must not share the parent's open file (and so its flock).
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd


_locks: dict[str, WriterLock] = {}
_locks_guard = threading.Lock()


def writer_lock(database: str) -> WriterLock:
    """The process's one WriterLock for this database file (engines on the same file share it)."""
    path = os.path.realpath(database)
    with _locks_guard:
        lock = _locks.get(path)
        if lock is None:
            lock = _locks[path] = WriterLock(path)
        return lock


class LockingConnection(sqlite3.Connection):
    """A sqlite3 connection that holds its database's WriterLock for the length of a write transaction.

    ``writer_lock`` is set right after connecting (SQLAlchemy's ``connect``
    event); until then the connection behaves like a plain one.
    """

    writer_lock: WriterLock | None = None
    _holding = False

    def cursor(self, factory: Any = None) -> Any:  # type: ignore[override]
        return super().cursor(factory or LockingCursor)

    # The shortcuts on the connection are C code that builds a plain cursor: route them through ours.
    def execute(self, sql: str, parameters: Any = (), /) -> Any:  # type: ignore[override]
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> Any:  # type: ignore[override]
        return self.cursor().executemany(sql, seq_of_parameters)

    def executescript(self, script: str, /) -> Any:  # type: ignore[override]
        # It commits what is open first and runs in autocommit: hold the turn for the whole script.
        if self.writer_lock is not None and not self._holding:
            self.writer_lock.acquire()
            self._holding = True
        try:
            return super().executescript(script)
        finally:
            self.settle()

    def take_turn(self, sql: str) -> None:
        """Take the writer lock before a write that would open a transaction."""
        if self.writer_lock is None or self._holding or self.in_transaction or not _is_write(sql):
            return
        self.writer_lock.acquire()
        self._holding = True

    def end_turn(self) -> None:
        if self._holding:
            self._holding = False
            assert self.writer_lock is not None
            self.writer_lock.release()

    def settle(self) -> None:
        """After a statement: outside a transaction (autocommit, or the statement failed) give the turn back."""
        if not self.in_transaction:
            self.end_turn()

    def __exit__(self, *exc: Any) -> Any:
        # "with connection:" commits or rolls back in C, past the overrides below.
        try:
            return super().__exit__(*exc)
        finally:
            self.settle()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.settle()  # a failed COMMIT leaves the transaction open: the rollback that follows ends the turn

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.end_turn()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.end_turn()


class LockingCursor(sqlite3.Cursor):
    connection: LockingConnection

    def execute(self, sql: str, parameters: Any = (), /) -> LockingCursor:  # type: ignore[override]
        return self._in_turn(sql, super().execute, parameters)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> LockingCursor:  # type: ignore[override]
        return self._in_turn(sql, super().executemany, seq_of_parameters)

    def executescript(self, script: str, /) -> LockingCursor:  # type: ignore[override]
        self.connection.executescript(script)
        return self

    def _in_turn(self, sql: str, run: Callable[[str, Any], Any], args: Any) -> LockingCursor:
        conn = self.connection
        conn.take_turn(sql)
        try:
            run(sql, args)
        finally:
            conn.settle()
        return self
