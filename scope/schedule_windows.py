"""On/off schedules of an environment: parsing and evaluating up-windows.

``up = "Mon-Fri 07:00-20:00"`` (or a list of such windows) in the environment's
own time zone. Evaluation is done on local wall-clock time, so a window keeps
meaning "07:00 in Berlin" across daylight-saving changes:

- in the spring-forward gap (02:00-03:00 does not exist in Berlin) the clock
  jumps, so a window edge inside the gap takes effect at the jump;
- in the fall-back fold (02:00-03:00 happens twice) the wall clock shows each
  minute twice, so an edge inside the fold takes effect at both occurrences.

``is_up`` is the definition; ``next_transition`` computes the first instant
at which ``is_up`` changes directly from the window edges and the zone's UTC
offset changes, and is checked against a minute-by-minute scan in the tests.
"""
from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(r"^\s*(?P<days>[A-Za-z,\- ]+?)\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$")
_UTC = dt.timezone.utc
# Offset changes are searched by sampling the zone this often; no zone changes
# its offset twice within six hours.
_OFFSET_SAMPLE = dt.timedelta(hours=6)


class ScheduleSyntaxError(ValueError):
    """A schedule value that cannot be parsed; the message says what is wrong."""


def _aware(at: dt.datetime) -> dt.datetime:
    # A naive datetime would silently be read as the server's local time.
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("schedule times must be timezone-aware")
    return at


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # 0 = Monday
    start: int  # minutes after local midnight
    end: int  # minutes after local midnight, 1440 = 24:00

    def contains(self, local: dt.datetime) -> bool:
        minute = local.hour * 60 + local.minute
        return local.weekday() in self.days and self.start <= minute < self.end


@dataclass(frozen=True)
class Schedule:
    timezone: str
    windows: tuple[Window, ...]
    text: tuple[str, ...]

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)  # ZoneInfo caches instances per key

    def is_up(self, at: dt.datetime) -> bool:
        local = _aware(at).astimezone(self.zone)
        return any(w.contains(local) for w in self.windows)

    def next_transition(self, at: dt.datetime, horizon_days: int = 8) -> dt.datetime | None:
        """The first instant after ``at`` at which ``is_up`` changes (UTC), or None if never.

        ``is_up`` can only change where the local wall clock reaches a window
        edge or where the zone's UTC offset changes (the clock jumps). Between
        two such candidate instants it is constant, so the answer is the first
        candidate whose state differs from the state at ``at``. A weekly
        schedule that does not change within eight days never changes.
        """
        start = _aware(at).astimezone(_UTC)
        end = start + dt.timedelta(days=horizon_days)
        state = self.is_up(start)
        for candidate in self._candidates(start, end):
            if self.is_up(candidate) != state:
                return candidate
        return None

    def _candidates(self, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
        zone = self.zone
        found: set[dt.datetime] = set()
        day = start.astimezone(zone).date() - dt.timedelta(days=1)
        last = end.astimezone(zone).date() + dt.timedelta(days=1)
        while day <= last:
            midnight = dt.datetime.combine(day, dt.time())
            for w in self.windows:
                if day.weekday() not in w.days:
                    continue
                for minute in (w.start, w.end):
                    wall = midnight + dt.timedelta(minutes=minute)
                    # Both readings of a wall time: they differ only in a fold
                    # (two instants show it) or a gap (neither does; the offset
                    # change below is then the real edge).
                    for fold in (0, 1):
                        found.add(wall.replace(tzinfo=zone, fold=fold).astimezone(_UTC))
            day += dt.timedelta(days=1)
        found.update(_offset_changes(zone, start, end))
        return sorted(c for c in found if start < c <= end)

    def as_dict(self) -> dict[str, object]:
        return {"timezone": self.timezone, "up": list(self.text)}


def _offset_changes(zone: ZoneInfo, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    """The instants in (start, end] at which ``zone``'s UTC offset changes, to the second."""
    def offset(t: dt.datetime) -> dt.timedelta | None:
        return t.astimezone(zone).utcoffset()

    out: list[dt.datetime] = []
    # tzdata transitions fall on whole seconds: search whole seconds from a whole-second base.
    a = start.replace(microsecond=0)
    while a < end:
        b = min(a + _OFFSET_SAMPLE, end)
        before = offset(a)
        if before != offset(b):
            lo, hi = 0, math.ceil((b - a).total_seconds())  # offset at a+lo is the old one, at a+hi the new one
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if offset(a + dt.timedelta(seconds=mid)) == before:
                    lo = mid
                else:
                    hi = mid
            out.append(a + dt.timedelta(seconds=hi))
        a = b
    return out


def _minutes(value: str, *, allow_24: bool) -> int:
    h, m = (int(x) for x in value.split(":"))
    if m > 59 or h > 24 or (h == 24 and (m or not allow_24)):
        raise ScheduleSyntaxError(f"bad time {value!r}")
    return h * 60 + m


def _days(spec: str) -> frozenset[int]:
    out: set[int] = set()
    for part in spec.replace(" ", "").lower().split(","):
        if not part:
            raise ScheduleSyntaxError("empty day")
        ends = part.split("-")
        if len(ends) > 2 or any(d not in DAYS for d in ends):
            raise ScheduleSyntaxError(f"unknown day {part!r} (use Mon, Tue, Wed, Thu, Fri, Sat, Sun)")
        a, b = DAYS.index(ends[0]), DAYS.index(ends[-1])
        i = a
        while True:  # a range may wrap over the weekend: Fri-Mon
            out.add(i)
            if i == b:
                break
            i = (i + 1) % 7
    return frozenset(out)


def parse_window(text: str) -> Window:
    m = _WINDOW.match(text)
    if not m:
        raise ScheduleSyntaxError(f"expected a window like 'Mon-Fri 07:00-20:00', got {text!r}")
    start = _minutes(m["start"], allow_24=False)
    end = _minutes(m["end"], allow_24=True)
    if end <= start:
        raise ScheduleSyntaxError(f"window {text!r} ends before it starts "
                                  "(split a window over midnight in two: 'Mon 22:00-24:00', 'Tue 00:00-06:00')")
    return Window(_days(m["days"]), start, end)


def parse_schedule(value: object) -> Schedule:
    if not isinstance(value, dict):
        raise ScheduleSyntaxError("expected a table like { timezone = \"Europe/Berlin\", up = \"Mon-Fri 07:00-20:00\" }")
    unknown = set(value) - {"timezone", "up"}
    if unknown:
        raise ScheduleSyntaxError(f"unknown key {sorted(unknown)[0]!r}")
    tz = value.get("timezone", "UTC")
    if not isinstance(tz, str) or not tz:
        raise ScheduleSyntaxError("timezone must be a non-empty string like \"Europe/Berlin\"")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: some tzdata layouts raise IsADirectoryError for "Europe".
        raise ScheduleSyntaxError(f"unknown time zone {tz!r}") from None
    if "up" not in value:
        raise ScheduleSyntaxError("missing key 'up' (e.g. up = \"Mon-Fri 07:00-20:00\")")
    up = value["up"]
    texts = [up] if isinstance(up, str) else up
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ScheduleSyntaxError("up must be a window string or a non-empty list of them")
    return Schedule(tz, tuple(parse_window(t) for t in texts), tuple(texts))
