"""Time profiles of the simulated building: the shift schedule, its integral, and smooth noise.

Everything here is a pure function of simulated time (and a seed), so two processes that
simulate the same instant agree, and a restarted simulator continues where it left off.

The shift schedule is a piecewise-linear activity level (0..1) over the building's local
wall-clock time. It is sampled on a fixed 15-minute UTC grid and linearly interpolated between
grid points; because every breakpoint falls on a quarter hour (and every real timezone offset
is a whole number of quarter hours), the interpolation is the schedule itself, except in the
quarter hour of a daylight-saving jump. Interpolating on the grid makes the integral exact and
cheap: the energy registers are this integral, so power and energy can never disagree.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
"""Fixed origin of every integral (energy registers are defined relative to it)."""

GRID_S = 900
_PER_DAY = 86_400 // GRID_S
_MASK = (1 << 64) - 1

BASE_LEVEL = 0.2
"""Night and Sunday base load, as a fraction of the shift peak (HVAC, clean rooms, servers)."""

# (local hour, activity level) breakpoints per kind of day. Weekdays run two shifts,
# 08-16 and 16-24, with a ramp-up from 07:00 and a short dip at the shift change.
_WEEKDAY = (
    (0.0, BASE_LEVEL),
    (7.0, BASE_LEVEL),
    (8.0, 1.0),
    (15.75, 1.0),
    (16.0, 0.9),
    (16.25, 1.0),
    (23.5, 1.0),
    (24.0, BASE_LEVEL),
)
# Saturday: one reduced day shift. Sunday: base load only.
_SATURDAY = ((0.0, BASE_LEVEL), (7.0, BASE_LEVEL), (8.0, 0.55), (15.5, 0.55), (16.0, BASE_LEVEL))
_SUNDAY = ((0.0, BASE_LEVEL), (24.0, BASE_LEVEL))


def _schedule(weekday: int) -> tuple[tuple[float, float], ...]:
    if weekday < 5:
        return _WEEKDAY
    return _SATURDAY if weekday == 5 else _SUNDAY


def shift_level(local: datetime) -> float:
    """Activity level (0..1) of the shift schedule at a local wall-clock time."""
    points = _schedule(local.weekday())
    hour = local.hour + local.minute / 60 + local.second / 3600 + local.microsecond / 3.6e9
    i = bisect_right([p[0] for p in points], hour) - 1
    if i >= len(points) - 1:
        return points[-1][1]
    (h0, v0), (h1, v1) = points[i], points[i + 1]
    return v0 + (v1 - v0) * (hour - h0) / (h1 - h0)


def seconds_since_epoch(at: datetime) -> float:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"simulated time {at!r} must carry a UTC offset")
    return (at - EPOCH).total_seconds()


@lru_cache(maxsize=512)
def _day(tz_name: str, day: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Grid levels of one UTC day since the epoch, and their running integral in hours."""
    tz = ZoneInfo(tz_name)
    start = EPOCH + timedelta(days=day)
    levels = tuple(
        shift_level((start + timedelta(seconds=i * GRID_S)).astimezone(tz))
        for i in range(_PER_DAY + 1)
    )
    running = [0.0]
    for i in range(_PER_DAY):
        running.append(running[-1] + (levels[i] + levels[i + 1]) / 2 * GRID_S / 3600)
    return levels, tuple(running)


_CUMULATIVE: dict[str, dict[int, float]] = {}
"""Per timezone: integral from the epoch to the start of each UTC day (a pure cache)."""


class ShiftCurve:
    """The shift schedule of one timezone: level, integral and moving mean over time."""

    def __init__(self, tz_name: str) -> None:
        ZoneInfo(tz_name)  # fail early on an unknown zone
        self.tz_name = tz_name
        self._days = _CUMULATIVE.setdefault(tz_name, {0: 0.0})

    def _hours_before_day(self, day: int) -> float:
        """Integral from the epoch to the start of UTC day ``day`` (negative before it)."""
        days = self._days
        if day in days:
            return days[day]
        if day > 0:
            known = max(d for d in days if d <= day)
            for d in range(known, day):
                days[d + 1] = days[d] + _day(self.tz_name, d)[1][-1]
        else:
            known = min(d for d in days if d >= day)
            for d in range(known, day, -1):
                days[d - 1] = days[d] - _day(self.tz_name, d - 1)[1][-1]
        return days[day]

    def _locate(self, at: datetime) -> tuple[int, int, float]:
        seconds = seconds_since_epoch(at)
        day = math.floor(seconds / 86_400)
        within = seconds - day * 86_400
        slot = min(int(within // GRID_S), _PER_DAY - 1)
        return day, slot, (within - slot * GRID_S) / GRID_S

    def level(self, at: datetime) -> float:
        """Activity level (0..1) at a simulated instant."""
        day, slot, frac = self._locate(at)
        levels = _day(self.tz_name, day)[0]
        return levels[slot] + (levels[slot + 1] - levels[slot]) * frac

    def hours(self, at: datetime) -> float:
        """Integral of the level from :data:`EPOCH` to ``at``, in hours at full activity."""
        day, slot, frac = self._locate(at)
        levels, running = _day(self.tz_name, day)
        a = levels[slot]
        b = a + (levels[slot + 1] - a) * frac
        partial = (a + b) / 2 * frac * GRID_S / 3600
        return self._hours_before_day(day) + running[slot] + partial

    def mean(self, at: datetime, window_s: float) -> float:
        """Mean level over the ``window_s`` seconds before ``at`` (a thermal lag, say)."""
        return (self.hours(at) - self.hours(at - timedelta(seconds=window_s))) * 3600 / window_s


def stable_key(*parts: str | int) -> int:
    """A 64-bit key of strings and ints that is the same in every process (unlike hash())."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def _mix(x: int) -> int:
    """splitmix64 finaliser: a well-spread 64-bit hash of a 64-bit integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def unit(key: int, n: int = 0) -> float:
    """A deterministic uniform number in [0, 1) for ``(key, n)``."""
    return _mix(key ^ _mix(n & _MASK)) / 2.0**64


def smooth_noise(key: int, t: float, period_s: float) -> float:
    """Smooth value noise in [-1, 1]: random knots every ``period_s`` seconds, eased between."""
    x = t / period_s
    k = math.floor(x)
    f = x - k
    a = unit(key, k) * 2 - 1
    b = unit(key, k + 1) * 2 - 1
    return a + (b - a) * f * f * (3 - 2 * f)
