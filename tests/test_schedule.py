"""Schedules: parsing, wall-clock evaluation across DST, next_transition, and the ``until`` of a pause."""
from __future__ import annotations

import datetime as dt
import random

import pytest

from scope.errors import ValidationFailed
from scope.schedule_store import parse_until
from scope.schedule_windows import ScheduleSyntaxError, parse_schedule

UTC = dt.timezone.utc
BERLIN_SPRING = dt.date(2026, 3, 29)  # last Sunday of March: 02:00 CET -> 03:00 CEST (01:00 UTC)
BERLIN_AUTUMN = dt.date(2026, 10, 25)  # last Sunday of October: 03:00 CEST -> 02:00 CET (01:00 UTC)


def utc(*a: int) -> dt.datetime:
    return dt.datetime(*a, tzinfo=UTC)


def sched(up: str | list[str], tz: str = "Europe/Berlin"):
    return parse_schedule({"timezone": tz, "up": up})


def brute_next(s, at: dt.datetime, days: int = 8) -> dt.datetime | None:
    """The reference: scan minute by minute (windows and offsets change on whole minutes)."""
    state = s.is_up(at)
    t = at.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    end = at + dt.timedelta(days=days)
    while t <= end:
        if s.is_up(t) != state:
            return t
        t += dt.timedelta(minutes=1)
    return None


# ---- parsing -------------------------------------------------------------------------
def test_days_ranges_lists_and_wrapping():
    s = sched(["Mon-Fri 07:00-20:00", "Sat, Sun 10:00-12:00", "Fri-Mon 22:00-24:00"])
    assert s.windows[0].days == frozenset(range(5))
    assert s.windows[1].days == frozenset({5, 6})
    assert s.windows[2].days == frozenset({4, 5, 6, 0})  # wraps over the weekend
    assert s.windows[2].end == 1440
    assert s.as_dict() == {"timezone": "Europe/Berlin",
                           "up": ["Mon-Fri 07:00-20:00", "Sat, Sun 10:00-12:00", "Fri-Mon 22:00-24:00"]}


def test_timezone_defaults_to_utc():
    assert parse_schedule({"up": "Mon 07:00-08:00"}).timezone == "UTC"


@pytest.mark.parametrize("value, reason", [
    ({"timezone": "Europe/Berlin", "up": "Funday 07:00-08:00"}, "unknown day"),
    ({"up": "Mon-Fri-Sat 07:00-08:00"}, "unknown day"),
    ({"up": "Mon,,Tue 07:00-08:00"}, "empty day"),
    ({"up": "Mon 07:00-25:00"}, "bad time"),
    ({"up": "Mon 07:60-08:00"}, "bad time"),
    ({"up": "Mon 24:00-24:00"}, "bad time"),
    ({"up": "Mon 07:00-24:30"}, "bad time"),
    ({"up": "Mon 20:00-07:00"}, "ends before it starts"),
    ({"up": "Mon 07:00-07:00"}, "ends before it starts"),
    ({"up": "Mon 7-8"}, "expected a window"),
    ({"up": "07:00-08:00"}, "expected a window"),
    ({"up": []}, "non-empty list"),
    ({"up": ["Mon 07:00-08:00", 3]}, "non-empty list"),
    ({"timezone": "Mars/Base", "up": "Mon 07:00-08:00"}, "unknown time zone"),
    ({"timezone": "Europe", "up": "Mon 07:00-08:00"}, "unknown time zone"),
    ({"timezone": "../../etc/passwd", "up": "Mon 07:00-08:00"}, "unknown time zone"),
    ({"timezone": "", "up": "Mon 07:00-08:00"}, "timezone must be"),
    ({"timezone": 1, "up": "Mon 07:00-08:00"}, "timezone must be"),
    ({"timezone": "UTC"}, "missing key 'up'"),
    ({"up": "Mon 07:00-08:00", "down": "Tue 07:00-08:00"}, "unknown key 'down'"),
    ("Mon-Fri 07:00-20:00", "expected a table"),
])
def test_bad_schedules_say_why(value, reason):
    with pytest.raises(ScheduleSyntaxError) as e:
        parse_schedule(value)
    assert reason in str(e.value)


