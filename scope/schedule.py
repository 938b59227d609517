"""On/off schedules of an environment: parsing and evaluating up-windows.

``up = "Mon-Fri 07:00-20:00"`` (or a list of such windows) in the environment's
own time zone. Evaluation is done on local wall-clock time, so a window keeps
meaning "07:00 in Berlin" across daylight-saving changes.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(r"^\s*(?P<days>[A-Za-z,\- ]+?)\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$")


class ScheduleSyntaxError(ValueError):
    """A schedule value that cannot be parsed; the message says what is wrong."""


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
        return ZoneInfo(self.timezone)

    def is_up(self, at: dt.datetime) -> bool:
        local = at.astimezone(self.zone)
        return any(w.contains(local) for w in self.windows)

    def next_transition(self, at: dt.datetime, horizon_days: int = 8) -> dt.datetime | None:
        """The first minute after ``at`` at which ``is_up`` changes (UTC), or None if never."""
        state = self.is_up(at)
        t = at.astimezone(dt.timezone.utc).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        end = t + dt.timedelta(days=horizon_days)
        # Step by minute only near candidates: jump in 15-minute strides, refine on change.
        stride = dt.timedelta(minutes=15)
        while t < end:
            nxt = t + stride
            if self.is_up(nxt) != state or self._changes_between(t, nxt, state):
                while t <= nxt:
                    if self.is_up(t) != state:
                        return t
                    t += dt.timedelta(minutes=1)
            t = nxt
        return None

    def _changes_between(self, a: dt.datetime, b: dt.datetime, state: bool) -> bool:
        # A window shorter than the stride could begin and end between samples.
        return any(self.is_up(a + dt.timedelta(minutes=m)) != state for m in range(0, 15, 5))

    def as_dict(self) -> dict[str, object]:
        return {"timezone": self.timezone, "up": list(self.text)}


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
        while True:
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
        raise ScheduleSyntaxError(f"window {text!r} ends before it starts")
    return Window(_days(m["days"]), start, end)


def parse_schedule(value: object) -> Schedule:
    if not isinstance(value, dict):
        raise ScheduleSyntaxError("expected a table like { timezone = \"Europe/Berlin\", up = \"Mon-Fri 07:00-20:00\" }")
    unknown = set(value) - {"timezone", "up"}
    if unknown:
        raise ScheduleSyntaxError(f"unknown key {sorted(unknown)[0]!r}")
    tz = value.get("timezone", "UTC")
    if not isinstance(tz, str):
        raise ScheduleSyntaxError("timezone must be a string")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleSyntaxError(f"unknown time zone {tz!r}") from None
    up = value.get("up")
    texts = [up] if isinstance(up, str) else up
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ScheduleSyntaxError("up must be a window string or a non-empty list of them")
    return Schedule(tz, tuple(parse_window(t) for t in texts), tuple(texts))
