"""Filtering audit rows: parsed filters, scoped queries, keyset pagination, chain verification."""
from __future__ import annotations

import base64
import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, sessionmaker

from audit.chain import GENESIS, PURGE_ACTION, VerifyResult, purge_anchor, verify
from jobs.kinds import AUDIT_ACTIONS, AUDIT_OUTCOMES
from scope import times
from scope.errors import ValidationFailed
from scope.models import AuditEntry, AuditHead
from scope.times import parse_instant, utcnow

MAX_LIMIT = 1000
# The contract's actions plus the retention purge's own entries (see audit.retention).
FILTER_ACTIONS = (*AUDIT_ACTIONS, PURGE_ACTION)


def parse_when(name: str, value: str, now: dt.datetime | None = None) -> dt.datetime:
    """ISO 8601 (date or date-time; naive means UTC) or relative (15m, 2h, 7d before now)."""
    try:
        return parse_instant(value, now or utcnow())
    except ValueError as e:
        raise ValidationFailed({name: [str(e)]}) from None


@dataclass(frozen=True)
class AuditFilter:
    environment: str | None = None
    actor: str | None = None
    action: str | None = None
    outcome: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    @classmethod
    def parse(cls, args: Mapping[str, str]) -> "AuditFilter":
        errors: dict[str, list[str]] = {}
        action, outcome = args.get("action") or None, args.get("outcome") or None
        if action and action not in FILTER_ACTIONS:
            errors["action"] = [f"unknown action {action[:64]!r}; one of {', '.join(FILTER_ACTIONS)}"]
        if outcome and outcome not in AUDIT_OUTCOMES:
            errors["outcome"] = [f"unknown outcome {outcome[:64]!r}; one of {', '.join(AUDIT_OUTCOMES)}"]
        times: dict[str, dt.datetime | None] = {}
        for k in ("since", "until"):
            try:
                times[k] = parse_when(k, args[k]) if args.get(k) else None
            except ValidationFailed as e:
                errors.update(e.fields)
        for k, width in (("environment", 100), ("actor", 320)):
            if len(args.get(k) or "") > width:
                errors[k] = [f"longer than {width} characters"]
        if times.get("since") and times.get("until") and times["until"] <= times["since"]:  # type: ignore[operator]
            errors["until"] = ["must be later than since"]
        if errors:
            raise ValidationFailed(errors)
        return cls(environment=args.get("environment") or None, actor=(args.get("actor") or "").strip() or None,
                   action=action, outcome=outcome, since=times["since"], until=times["until"])

    def apply(self, q: Select[Any]) -> Select[Any]:
        if self.environment:
            q = q.where(AuditEntry.environment == self.environment)
        if self.actor:
            q = q.where(AuditEntry.actor == self.actor.lower() if "@" in self.actor else AuditEntry.actor == self.actor)
        if self.action:
            q = q.where(AuditEntry.action == self.action)
        if self.outcome:
            q = q.where(AuditEntry.outcome == self.outcome)
        if self.since:
            q = q.where(AuditEntry.time >= self.since)
        if self.until:
            q = q.where(AuditEntry.time < self.until)
        return q

    def slug(self) -> str:
        """A filename-safe summary of the filters, for Content-Disposition."""
        parts = []
        for k in ("environment", "actor", "action", "outcome"):
            v = getattr(self, k)
            if v:
                parts.append(re.sub(r"[^A-Za-z0-9._-]+", "-", f"{k}-{v}")[:80])
        for k in ("since", "until"):
            v = getattr(self, k)
            if v:
                parts.append(f"{k}-{v.strftime('%Y%m%dT%H%M%SZ')}")
        return "_".join(parts) or "all"


COLUMNS = tuple(AuditEntry.__table__.columns)