# ---- evaluation on local wall-clock time ---------------------------------------------
def test_window_edges_are_local_and_half_open():
    s = sched("Mon-Fri 07:00-20:00")
    # Winter (CET, UTC+1): 07:00 Berlin is 06:00 UTC.
    assert not s.is_up(utc(2026, 1, 12, 5, 59))
    assert s.is_up(utc(2026, 1, 12, 6, 0))
    assert s.is_up(utc(2026, 1, 12, 18, 59))
    assert not s.is_up(utc(2026, 1, 12, 19, 0))
    # Summer (CEST, UTC+2): 07:00 Berlin is 05:00 UTC.
    assert s.is_up(utc(2026, 7, 13, 5, 0)) and not s.is_up(utc(2026, 7, 13, 4, 59))
    # Weekend: down all day.
    assert not s.is_up(utc(2026, 1, 17, 12, 0))


def test_24_00_is_midnight_and_always_up_never_changes():
    s = sched("Mon-Sun 00:00-24:00", tz="UTC")
    for h in range(0, 24 * 7, 5):
        assert s.is_up(utc(2026, 3, 23) + dt.timedelta(hours=h, minutes=59))
    assert s.next_transition(utc(2026, 3, 28, 23, 59, 59)) is None
    assert sched("Mon-Sun 00:00-24:00").next_transition(utc(2026, 3, 28, 12)) is None  # across DST too


def test_naive_datetimes_are_refused():
    s = sched("Mon-Fri 07:00-20:00")
    with pytest.raises(ValueError):
        s.is_up(dt.datetime(2026, 1, 12, 8, 0))
    with pytest.raises(ValueError):
        s.next_transition(dt.datetime(2026, 1, 12, 8, 0))


def test_spring_forward_keeps_the_wall_clock():
    s = sched("Mon-Sun 07:00-20:00")
    # The Saturday before: 07:00 CET = 06:00 UTC. The Sunday of the change: 07:00 CEST = 05:00 UTC.
    assert s.next_transition(utc(2026, 3, 28, 1)) == utc(2026, 3, 28, 6)
    assert s.next_transition(utc(2026, 3, 28, 19, 30)) == utc(2026, 3, 29, 5)
    assert s.next_transition(utc(2026, 3, 29, 5)) == utc(2026, 3, 29, 18)  # 20:00 CEST


def test_fall_back_keeps_the_wall_clock():
    s = sched("Mon-Sun 07:00-20:00")
    assert s.next_transition(utc(2026, 10, 24, 18, 30)) == utc(2026, 10, 25, 6)  # 07:00 CET
    assert s.next_transition(utc(2026, 10, 24, 1)) == utc(2026, 10, 24, 5)  # 07:00 CEST


def test_an_edge_inside_the_spring_gap_takes_effect_at_the_jump():
    # 02:30 does not exist on 29 March in Berlin: the clock jumps 02:00 CET -> 03:00 CEST at 01:00 UTC.
    s = sched("Sun 02:30-05:00")
    assert s.next_transition(utc(2026, 3, 28, 23)) == utc(2026, 3, 29, 1)
    assert s.is_up(utc(2026, 3, 29, 1)) and not s.is_up(utc(2026, 3, 29, 0, 59))
    assert s.next_transition(utc(2026, 3, 29, 1)) == utc(2026, 3, 29, 3)  # 05:00 CEST
    # A window entirely inside the gap never opens that day.
    gap = sched("Sun 02:10-02:50")
    assert gap.next_transition(utc(2026, 3, 28, 23)) == utc(2026, 4, 5, 0, 10)  # next Sunday, CEST


def test_an_edge_inside_the_autumn_fold_happens_twice():
    # 02:00-03:00 happens twice on 25 October: 02:30 CEST (00:30 UTC) and 02:30 CET (01:30 UTC).
    s = sched("Sun 02:30-08:00")
    t1 = s.next_transition(utc(2026, 10, 24, 23))
    t2 = s.next_transition(t1)
    t3 = s.next_transition(t2)
    t4 = s.next_transition(t3)
    assert (t1, t2, t3, t4) == (utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1), utc(2026, 10, 25, 1, 30),
                                utc(2026, 10, 25, 7))
    assert [s.is_up(t) for t in (t1, t2, t3, t4)] == [True, False, True, False]


def test_a_one_minute_window_is_not_missed():
    s = sched("Mon 00:00-00:01", tz="UTC")
    assert s.next_transition(utc(2026, 3, 29, 23, 57, 30)) == utc(2026, 3, 30, 0, 0)
    assert s.next_transition(utc(2026, 3, 30, 0, 0)) == utc(2026, 3, 30, 0, 1)


