"""The hash chain over audit rows: each row's hash covers its content, its id and the previous hash.

Pure functions only (no database): the exporter and the retention purge
compute hashes with them, ``audit.queries.verify_chain`` feeds rows to
``verify``.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

GENESIS = "0" * 64
# Every stored column except the chain fields themselves. ``id`` is included so
# that the ids auditors cite ("entry 1234") are covered by the chain too.
FIELDS = ("id", "stream_id", "time", "actor", "source", "environment", "action", "target", "outcome",
          "detail", "job_id", "before", "after", "request_id")
# Fields added after the chain's first version. Each enters the hash input only when it is set
# (not empty or None): a row written before the field existed, stored with it empty, hashes exactly
# as it did then, so old chains still verify, while a value set on a new row is covered (and
# setting or clearing one later changes the hash). The version of the hash input is thus implied by
# the row itself; a future field is added here the same way, never to FIELDS.
LATER_FIELDS = ("reason",)

# A retention purge is itself an audit entry; its detail names the new start
# of the chain (the last purged row), which ``verify`` uses as its anchor.
PURGE_ACTION = "audit.purge"
_ANCHOR = re.compile(r"chain continues after entry (\d+) \(hash ([0-9a-f]{64})\)")


def _get(entry: Any, name: str) -> Any:
    return entry[name] if isinstance(entry, Mapping) else getattr(entry, name)


def _get_later(entry: Any, name: str) -> Any:
    return entry.get(name) if isinstance(entry, Mapping) else getattr(entry, name, None)


def canonical(entry: Any) -> bytes:
    """A stable encoding of a row (a mapping, an ORM object or a Core row): sorted keys, UTC time, no whitespace."""
    data: dict[str, Any] = {f: _get(entry, f) for f in FIELDS}
    for f in LATER_FIELDS:
        v = _get_later(entry, f)
        if v not in (None, ""):
            data[f] = v
    t: dt.datetime = data["time"]
    # Hash input, not display: "+00:00" (not "Z") since the first entry; never change it.
    data["time"] = t.astimezone(dt.timezone.utc).isoformat(timespec="microseconds")
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def entry_hash(entry: Any, prev_hash: str) -> str:
    """SHA-256 over the previous hash and the canonical encoding of the row."""
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical(entry)).hexdigest()


def purge_detail(count: int, cutoff: dt.datetime, first_id: int, last_id: int, last_hash: str) -> str:
    """The human-readable detail of a purge entry, which also carries the chain's new anchor."""
    when = cutoff.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (f"Retention: {count} entries older than {when} purged (ids {first_id}-{last_id}); "
            f"the chain continues after entry {last_id} (hash {last_hash})")


def purge_anchor(detail: str) -> tuple[int, str] | None:
    """(id, hash) of the last purged row, as recorded in a purge entry's detail."""
    m = _ANCHOR.search(detail or "")
    return (int(m[1]), m[2]) if m else None


@dataclass
class VerifyResult:
    ok: bool
    checked: int
    bad_id: int | None = None
    reason: str = ""
    head_id: int = 0
    head_hash: str = GENESIS


def verify(rows: Iterable[Any], head: tuple[int, str] | None = None, anchor: str = GENESIS,
           anchor_reason: str = "") -> VerifyResult:
    """Walk rows in id order from ``anchor``; report the first row whose link or hash does not hold.

    ``head`` is the recorded (last_id, hash) of the chain: it catches deletions
    at the end, which leave no broken link behind.
    """
    prev, n = anchor, 0
    last_id: int | None = None
    for row in rows:
        rid, prev_hash, h = _get(row, "id"), _get(row, "prev_hash"), _get(row, "hash")
        if prev_hash != prev:
            if n == 0:
                why = anchor_reason or "it does not continue from the start of the chain"
                return VerifyResult(False, n, rid, f"entries before it were deleted ({why})")
            return VerifyResult(False, n, rid, f"its prev_hash does not match entry {last_id}: "
                                               "an entry between them was deleted, or entry "
                                               f"{last_id} was altered")
        if entry_hash(row, prev_hash) != h:
            return VerifyResult(False, n, rid, "its hash does not match its content: the entry was altered")
        prev, last_id, n = h, rid, n + 1
    if head is not None:
        head_id, head_hash = head
        # The last row's hash covers its id, so equal hashes mean the same last entry.
        if prev != head_hash:
            missing = (last_id + 1) if last_id is not None else head_id
            return VerifyResult(False, n, missing,
                                f"the chain ends at entry {last_id or 'none'} but the recorded head is entry "
                                f"{head_id}: entries at the end were deleted")
    return VerifyResult(True, n, head_id=last_id or (head[0] if head else 0), head_hash=prev)
