"""Durable schedule state (operator pauses, desired counts the scheduler remembers) and its view.

Both live in the database, not only in Redis: a pause is a promise made to
people ("staging stays as it is until Monday") and a remembered count is the
only record of how many tasks a service ran before the night; neither may
vanish with a Redis restart or a scheduler restart.

Used by the web process (pause, resume, the state shown on pages) and by the
scheduler (``workers.schedule_reconciler``), so it lives here and imports neither.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Callable, TypeVar, cast

from sqlalchemy import CursorResult, delete, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from scope.catalog import Environment
from scope.errors import Unavailable, ValidationFailed
from scope.models import ScheduledService, SchedulePause, SchedulePeriod, utcnow
from scope.schedule_windows import Schedule
from scope.times import iso_or_none

MAX_PAUSE = dt.timedelta(days=30)  # DESIGN: any future time up to 30 days ahead
# States of a ScheduledService row (see its docstring in scope.models).
SCALING_DOWN, DOWN, SCALING_UP = "scaling_down", "down", "scaling_up"

T = TypeVar("T")


def local_text(t: dt.datetime | None, schedule: Schedule) -> str | None:
    """A time as people at the environment read it, e.g. 'Fri 27 Nov 20:00 CET'."""
    return t.astimezone(schedule.zone).strftime("%a %d %b %Y %H:%M %Z") if t else None


@dataclass(frozen=True)
class Pause:
    environment: str
    until: dt.datetime | None  # None: until resumed
    by: str
    at: dt.datetime

    def active(self, now: dt.datetime) -> bool:
        return self.until is None or self.until > now

    def record(self) -> dict[str, Any]:
        """As stored in audit before/after."""
        return {"paused": True, "until": iso_or_none(self.until)}


NOT_PAUSED: dict[str, Any] = {"paused": False, "until": None}


@dataclass(frozen=True)
class Remembered:
    """A service the scheduler scaled down: its desired count before, and how far the step got."""

    environment: str
    service: str
    desired: int
    state: str
    min_capacity: int | None = None  # an autoscaling MinCapacity lowered to 0, to restore


def _pause(row: SchedulePause) -> Pause:
    return Pause(row.environment, row.until, row.paused_by, row.paused_at)


class ScheduleStore:
    """Reads and writes schedule state; every database failure becomes Unavailable (fail closed)."""

    def __init__(self, sessions: sessionmaker[Session], clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.sessions, self.clock = sessions, clock

    def _run(self, doing: str, fn: Callable[[Session], T]) -> T:
        try:
            with self.sessions.begin() as s:
                return fn(s)
        except SQLAlchemyError as e:
            raise Unavailable(f"The schedule database cannot be {doing} right now; nothing was done.") from e

    # ---- pauses -------------------------------------------------------------
    def pause_of(self, environment: str, now: dt.datetime | None = None) -> Pause | None:
        """The environment's pause if it is still in force at ``now`` (an expired one is no pause)."""
        row = self._run("read", lambda s: s.get(SchedulePause, environment))
        if row is None:
            return None
        p = _pause(row)
        return p if p.active(now or self.clock()) else None

    def set_pause(self, environment: str, until: dt.datetime | None, by: str,
                  before_commit: Callable[[Pause | None, Pause], None]) -> Pause:
        """Pause (or re-pause with a new ``until``); ``before_commit(old, new)`` runs inside the
        transaction, so when it raises (the audit write failed) nothing is paused."""
        now = self.clock()

        def write(s: Session) -> Pause:
            row = s.get(SchedulePause, environment, with_for_update=True)
            old = _pause(row) if row is not None and _pause(row).active(now) else None
            if row is None:
                row = SchedulePause(environment=environment)
                s.add(row)
            row.until, row.paused_by, row.paused_at = until, by, now
            s.flush()
            new = _pause(row)
            before_commit(old, new)
            return new

        try:
            return self._run("written", write)
        except Unavailable as e:
            if not isinstance(e.__cause__, IntegrityError):
                raise
            # Two first pauses at once: the other insert won; update it instead.
            return self._run("written", write)

    def clear_pause(self, environment: str, before_commit: Callable[[Pause | None], None]) -> Pause | None:
        """Resume: drop the pause; returns the pause that was in force (None if there was none)."""
        now = self.clock()

        def write(s: Session) -> Pause | None:
            row = s.get(SchedulePause, environment, with_for_update=True)
            old = _pause(row) if row is not None and _pause(row).active(now) else None
            if row is not None:
                s.delete(row)
            # Resuming means "enforce the schedule now": forget that this down period was handled.
            s.execute(delete(SchedulePeriod).where(SchedulePeriod.environment == environment))
            s.flush()
            before_commit(old)
            return old

        return self._run("written", write)

    def end_expired_pause(self, environment: str, now: dt.datetime,
                          before_commit: Callable[[Pause], None]) -> Pause | None:
        """A pause whose ``until`` has passed ends like a resume; returns it (None if there was none).

        The DELETE itself is conditional on ``until <= now``, so a new pause
        written meanwhile by the web process is never dropped.
        """
        def write(s: Session) -> Pause | None:
            row = s.get(SchedulePause, environment)
            if row is None or row.until is None or row.until > now:
                return None
            ended = _pause(row)
            gone = s.execute(delete(SchedulePause).where(
                SchedulePause.environment == environment, SchedulePause.until.is_not(None),
                SchedulePause.until <= now).execution_options(synchronize_session=False))
            if cast(CursorResult[Any], gone).rowcount != 1:
                return None  # re-paused just now
            s.execute(delete(SchedulePeriod).where(SchedulePeriod.environment == environment))
            s.flush()
            before_commit(ended)
            return ended

        return self._run("written", write)

    # ---- down periods already handled -----------------------------------------
    def handled_period(self, environment: str) -> str | None:
        row = self._run("read", lambda s: s.get(SchedulePeriod, environment))
        return row.period if row is not None else None

    def mark_period(self, environment: str, period: str) -> None:
        def write(s: Session) -> None:
            row = s.get(SchedulePeriod, environment)
            if row is None:
                s.add(SchedulePeriod(environment=environment, period=period, updated_at=self.clock()))
            else:
                row.period, row.updated_at = period, self.clock()

        self._run("written", write)

    # ---- remembered desired counts -------------------------------------------
    def remembered(self, environment: str) -> dict[str, Remembered]:
        rows = self._run("read", lambda s: list(s.scalars(
            select(ScheduledService).where(ScheduledService.environment == environment))))
        return {r.service: Remembered(r.environment, r.service, r.desired, r.state, r.min_capacity) for r in rows}

    def remember(self, environment: str, service: str, desired: int, state: str,
                 min_capacity: int | None = None) -> Remembered:
        """Insert or update the row of one service (the caller holds the environment's lock);
        a remembered ``min_capacity`` is kept unless a new one is given."""
        def write(s: Session) -> Remembered:
            row = s.scalar(select(ScheduledService).where(ScheduledService.environment == environment,
                                                          ScheduledService.service == service))
            if row is None:
                row = ScheduledService(environment=environment, service=service)
                s.add(row)
            row.desired, row.state, row.updated_at = desired, state, self.clock()
            if min_capacity is not None:
                row.min_capacity = min_capacity
            return Remembered(environment, service, desired, state, row.min_capacity)

        return self._run("written", write)

    def forget(self, environment: str, service: str) -> None:
        self._run("written", lambda s: s.execute(delete(ScheduledService).where(
            ScheduledService.environment == environment, ScheduledService.service == service)))