def scoped(q: Select[Any], environments: list[str] | None) -> Select[Any]:
    """Limit to the given environments (None = everything, for auditors and admins)."""
    if environments is None:
        return q
    return q.where(AuditEntry.environment.in_(environments))


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        tag, _, n = raw.partition(":")
        if tag != "v1" or not 0 <= int(n) < 2**63:
            raise ValueError
        return int(n)
    except (ValueError, UnicodeDecodeError):
        raise ValidationFailed({"cursor": ["not a cursor returned by this API"]}) from None


def page(sessions: sessionmaker[Session], flt: AuditFilter, environments: list[str] | None,
         limit: int = 100, cursor: str | None = None) -> tuple[list[Any], str | None]:
    """Newest first; keyset pagination on id so pages are stable while rows are appended."""
    q = scoped(flt.apply(select(*COLUMNS)), environments)
    if cursor:
        q = q.where(AuditEntry.id < decode_cursor(cursor))
    q = q.order_by(AuditEntry.id.desc()).limit(limit + 1)
    with sessions() as s:
        rows = list(s.execute(q))
    nxt = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], nxt


def iterate(sessions: sessionmaker[Session], flt: AuditFilter, environments: list[str] | None,
            batch: int = 5000, until_id: int | None = None) -> Iterator[Any]:
    """All matching rows (Core rows), oldest first, read in keyset batches: constant memory, and no
    read transaction held open for the whole walk. ``until_id`` stops at that row (inclusive)."""
    last = 0
    while True:
        q = scoped(flt.apply(select(*COLUMNS)), environments).where(AuditEntry.id > last) \
            .order_by(AuditEntry.id).limit(batch)
        if until_id is not None:
            q = q.where(AuditEntry.id <= until_id)
        with sessions() as s:
            rows = list(s.execute(q))
        if not rows:
            return
        yield from rows
        last = rows[-1].id


def verify_chain(sessions: sessionmaker[Session]) -> VerifyResult:
    """Verify the whole table: from the chain's anchor (genesis or the newest applicable purge) to the head.

    Exporters keep appending meanwhile, so the walk stops at the head read first; a purge running
    at the same moment can still make one walk see a gap, so a failed walk is repeated once.
    """
    res = _verify_once(sessions)
    return res if res.ok else _verify_once(sessions)


def _verify_once(sessions: sessionmaker[Session]) -> VerifyResult:
    with sessions() as s:
        head = s.get(AuditHead, 1)
        first_id = s.scalar(select(func.min(AuditEntry.id)))
        anchor, why = GENESIS, ""
        if first_id is not None:
            # The newest purge entry whose anchor precedes the first remaining row tells where the
            # chain now starts; rows before it that no purge accounts for were deleted.
            for detail in s.scalars(select(AuditEntry.detail).where(AuditEntry.action == PURGE_ACTION)
                                    .order_by(AuditEntry.id.desc())):
                a = purge_anchor(detail)
                if a and a[0] < first_id:
                    anchor = a[1]
                    why = f"no purge entry accounts for them; the newest purge ended at entry {a[0]}"
                    break
            else:
                why = "no purge entry accounts for them"
    rows = iterate(sessions, AuditFilter(), None, until_id=head.last_id if head else None)
    return verify(rows, head=(head.last_id, head.hash) if head else None, anchor=anchor, anchor_reason=why)


def iso(t: dt.datetime) -> str:
    """ISO 8601 UTC with microseconds and Z: the same text as the CSV export's time column."""
    return times.iso(t, "microseconds")


def entry_dict(e: Any, full: bool = True) -> dict[str, Any]:
    d: dict[str, Any] = {"id": e.id, "time": iso(e.time), "actor": e.actor,
                         "source": e.source, "environment": e.environment, "action": e.action,
                         "target": e.target, "outcome": e.outcome, "detail": e.detail, "job_id": e.job_id,
                         "reason": e.reason}
    if full:
        # Every field the hash covers, so that an export can be verified on its own.
        d.update({"prev_hash": e.prev_hash, "hash": e.hash, "before": e.before, "after": e.after,
                  "request_id": e.request_id, "stream_id": e.stream_id})
    return d
