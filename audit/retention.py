"""Retention: rows older than VALETKEY_AUDIT_RETENTION_DAYS are purged, and the purge is itself audited.

A purge deletes a *prefix* of the chain (ids 1..K, every one older than the
cutoff) and, in the same transaction, appends an ``audit.purge`` entry whose
detail records how many rows went and the id and hash of the last one: the
chain's new anchor. ``verify`` starts from the anchor of the newest purge
entry that precedes the first remaining row, so the chain still verifies
after a purge, while a deletion no purge entry accounts for is still caught.

Rows are deleted only as a prefix because the chain must stay contiguous: a
row older than the cutoff that sits after a newer one (producers' clocks
differ slightly) waits for the next purge.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Callable

import redis
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from audit.chain import PURGE_ACTION, purge_detail
from audit.ledger import append, lock_head
from scope.models import AuditEntry, utcnow

log = logging.getLogger("valetkey.audit")
LOCK_KEY = "valetkey:audit:purge"  # present while a purge ran in the last day (any exporter)
PURGE_ACTOR = "valetkey:retention"


@dataclass
class PurgeResult:
    count: int
    first_id: int
    last_id: int
    anchor_hash: str
    entry_id: int  # the audit.purge entry recording it


def purge(sessions: sessionmaker[Session], days: int, now: dt.datetime | None = None) -> PurgeResult | None:
    """Delete the chain's prefix older than ``days`` and record it; None if nothing is that old."""
    now = now or utcnow()
    cutoff = now - dt.timedelta(days=days)
    with sessions.begin() as s:
        head = lock_head(s)
        # The first row inside the retention period ends the purgeable prefix.
        keep_from = s.scalar(select(func.min(AuditEntry.id)).where(AuditEntry.time >= cutoff))
        prefix = AuditEntry.id < keep_from if keep_from is not None else AuditEntry.id <= head.last_id
        count, first_id, last_id = s.execute(
            select(func.count(), func.min(AuditEntry.id), func.max(AuditEntry.id)).where(prefix)).one()
        if not count:
            return None
        anchor = s.scalar(select(AuditEntry.hash).where(AuditEntry.id == last_id))
        assert anchor is not None
        s.execute(delete(AuditEntry).where(AuditEntry.id <= last_id))
        new_head = append(s, head, [{
            "stream_id": f"purge-{first_id}-{last_id}", "time": now, "actor": PURGE_ACTOR, "source": "scheduler",
            "environment": "", "action": PURGE_ACTION, "target": "audit trail", "outcome": "succeeded",
            "detail": purge_detail(count, cutoff, first_id, last_id, anchor), "job_id": "",
            "before": None, "after": None, "request_id": ""}])
    log.info("audit retention: purged %d entries (ids %d-%d)", count, first_id, last_id)
    return PurgeResult(count, first_id, last_id, anchor, new_head.last_id)


@dataclass
class Retention:
    days: int
    clock: Callable[[], dt.datetime] = utcnow

    def run_daily(self, r: redis.Redis, sessions: sessionmaker[Session]) -> PurgeResult | None:
        """Purge unless some exporter already did in the last 24 hours (the Redis key decides).

        The key is taken for an hour while purging (a purger killed half-way is retried within
        the hour; its transaction was rolled back), then kept for the rest of the day.
        """
        if not r.set(LOCK_KEY, self.clock().isoformat(), nx=True, ex=3600):
            return None
        try:
            result = purge(sessions, self.days, self.clock())
        except Exception:
            r.delete(LOCK_KEY)  # let the next check (this or another exporter) try again
            raise
        r.set(LOCK_KEY, self.clock().isoformat(), ex=24 * 3600)
        return result