# ---- what people see ----------------------------------------------------------------
def schedule_view(env: Environment, pause: Pause | None, now: dt.datetime) -> dict[str, Any] | None:
    """The ``schedule`` object of the API (and the page's extra ``*_local`` texts).

    ``up_now`` is what the schedule asks for at ``now``; ``next_transition`` is
    the schedule's own next change (the scheduler does not act on it while the
    environment is paused).
    """
    sched = env.schedule
    if sched is None:
        return None
    nxt = sched.next_transition(now)
    until = pause.until if pause else None
    return {**sched.as_dict(), "up_now": sched.is_up(now), "paused": pause is not None,
            "paused_until": iso_or_none(until), "paused_by": pause.by if pause else None,
            "paused_at": iso_or_none(pause.at) if pause else None,
            "next_transition": iso_or_none(nxt),
            # For the page only (the API schema does not carry them): times in the environment's zone,
            # and how long the pause has lasted ("3 h ago").
            "next_transition_local": local_text(nxt, sched), "paused_until_local": local_text(until, sched),
            "paused_at_local": local_text(pause.at if pause else None, sched),
            "paused_age": age_text(now - pause.at) if pause else None}


def age_text(age: dt.timedelta) -> str:
    """A pause's age as people say it: 'just now', '12 min', '5 h', '3 days'."""
    seconds = max(0, int(age.total_seconds()))
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} days ago"


def parse_until(value: str | None, schedule: Schedule, now: dt.datetime) -> dt.datetime | None:
    """``until`` of a pause: ISO 8601; without an offset it is wall-clock time in the schedule's zone
    (what a datetime-local form field sends). Must be in the future and at most MAX_PAUSE ahead."""
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    try:
        t = dt.datetime.fromisoformat(text)
        if t.tzinfo is None or t.utcoffset() is None:
            t = t.replace(tzinfo=schedule.zone)
        # Converting a time at the calendar's edges (year 1, or 9999-12-31T23:59-14:00)
        # leaves datetime's range: OverflowError, a refusal like any other bad value.
        t = t.astimezone(dt.timezone.utc)
    except (ValueError, OverflowError):
        raise ValidationFailed({"until": [f"{text[:40]!r} is not an ISO 8601 date and time "
                                          "(e.g. 2026-11-27T18:00:00Z, or 2026-11-27T18:00 in the "
                                          f"environment's time zone {schedule.timezone})."]}) from None
    if t <= now:
        raise ValidationFailed({"until": [f"must be in the future (it is {iso_or_none(t)}; now is {iso_or_none(now)})."]})
    if t > now + MAX_PAUSE:
        raise ValidationFailed({"until": [f"must be at most {MAX_PAUSE.days} days ahead (until {iso_or_none(now + MAX_PAUSE)})."]})
    return t
