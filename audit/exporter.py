"""The exporter: audit stream -> durable, hash-chained rows, exactly once.

- A consumer group, so several exporters share the stream safely.
- Rows are keyed by their stream id, so an entry delivered twice (a crash
  between commit and XACK) is inserted once.
- XACK only after the commit; entries left pending by a dead exporter are
  reclaimed with XAUTOCLAIM after ``claim_idle_ms``; this exporter's own
  entries of a failed batch are retried at once.
- The chain head row is locked first in each transaction (``audit.ledger``),
  so two exporters never fork the chain.
- The stream is trimmed only below the oldest entry not yet acknowledged.
- Once a day (a Redis lock decides which exporter) rows older than the
  retention period are purged (``audit.retention``).
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from typing import Any, Callable

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from audit.ledger import append, lock_head
from audit.retention import Retention
from jobs.audit_stream import GROUP, STREAM, AuditEvent
from scope.models import AuditEntry
from scope.text import as_text
from scope.times import parse_iso

log = logging.getLogger("valetkey.exporter")
Entry = tuple[Any, dict[Any, Any]]


# An event's time as an aware UTC datetime (what the database returns, so the hash is stable).
parse_time = parse_iso


def row_values(stream_id: str, fields: dict[Any, Any]) -> dict[str, Any]:
    """The row for one stream entry; a malformed entry becomes a row saying so, never a lost one."""
    try:
        ev = AuditEvent.decode(fields)
        when = parse_time(ev.time)
    except Exception:  # noqa: BLE001 - whatever is wrong with it, it must not block the stream
        log.error("malformed audit stream entry %s", stream_id)
        raw = fields.get(b"event") or fields.get("event") or b""
        ev = AuditEvent(actor="?", source="", action="", outcome="failed",
                        detail=f"malformed audit stream entry: {as_text(raw)[:2000]}")
        when = dt.datetime.now(dt.timezone.utc)
    return {"stream_id": stream_id, "time": when, "actor": ev.actor, "source": ev.source,
            "environment": ev.environment, "action": ev.action, "target": ev.target, "outcome": ev.outcome,
            "detail": ev.detail, "job_id": ev.job_id, "reason": ev.reason or "", "before": ev.before or None, "after": ev.after or None,
            "request_id": ev.request_id}


class Exporter:
    def __init__(self, client: redis.Redis, sessions: sessionmaker[Session], *, stream: str = STREAM,
                 consumer: str | None = None, batch: int = 200, block_ms: int = 2000,
                 claim_idle_ms: int = 30_000, trim_every: float = 60.0,
                 retention: Retention | None = None, purge_check_every: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.r, self.sessions, self.stream = client, sessions, stream
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.batch, self.block_ms, self.claim_idle_ms = batch, block_ms, claim_idle_ms
        self.trim_every, self.retention, self.purge_check_every = trim_every, retention, purge_check_every
        self.clock = clock
        self._group_ready = False
        self._retry_own = False  # a batch of ours failed: its entries are still pending with us
        self._claim_cursor = "0-0"
        self._last_trim: float | None = None
        self._last_purge_check: float | None = None

    # ---- consuming ------------------------------------------------------------
    def ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            # id 0: entries appended before the first exporter ever ran are exported too.
            self.r.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._group_ready = True

    def step(self) -> int:
        """Export one batch (own retries first, then reclaimed entries, then new ones); returns its size."""
        self.ensure_group()
        try:
            entries = self._next_batch()
        except redis.ResponseError as e:
            if "NOGROUP" in str(e):  # the stream was deleted under us: recreate the group next time
                self._group_ready = False
            raise
        if entries:
            self._retry_own = True  # until acknowledged, these are ours to retry
            self.store(entries)
            self.r.xack(self.stream, GROUP, *[i for i, _ in entries])
            self._retry_own = False
        self.housekeeping()
        return len(entries)

    def _next_batch(self) -> list[Entry]:
        dead: list[Any] = []
        entries: list[Entry] = []
        if self._retry_own:
            got: Any = self.r.xreadgroup(GROUP, self.consumer, {self.stream: "0"}, count=self.batch)
            own = got[0][1] if got else []
            entries = [(i, f) for i, f in own if f]
            dead += [i for i, f in own if not f]
            if not own:
                self._retry_own = False
        if not entries:
            reply: Any = self.r.xautoclaim(self.stream, GROUP, self.consumer, min_idle_time=self.claim_idle_ms,
                                           start_id=self._claim_cursor, count=self.batch)
            nxt, claimed, *deleted = reply
            self._claim_cursor = as_text(nxt)
            entries = [(i, f) for i, f in claimed if f]
            dead += [i for i, f in claimed if not f]
            if deleted and deleted[0]:
                log.error("audit stream entries deleted before export: %s", [as_text(i) for i in deleted[0]])
        if dead:
            # Entries deleted from the stream while pending cannot be exported; drop them from the PEL.
            log.error("audit stream entries deleted before export: %s", [as_text(i) for i in dead])
            self.r.xack(self.stream, GROUP, *dead)
        if not entries:
            got = self.r.xreadgroup(GROUP, self.consumer, {self.stream: ">"}, count=self.batch,
                                    block=self.block_ms)
            entries = got[0][1] if got else []
        return entries

    def store(self, entries: list[Entry]) -> int:
        """Insert the entries not yet stored, in one transaction; returns how many were new."""
        with self.sessions.begin() as s:
            head = lock_head(s)  # before reading anything (see audit.ledger)
            ids = [as_text(i) for i, _ in entries]
            seen = set(s.scalars(select(AuditEntry.stream_id).where(AuditEntry.stream_id.in_(ids))))
            rows = []
            for raw_id, fields in entries:
                sid = as_text(raw_id)
                if sid not in seen:
                    seen.add(sid)
                    rows.append(row_values(sid, fields))
            append(s, head, rows)
        return len(rows)

    # ---- housekeeping -----------------------------------------------------------
    def housekeeping(self) -> None:
        now = self.clock()
        if self._last_trim is None or now - self._last_trim >= self.trim_every:
            self._last_trim = now
            self.trim()
            self.forget_dead_consumers()
        if self.retention is not None and (self._last_purge_check is None
                                           or now - self._last_purge_check >= self.purge_check_every):
            self._last_purge_check = now
            self.retention.run_daily(self.r, self.sessions)

    def trim(self) -> None:
        """Drop entries below the oldest one that is pending or not yet delivered."""
        # Read the group before the PEL: if entries are delivered in between,
        # the floor computed from the older last-delivered id is only lower.
        groups = {as_text(g["name"]): g for g in self.r.xinfo_groups(self.stream)}
        g = groups.get(GROUP)
        if g is None:
            return
        pending = self.r.xpending(self.stream, GROUP)
        if pending and pending.get("pending"):
            floor = as_text(pending["min"])
        else:
            ms, seq = (int(x) for x in as_text(g["last-delivered-id"]).split("-"))
            floor = f"{ms}-{seq + 1}"
        self.r.xtrim(self.stream, minid=floor, approximate=False)

    def forget_dead_consumers(self, idle_ms: int = 3_600_000) -> None:
        """Remove consumers (dead exporters' names) that hold nothing and have been silent for an hour."""
        for c in self.r.xinfo_consumers(self.stream, GROUP):
            name = as_text(c["name"])
            if name != self.consumer and int(c["pending"]) == 0 and int(c["idle"]) > idle_ms:
                self.r.xgroup_delconsumer(self.stream, GROUP, name)

    def run(self, stop: threading.Event) -> None:
        log.info("exporter %s consuming %s", self.consumer, self.stream)
        backoff = 1.0
        while not stop.is_set():
            try:
                self.step()
                backoff = 1.0
            except Exception:  # noqa: BLE001 - keep going; nothing is acked unless committed
                log.exception("export step failed; retrying in %.0fs", backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 30)
        log.info("exporter stopped")