def test_windows_that_touch_merge():
    s = sched(["Mon 20:00-24:00", "Tue 00:00-06:00"], tz="UTC")
    assert s.next_transition(utc(2026, 3, 30, 21)) == utc(2026, 3, 31, 6)  # not at midnight


@pytest.mark.parametrize("tz, up", [
    ("Europe/Berlin", ["Mon-Fri 07:00-20:00"]),
    ("Europe/Berlin", ["Sun 02:30-08:00"]),
    ("Europe/Berlin", ["Sun 02:00-02:30", "Sun 02:45-03:00"]),
    ("Europe/Berlin", ["Sat 20:00-24:00", "Sun 00:00-02:15"]),
    ("America/New_York", ["Sun 01:00-02:30", "Mon-Fri 09:00-17:00"]),
    ("Australia/Lord_Howe", ["Sun 01:45-02:15"]),  # a 30-minute DST shift
    ("Asia/Kathmandu", ["Mon-Fri 09:00-17:00"]),  # a :45 offset
    ("UTC", ["Wed 12:00-12:03"]),
])
def test_next_transition_matches_a_minute_scan(tz, up):
    s = sched(up, tz)
    rng = random.Random(f"{tz}{up}")
    starts = [utc(2026, 3, 24), utc(2026, 10, 20), utc(2026, 4, 1), utc(2026, 11, 1), utc(2026, 9, 30),
              utc(2026, 3, 5)]
    for start in starts:
        for _ in range(4):
            at = start + dt.timedelta(seconds=rng.randint(0, 8 * 86400), microseconds=rng.randint(0, 999_999))
            assert s.next_transition(at) == brute_next(s, at), (tz, up, at)


# ---- until of a pause ---------------------------------------------------------------
NOW = utc(2026, 11, 27, 12, 0)


def test_until_with_offset_or_z():
    s = sched("Mon-Fri 07:00-20:00")
    assert parse_until("2026-11-28T09:30:00Z", s, NOW) == utc(2026, 11, 28, 9, 30)
    assert parse_until("2026-11-28T09:30:00+05:00", s, NOW) == utc(2026, 11, 28, 4, 30)


def test_until_without_offset_is_environment_wall_clock():
    s = sched("Mon-Fri 07:00-20:00")
    assert parse_until("2026-11-28T09:30", s, NOW) == utc(2026, 11, 28, 8, 30)  # CET
    assert parse_until("2026-11-28T09:30", sched("Mon 07:00-08:00", "America/New_York"), NOW) \
        == utc(2026, 11, 28, 14, 30)


@pytest.mark.parametrize("value", [None, "", "   "])
def test_no_until_means_until_resumed(value):
    assert parse_until(value, sched("Mon 07:00-08:00"), NOW) is None


@pytest.mark.parametrize("value, message", [
    ("tomorrow", "not an ISO 8601"),
    ("2026-13-01T00:00", "not an ISO 8601"),
    ("2026-11-27T11:59:00Z", "must be in the future"),
    ("2026-11-27T12:00:00Z", "must be in the future"),
    ("2026-12-27T12:00:01Z", "at most 30 days"),
    ("2027-01-01T00:00", "at most 30 days"),
    # The calendar's edges: converting them to UTC leaves datetime's range (was a 500).
    ("0001-01-01T00:00:00+01:00", "not an ISO 8601"),
    ("0001-01-01T00:00", "not an ISO 8601"),
    ("9999-12-31T23:59:59-14:00", "not an ISO 8601"),
    ("9999-12-31T23:59:59.999999", "at most 30 days"),
    ("\u0662\u0660\u0662\u0666-12-01T00:00", "not an ISO 8601"),
])
def test_bad_until_names_the_field(value, message):
    with pytest.raises(ValidationFailed) as e:
        parse_until(value, sched("Mon 07:00-08:00"), NOW)
    assert list(e.value.fields) == ["until"] and message in e.value.fields["until"][0]


def test_until_up_to_thirty_days_is_allowed():
    assert parse_until("2026-12-04T12:00:01Z", sched("Mon 07:00-08:00"), NOW) == utc(2026, 12, 4, 12, 0, 1)
    assert parse_until("2026-12-27T12:00:00Z", sched("Mon 07:00-08:00"), NOW) == utc(2026, 12, 27, 12)
