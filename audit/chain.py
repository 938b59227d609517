"""The hash chain over audit rows: each row's hash covers its content and the previous hash."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable

from scope.models import AuditEntry

GENESIS = "0" * 64
FIELDS = ("stream_id", "time", "actor", "source", "environment", "action", "target", "outcome",
          "detail", "job_id", "before", "after", "request_id")


def canonical(entry: AuditEntry) -> bytes:
    """A stable encoding of the entry: sorted keys, UTC ISO time, no whitespace."""
    data: dict[str, Any] = {f: getattr(entry, f) for f in FIELDS}
    data["time"] = entry.time.isoformat(timespec="microseconds")
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def entry_hash(entry: AuditEntry, prev_hash: str) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical(entry)).hexdigest()


@dataclass
class VerifyResult:
    ok: bool
    checked: int
    bad_id: int | None = None
    reason: str = ""


def verify(rows: Iterable[AuditEntry], head_hash: str | None = None, anchor: str = GENESIS) -> VerifyResult:
    """Walk rows in id order; the first row whose links or hash do not hold is reported."""
    prev = anchor
    n = 0
    last: AuditEntry | None = None
    for row in rows:
        if row.prev_hash != prev:
            return VerifyResult(False, n, row.id, "prev_hash does not match the previous entry "
                                                  "(an entry before it was deleted or changed)")
        if entry_hash(row, row.prev_hash) != row.hash:
            return VerifyResult(False, n, row.id, "hash does not match the entry's content (edited)")
        prev = row.hash
        last = row
        n += 1
    if head_hash is not None and prev != head_hash:
        bad = last.id if last else None
        return VerifyResult(False, n, bad, "the chain ends before the recorded head (entries at the end were deleted)")
    return VerifyResult(True, n)
