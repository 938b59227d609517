"""Filtering audit rows: parsed filters, scoped queries, keyset pagination, chain verification."""
from __future__ import annotations

import base64
import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, sessionmaker

from audit.chain import VerifyResult, verify
from jobs.kinds import AUDIT_ACTIONS, AUDIT_OUTCOMES
from scope.errors import ValidationFailed
from scope.models import AuditEntry, AuditHead

MAX_LIMIT = 1000
_RELATIVE = re.compile(r"^(\d+)([smhd])$")


def parse_when(name: str, value: str, now: dt.datetime | None = None) -> dt.datetime:
    """ISO 8601 (date or date-time; naive means UTC) or relative (15m, 2h, 7d before now)."""
    v = value.strip()
    m = _RELATIVE.match(v)
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m[2]]
        return (now or dt.datetime.now(dt.timezone.utc)) - dt.timedelta(**{unit: int(m[1])})
    try:
        t = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationFailed({name: [f"not a date or time: {value!r} (use ISO 8601 like 2026-11-24T18:00:00Z, "
                                       "or 15m / 2h / 7d)"]}) from None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


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
        if action and action not in AUDIT_ACTIONS:
            errors["action"] = [f"unknown action {action!r}; one of {', '.join(AUDIT_ACTIONS)}"]
        if outcome and outcome not in AUDIT_OUTCOMES:
            errors["outcome"] = [f"unknown outcome {outcome!r}; one of {', '.join(AUDIT_OUTCOMES)}"]
        times: dict[str, dt.datetime | None] = {}
        for k in ("since", "until"):
            try:
                times[k] = parse_when(k, args[k]) if args.get(k) else None
            except ValidationFailed as e:
                errors.update(e.fields)
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
                parts.append(re.sub(r"[^A-Za-z0-9._-]+", "-", f"{k}-{v}"))
        for k in ("since", "until"):
            v = getattr(self, k)
            if v:
                parts.append(f"{k}-{v.strftime('%Y%m%dT%H%M%SZ')}")
        return "_".join(parts) or "all"


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
        if tag != "v1":
            raise ValueError
        return int(n)
    except (ValueError, UnicodeDecodeError):
        raise ValidationFailed({"cursor": ["not a cursor returned by this API"]}) from None


def page(sessions: sessionmaker[Session], flt: AuditFilter, environments: list[str] | None,
         limit: int = 100, cursor: str | None = None) -> tuple[list[AuditEntry], str | None]:
    """Newest first; keyset pagination on id so pages are stable while rows are appended."""
    q = scoped(flt.apply(select(AuditEntry)), environments)
    if cursor:
        q = q.where(AuditEntry.id < decode_cursor(cursor))
    q = q.order_by(AuditEntry.id.desc()).limit(limit + 1)
    with sessions() as s:
        rows = list(s.scalars(q))
    nxt = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], nxt


def iterate(sessions: sessionmaker[Session], flt: AuditFilter, environments: list[str] | None,
            batch: int = 5000) -> Iterator[AuditEntry]:
    """All matching rows, oldest first, read in keyset batches (constant memory)."""
    last = 0
    while True:
        q = scoped(flt.apply(select(AuditEntry)), environments).where(AuditEntry.id > last) \
            .order_by(AuditEntry.id).limit(batch)
        with sessions() as s:
            rows = list(s.scalars(q))
        if not rows:
            return
        yield from rows
        last = rows[-1].id


def verify_chain(sessions: sessionmaker[Session]) -> VerifyResult:
    with sessions() as s:
        head = s.get(AuditHead, 1)
    rows = iterate(sessions, AuditFilter(), None)
    return verify(rows, head_hash=head.hash if head else None)


def entry_dict(e: AuditEntry, full: bool = True) -> dict[str, Any]:
    d: dict[str, Any] = {"id": e.id, "time": e.time.isoformat().replace("+00:00", "Z"), "actor": e.actor,
                         "source": e.source, "environment": e.environment, "action": e.action,
                         "target": e.target, "outcome": e.outcome, "detail": e.detail, "job_id": e.job_id}
    if full:
        d.update({"before": e.before, "after": e.after, "request_id": e.request_id,
                  "prev_hash": e.prev_hash, "hash": e.hash})
    return d
