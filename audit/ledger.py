"""Appending to the audit table: the one place rows, ids and hashes are written.

Callers (the exporter, the retention purge) run inside a transaction that
locked the chain head first (``lock_head``): that serializes every appender on
SQLite and PostgreSQL alike, so the chain never forks and ids stay contiguous.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, insert, select, update
from sqlalchemy.orm import Session

from audit.chain import entry_hash
from scope.models import AuditEntry, AuditHead

log = logging.getLogger("valetkey.audit")

# Column widths, so that an over-long value is cut here instead of failing the
# insert on PostgreSQL (which would block the exporter on that entry forever).
_WIDTHS: dict[str, int] = {c.name: c.type.length for c in AuditEntry.__table__.columns
                           if isinstance(c.type, String) and c.type.length}
TEXT_FIELDS = ("stream_id", "actor", "source", "environment", "action", "target", "outcome", "detail",
               "job_id", "request_id", "reason")


@dataclass
class Head:
    last_id: int
    hash: str


def lock_head(s: Session) -> Head:
    """Take the chain's write lock and read its end.

    The no-op UPDATE is the lock: on PostgreSQL it locks the head row until
    commit (a second appender waits, then reads the new head); on SQLite the
    first write of a transaction takes the database's write lock.
    """
    s.execute(update(AuditHead).where(AuditHead.id == 1).values(id=1))
    row = s.execute(select(AuditHead.last_id, AuditHead.hash).where(AuditHead.id == 1)).one()
    return Head(row.last_id, row.hash)


def clean(value: Any) -> Any:
    """What every backend can store and hash identically: no NUL or lone surrogates, no NaN in JSON."""
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "replace").decode("utf-8")
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(clean(k)): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def fit(values: dict[str, Any]) -> dict[str, Any]:
    """Clean every field and cut text to its column width (logged: it should never happen)."""
    out = {k: clean(v) for k, v in values.items()}
    for name in TEXT_FIELDS:
        v = out.get(name)
        if v is None:
            out[name] = ""
        elif not isinstance(v, str):
            out[name] = str(v)
        width = _WIDTHS.get(name)
        if width and len(out[name]) > width:
            log.warning("audit %s cut to %d characters (stream entry %s)", name, width, out.get("stream_id"))
            out[name] = out[name][:width]
    return out


def append(s: Session, head: Head, rows: list[dict[str, Any]]) -> Head:
    """Insert rows at the end of the chain (ids head+1, head+2, ...) and move the head; returns the new head."""
    if not rows:
        return head
    last_id, prev = head.last_id, head.hash
    values = []
    for r in rows:
        v = fit(r)
        last_id += 1
        v.update(id=last_id, prev_hash=prev)
        v["hash"] = prev = entry_hash(v, prev)
        values.append(v)
    s.execute(insert(AuditEntry), values)
    s.execute(update(AuditHead).where(AuditHead.id == 1).values(last_id=last_id, hash=prev))
    return Head(last_id, prev)
