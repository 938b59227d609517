"""Engine and session factory. SQLite by default (WAL, queued writers), PostgreSQL in production."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from scope.sqlite_writer import LockingConnection, writer_lock


def normalize_url(url: str) -> str:
    """Accept postgres:// and postgresql:// and use the psycopg 3 driver we ship."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def make_engine(url: str, **kw: Any) -> Engine:
    url = normalize_url(url)
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        db = u.database or ""
        on_disk = db not in ("", ":memory:") and not db.startswith("file:")
        connect_args: dict[str, Any] = {"timeout": 30}
        if on_disk:
            connect_args["factory"] = LockingConnection
        engine = create_engine(url, connect_args=connect_args, **kw)
        lock = writer_lock(str(u.database)) if on_disk else None

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Several processes (web, worker, exporter) share the file: WAL lets
            # readers proceed during a write, busy_timeout makes writers wait.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
            if lock is not None:
                dbapi_conn.writer_lock = lock  # writers queue on it (scope/sqlite_writer.py)

        return engine
    kw.setdefault("pool_pre_ping", True)
    kw.setdefault("pool_size", int(os.environ.get("VALETKEY_DB_POOL_SIZE", "5")))
    # Connections above pool_size are opened on demand and closed when idle. The default
    # covers a web process's 16 request threads plus the long-poll hub and /metrics at once,
    # so a burst never queues a request for a connection (SQLAlchemy's default, 10, did).
    kw.setdefault("max_overflow", int(os.environ.get("VALETKEY_DB_MAX_OVERFLOW", "20")))
    # An unreachable server (a partition, a failover) must fail a request in seconds (503), not hang it.
    kw.setdefault("connect_args", {"connect_timeout": 5} if u.get_backend_name() == "postgresql" else {})
    return create_engine(url, **kw)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
