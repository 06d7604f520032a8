"""Time ranges and steps of the history endpoints, and where each step is served from.

``raw`` reads ``readings``; ``1m``, ``5m`` and ``15m`` read the 1-minute rollups; ``1h`` and
``1d`` read the 1-hour rollups (``1d`` is a local day of the building). Every range is at most
``MAX_POINTS`` steps long, so no request can ask for an unbounded answer.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import Query
from pydantic import AwareDatetime, BeforeValidator

from api.common import array_literal, bad_query

MAX_POINTS = 20_000
MAX_RAW_SPAN = timedelta(days=2)


class Step(StrEnum):
    RAW = "raw"
    M1 = "1m"
    M5 = "5m"
    M15 = "15m"
    H1 = "1h"
    D1 = "1d"


_WIDTH = {
    Step.M1: timedelta(minutes=1),
    Step.M5: timedelta(minutes=5),
    Step.M15: timedelta(minutes=15),
    Step.H1: timedelta(hours=1),
    Step.D1: timedelta(days=1),
}

_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


def _iso_text(value: object) -> object:
    """Only ISO 8601 text: pydantic would also take a number as a Unix time."""
    if isinstance(value, str) and not _ISO.match(value):
        raise ValueError("must be an ISO 8601 date and time with an offset")
    return value


Instant = Annotated[AwareDatetime, BeforeValidator(_iso_text)]
From = Annotated[Instant | None, Query(alias="from", description="start, ISO 8601 with offset")]
To = Annotated[
    Instant | None, Query(alias="to", description="end (exclusive), ISO 8601 with offset")
]
StepQuery = Annotated[
    Step | None, Query(description="raw, 1m, 5m, 15m, 1h or 1d; default by range")
]

_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def time_range(
    start: datetime | None, end: datetime | None, default: timedelta
) -> tuple[datetime, datetime]:
    """``[from, to)``: ``to`` defaults to now, ``from`` to ``to - default``."""
    end = end or datetime.now(UTC)
    start = start or end - default
    for name, value in (("from", start), ("to", end)):
        if not _EARLIEST <= value < _LATEST:
            raise bad_query(name, "must lie between 1970 and 2200")
    if start >= end:
        raise bad_query("from", "must be before 'to'")
    return start, end


def choose_step(step: Step | None, start: datetime, end: datetime) -> Step:
    span = end - start
    if step is None:
        if span <= timedelta(hours=2):
            return Step.RAW
        if span <= timedelta(days=2):
            return Step.M1
        return Step.H1 if span <= timedelta(days=62) else Step.D1
    if step is Step.RAW:
        if span > MAX_RAW_SPAN:
            raise bad_query("step", "raw readings are served for at most 2 days; use a step")
    elif span / _WIDTH[step] > MAX_POINTS:
        raise bad_query("step", f"more than {MAX_POINTS} steps in the range; use a longer step")
    return step


def source(step: Step) -> tuple[str, str]:
    """(table, time column) a step is served from; the names are fixed literals."""
    if step is Step.RAW:
        return "readings", "ts"
    if step in (Step.H1, Step.D1):
        return "rollups_1h", "bucket"
    return "rollups_1m", "bucket"


def bin_sql(step: Step, column: str) -> str:
    """SQL of a row's bin key; binds ``%(edges)s`` (1d) or ``%(width)s``/``%(origin)s``.

    The key is the bin's start, except for a local day (1d): the day's number in the range's
    local midnights (``edges``, computed once per request), found by binary search, so no row
    needs a time zone lookup; :func:`bin_start_sql` turns a key into the bin's start.
    """
    if step in (Step.RAW, Step.M1, Step.H1):
        return column
    if step is Step.D1:
        return f"width_bucket({column}, %(edges)s::timestamptz[])"
    return f"date_bin(%(width)s, {column}, %(origin)s)"


def bin_start_sql(step: Step, key: str) -> str:
    """SQL of the start of the bin whose :func:`bin_sql` key is ``key``."""
    return f"(%(edges)s::timestamptz[])[{key}]" if step is Step.D1 else key


def day_edges(tz: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    """The local midnights from the one at or before ``start`` to the first at or after ``end``."""
    days = _midnights(tz.key, start.astimezone(tz).date(), end.astimezone(tz).date())
    return list(days[: bisect_left(days, end) + 1])


@lru_cache(maxsize=256)
def _midnights(tz_key: str, first: date, last: date) -> tuple[datetime, ...]:
    """The local midnights (UTC) of the days ``first`` to the day after ``last``."""
    tz, out, day = ZoneInfo(tz_key), [], first
    while day <= last + timedelta(days=1):
        out.append(datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC))
        day += timedelta(days=1)
    return tuple(out)


def whole_days(
    edges: list[datetime], start: datetime, end: datetime
) -> tuple[datetime, datetime] | None:
    """[first, last) local midnights bounding the whole days within [start, end), for reading
    those days from ``rollups_1d`` and the rest from ``rollups_1h``; None when there is no
    whole day, or when a midnight is not on a UTC hour (an hourly bucket would then straddle
    it and count twice)."""
    inside = [e for e in edges if start <= e <= end]
    if len(inside) < 2 or any(e.minute or e.second for e in inside):
        return None
    return inside[0], inside[-1]


def bin_params(step: Step, tz: ZoneInfo, start: datetime, end: datetime) -> dict[str, Any]:
    return {
        "edges": array_literal(tuple(day_edges(tz, start, end)) if step is Step.D1 else ()),
        "width": _WIDTH.get(step, timedelta(minutes=1)),
        "origin": datetime(2000, 1, 1, tzinfo=tz),
    }
