"""Time as Valet Key writes and reads it: one ISO 8601 formatter and one grammar for times and durations.

Every time shown or stored as text is UTC with a ``Z`` suffix. Every place
that accepts a time (audit filters, log ranges, pause ``until``) accepts
ISO 8601 — naive means UTC — or an age before now, and every place that
accepts a duration (``--for 8h``, token lifetimes, access requests) uses the
same units, so ``1w`` means the same everywhere.
"""
from __future__ import annotations

import datetime as dt
import re
from typing import Literal

UTC = dt.timezone.utc
Timespec = Literal["auto", "seconds", "milliseconds", "microseconds"]

# Up to six digits: large enough for any sensible age, small enough that no
# arithmetic overflows before validation can name the field.
_AGE = re.compile(r"^(\d{1,6})([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


def iso(t: dt.datetime, timespec: Timespec = "auto") -> str:
    """``2026-11-24T18:00:00Z``: UTC, ``Z`` instead of ``+00:00``."""
    return t.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def iso_or_none(t: dt.datetime | None, timespec: Timespec = "auto") -> str | None:
    return iso(t, timespec) if t is not None else None


def parse_duration(value: str) -> dt.timedelta:
    """``30s``, ``15m``, ``8h``, ``7d``, ``2w``; ValueError (with the grammar) otherwise."""
    m = _AGE.match(value.strip())
    if not m:
        raise ValueError(f"not a duration: {value[:32]!r} (a number with unit s, m, h, d or w, like 15m or 8h)")
    return dt.timedelta(**{_UNITS[m[2]]: int(m[1])})


def parse_iso(value: str) -> dt.datetime:
    """ISO 8601 as an aware UTC datetime (a naive time is UTC); ValueError otherwise."""
    t = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).astimezone(UTC)


def parse_instant(value: str, now: dt.datetime) -> dt.datetime:
    """ISO 8601 (a naive time is UTC), ``now``, or an age before ``now`` (``15m``, ``2h``, ``7d``, ``1w``).

    Raises ValueError with a message fit for a field error.
    """
    v = value.strip()
    try:
        if v == "now":
            return now
        if _AGE.match(v):
            return now - parse_duration(v)
        return parse_iso(v)
    except (ValueError, OverflowError):  # overflow: an age reaching before year 1, or a year past 9999
        raise ValueError(f"not a date or time: {value[:64]!r} (use ISO 8601 like 2026-11-24T18:00:00Z, "
                         "or an age like 15m, 2h, 7d)") from None
