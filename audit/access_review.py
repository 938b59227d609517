"""The access review: every grant in force at an instant, for auditors.

Reconstructed by replaying the audit trail's grant changes up to that
instant (``grant.add`` carries the role and expiry in ``after``;
``grant.remove`` and ``grant.expire`` end a grant), so a past instant is
answered correctly even for grants removed since. Grants the trail does not
know (made before it began, or purged by retention) come from the grants
table when they were created by then.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
from dataclasses import dataclass
from typing import Iterator

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from audit.export import csv_safe
from scope.models import AuditEntry, Grant
from scope.times import iso_or_none, parse_instant

GRANT_ACTIONS = ("grant.add", "grant.remove", "grant.expire")
REVIEW_COLUMNS = ("subject", "environment", "role", "granted_by", "granted_at", "expires_at")


@dataclass(frozen=True)
class ReviewGrant:
    subject: str
    environment: str
    role: str
    granted_by: str
    granted_at: dt.datetime | None
    expires_at: dt.datetime | None

    def as_dict(self) -> dict[str, str | None]:
        return {"subject": self.subject, "environment": self.environment, "role": self.role,
                "granted_by": self.granted_by, "granted_at": iso_or_none(self.granted_at),
                "expires_at": iso_or_none(self.expires_at)}


def _role_of(entry: AuditEntry) -> str:
    state = entry.after if entry.action == "grant.add" else entry.before
    if isinstance(state, dict) and state.get("role"):
        return str(state["role"])
    # Entries written before grants carried their state say "role NAME ..." in the detail.
    words = (entry.detail or "").split()
    return words[1] if len(words) > 1 and words[0] == "role" else ""


def _expiry_of(entry: AuditEntry) -> dt.datetime | None:
    raw = (entry.after or {}).get("expires_at") if isinstance(entry.after, dict) else None
    return parse_instant(raw, dt.datetime.now(dt.timezone.utc)) if raw else None


def grants_at(sessions: sessionmaker[Session], at: dt.datetime) -> list[ReviewGrant]:
    """Every grant in force at ``at`` (sorted by environment, subject, role)."""
    state: dict[tuple[str, str, str], ReviewGrant] = {}
    with sessions() as s:
        entries = s.scalars(select(AuditEntry).where(AuditEntry.action.in_(GRANT_ACTIONS),
                                                     AuditEntry.outcome == "succeeded", AuditEntry.time <= at)
                            .order_by(AuditEntry.id)).yield_per(1000)
        for e in entries:
            key = (e.target, e.environment, _role_of(e))
            if e.action == "grant.add":
                state[key] = ReviewGrant(e.target, e.environment, key[2], e.actor, e.time, _expiry_of(e))
            else:
                state.pop(key, None)
        known = set(state)
        for g in s.scalars(select(Grant).where(Grant.created_at <= at,
                                               or_(Grant.expires_at.is_(None), Grant.expires_at > at))):
            key = (g.subject, g.environment, g.role)
            if key not in known:
                state[key] = ReviewGrant(g.subject, g.environment, g.role, g.created_by, g.created_at, g.expires_at)
    live = [g for g in state.values() if g.expires_at is None or g.expires_at > at]
    return sorted(live, key=lambda g: (g.environment, g.subject, g.role))


def review_csv(grants: list[ReviewGrant]) -> Iterator[str]:
    """CSV with a header row; every cell formula-safe (audit.export's csv_safe)."""
    buf = io.StringIO()
    w = csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\n")
    w.writerow(REVIEW_COLUMNS)
    for g in grants:
        d = g.as_dict()
        w.writerow([csv_safe(d[c]) for c in REVIEW_COLUMNS])
    yield buf.getvalue()

