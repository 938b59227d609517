"""The exporter: audit stream -> durable, hash-chained rows, exactly once.

- A consumer group, so several exporters share the stream safely.
- Rows are keyed by their stream id, so an entry delivered twice (a crash
  between commit and XACK) is inserted once.
- XACK only after the commit; entries left pending by a dead exporter are
  reclaimed with XAUTOCLAIM after ``claim_idle_ms``.
- The chain head row is updated first in each transaction: that takes the
  write lock on every backend, so two exporters never fork the chain.
- The stream is trimmed only below the oldest entry not yet acknowledged.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from typing import Any

import redis
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from audit.chain import entry_hash
from jobs.audit_stream import STREAM, AuditEvent
from scope.models import AuditEntry, AuditHead

log = logging.getLogger("valetkey.exporter")
GROUP = "exporters"


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def parse_time(value: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


class Exporter:
    def __init__(self, client: redis.Redis, sessions: sessionmaker[Session], *, stream: str = STREAM,
                 consumer: str | None = None, batch: int = 200, block_ms: int = 2000,
                 claim_idle_ms: int = 30_000) -> None:
        self.r, self.sessions, self.stream = client, sessions, stream
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.batch, self.block_ms, self.claim_idle_ms = batch, block_ms, claim_idle_ms
        self._last_trim = 0.0

    def ensure_group(self) -> None:
        try:
            # id 0: entries appended before the first exporter ever ran are exported too.
            self.r.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def step(self) -> int:
        """Export one batch (reclaimed entries first); returns how many entries were handled."""
        self.ensure_group()
        claimed = self.r.xautoclaim(self.stream, GROUP, self.consumer, min_idle_time=self.claim_idle_ms,
                                    start_id="0-0", count=self.batch)
        entries = [(i, f) for i, f in claimed[1] if f]
        if not entries:
            got = self.r.xreadgroup(GROUP, self.consumer, {self.stream: ">"}, count=self.batch,
                                    block=self.block_ms)
            entries = got[0][1] if got else []
        if not entries:
            self.maybe_trim()
            return 0
        self.store(entries)
        self.r.xack(self.stream, GROUP, *[i for i, _ in entries])
        self.maybe_trim()
        return len(entries)

    def store(self, entries: list[tuple[Any, dict[Any, Any]]]) -> None:
        with self.sessions.begin() as s:
            # Lock the chain head before reading anything (see module docstring).
            head = self._lock_head(s)
            ids = [_s(i) for i, _ in entries]
            seen = set(s.scalars(select(AuditEntry.stream_id).where(AuditEntry.stream_id.in_(ids))))
            prev = head.hash
            for raw_id, fields in entries:
                sid = _s(raw_id)
                if sid in seen:
                    continue
                try:
                    ev = AuditEvent.decode(fields)
                except Exception:  # noqa: BLE001 - a malformed entry is recorded, not dropped
                    log.error("malformed audit stream entry %s", sid)
                    ev = AuditEvent(actor="?", source="cli", action="unknown", outcome="failed",
                                    detail=f"malformed audit stream entry {sid}")
                row = AuditEntry(stream_id=sid, time=parse_time(ev.time), actor=ev.actor or "",
                                 source=ev.source or "", environment=ev.environment or "",
                                 action=ev.action or "", target=ev.target or "", outcome=ev.outcome or "",
                                 detail=ev.detail or "", job_id=ev.job_id or "", before=ev.before,
                                 after=ev.after, request_id=ev.request_id or "", prev_hash=prev, hash="")
                row.hash = entry_hash(row, prev)
                s.add(row)
                s.flush()
                prev = row.hash
                head.last_id, head.hash = row.id, row.hash
                seen.add(sid)

    @staticmethod
    def _lock_head(s: Session) -> AuditHead:
        # The no-op UPDATE takes the row's write lock (SQLite: the database's).
        s.execute(update(AuditHead).where(AuditHead.id == 1).values(id=1))
        head = s.execute(select(AuditHead).where(AuditHead.id == 1).with_for_update()).scalar_one()
        return head

    def maybe_trim(self, every: float = 60.0) -> None:
        now = time.monotonic()
        if now - self._last_trim < every:
            return
        self._last_trim = now
        self.trim()

    def trim(self) -> None:
        """Drop entries below the oldest one that is pending or not yet delivered."""
        groups = {_s(g["name"]): g for g in self.r.xinfo_groups(self.stream)}
        g = groups.get(GROUP)
        if g is None:
            return
        pending = self.r.xpending(self.stream, GROUP)
        if pending and pending.get("pending"):
            floor = _s(pending["min"])
        else:
            last = _s(g["last-delivered-id"])
            ms, seq = (int(x) for x in last.split("-"))
            floor = f"{ms}-{seq + 1}"
        self.r.xtrim(self.stream, minid=floor, approximate=False)

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
