"""A floor's history by minute from the packed hours (``minute_packs``, migration 0017).

A pack is one sensor's closed UTC hour of 1-minute rollups: a mask of the minutes present and
their avg, min and max as JSON numbers joined by commas. A day of a floor by minute is then
about 100 rows, and their text goes into the answer as it is (``orjson.Fragment``): nothing is
decoded or encoded number by number. The hours at either end come from their packs too, the
minutes outside the range dropped here; the open hour and the hours without a pack the caller
may read (not packed yet, or leased to the caller for part of the hour only) are read from
``rollups_1m`` and folded into the same shape with the migration's own rules (``minute_bit``,
``json_avg``, ``json_number``), so one assembly serves both.

The answer is the one :mod:`api.history` gives from ``rollups_1m`` (``tests/test_api_packed.py``
compares them): one time axis of the minutes where any sensor has data, each series null
where it has none.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson

from api.auth import Read

# The packs of the hours [h0, h1) that the range touches and, folded alike from rollups_1m,
# the minutes in the range of every (sensor, hour) without a pack the caller may read; then
# one row per sensor: its hours (Unix time), their masks, and its values of them all, in hour
# order. A pack of an hour at either end holds minutes outside the range: :func:`assemble`
# drops them. ``ids`` is SQL of a text array of sensor ids. The plan is generic (see
# api.auth.Read): its shape must not depend on the values, so the minutes are read by index
# per gap, between bounds computed once (MATERIALIZED: an expression bound was only a
# filter), in a LATERAL that OFFSET 0 keeps from becoming a join (which a generic plan,
# guessing 1,000 hours, made a hash join over the whole of rollups_1m).
_SQL = """
WITH ids AS (SELECT unnest({ids}) AS id),
p AS MATERIALIZED (
    SELECT k.sensor_id, k.hour, k.mask, k.avg, k.min, k.max FROM minute_packs k
     WHERE k.sensor_id = ANY (ARRAY(SELECT id FROM ids))
       AND k.hour >= %(h0)s AND k.hour < %(h1)s),
gaps AS MATERIALIZED (
    SELECT i.id, greatest(h, %(start)s) AS lo, least(h + interval '1 hour', %(end)s) AS hi
      FROM ids i, generate_series(%(h0)s::timestamptz, %(h1)s::timestamptz - interval '1 hour',
                                  interval '1 hour') AS h
     WHERE NOT EXISTS (SELECT 1 FROM p WHERE p.sensor_id = i.id AND p.hour = h))
SELECT h.sensor_id, array_agg(extract(epoch FROM h.hour)::bigint ORDER BY h.hour) AS hours,
       array_agg(h.mask ORDER BY h.hour) AS masks, string_agg(h.avg, ',' ORDER BY h.hour) AS avg,
       string_agg(h.min, ',' ORDER BY h.hour) AS min, string_agg(h.max, ',' ORDER BY h.hour) AS max
  FROM (SELECT sensor_id, hour, mask, avg, min, max FROM p
        UNION ALL
        SELECT x.sensor_id, date_trunc('hour', x.bucket, 'UTC'), bit_or(minute_bit(x.bucket)),
               string_agg(json_avg(x.avg), ',' ORDER BY x.bucket),
               string_agg(json_number(x.min), ',' ORDER BY x.bucket),
               string_agg(json_number(x.max), ',' ORDER BY x.bucket)
          FROM gaps g, LATERAL (SELECT * FROM rollups_1m x WHERE x.sensor_id = g.id
                                   AND x.bucket >= g.lo AND x.bucket < g.hi OFFSET 0) x
         GROUP BY 1, 2) h
 GROUP BY h.sensor_id
"""


def packed_read(ids: str, params: dict[str, Any]) -> Read:
    """The query of a floor's minutes in [``start``, ``end``) of ``params``; ``ids`` SQL of
    the sensors' ids (a text array), with what it binds in ``params``."""
    h0 = _floor_hour(params["start"])
    h1 = _floor_hour(params["end"] - _TICK) + _HOUR
    return Read(_SQL.format(ids=ids), params | {"h0": h0, "h1": h1}, binary=True, generic=True)


_HOUR = timedelta(hours=1)
_TICK = timedelta(microseconds=1)


def _floor_hour(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _minutes_before(t: datetime) -> tuple[int, int]:
    """(the UTC hour of ``t`` in Unix time, how many of its minutes start before ``t``)."""
    hour = _floor_hour(t)
    return int(hour.timestamp()), -(-(t - hour) // timedelta(minutes=1))


_STATS = ("avg", "min", "max")
Row = dict[str, Any]


def _trim(row: Row, start: datetime, end: datetime) -> None:
    """Drop the minutes of ``row`` (a row of :func:`packed_read`) outside [start, end): those
    a pack of the first or last hour holds."""
    hour, k = _minutes_before(start)
    if k and row["hours"] and row["hours"][0] == hour:
        _drop(row, 0, row["masks"][0] & ((1 << k) - 1))
    hour, k = _minutes_before(end)
    if k and row["hours"] and row["hours"][-1] == hour:
        _drop(row, -1, row["masks"][-1] & ~((1 << k) - 1))


def _drop(row: Row, at: int, bits: int) -> None:
    """Drop the minutes ``bits`` of the first (``at`` 0) or last (-1) hour of ``row``."""
    n = bits.bit_count()
    if not n:
        return
    for name in _STATS:
        text: str = row[name]
        parts = text.split(",", n) if at == 0 else text.rsplit(",", n)
        row[name] = (parts[n] if at == 0 else parts[0]) if len(parts) > n else ""
    row["masks"][at] &= ~bits
    if not row["masks"][at]:
        del row["hours"][at], row["masks"][at]


@lru_cache(maxsize=4096)
def _times(hour: int, mask: int) -> str:
    """The JSON times (as orjson writes them) of the minutes of ``mask`` in ``hour`` (Unix)."""
    stamp = datetime.fromtimestamp(hour, UTC).strftime("%Y-%m-%dT%H:")
    return ",".join(f'"{stamp}{i:02d}:00Z"' for i in range(60) if mask >> i & 1)


def _spread(values: list[str], mask: int, union: int) -> str:
    """``values`` of ``mask``'s minutes placed on ``union``'s (null elsewhere), comma-joined."""
    each = iter(values)
    return ",".join(next(each) if mask >> i & 1 else "null" for i in range(60) if union >> i & 1)


def assemble(
    sensor_ids: list[str], rows: list[Row], start: datetime, end: datetime
) -> tuple[orjson.Fragment, dict[str, Any]]:
    """(the time axis, {sensor id: {"avg", "min", "max": JSON arrays}}) from the rows of
    :func:`packed_read` for [start, end). Every sensor's values of an hour go on the minutes
    any of them has: as they are when all sensors have the same hours and minutes (the usual
    case), else hour by hour."""
    found = {}
    for r in rows:
        if r["sensor_id"] in sensor_ids:
            _trim(r, start, end)
            if r["hours"]:
                found[r["sensor_id"]] = r
    first = next(iter(found.values()), None)
    if (
        first is not None
        and len(found) == len(sensor_ids)
        and all(
            r["hours"] == first["hours"] and r["masks"] == first["masks"] for r in found.values()
        )
    ):
        axis = ",".join(map(_times, first["hours"], first["masks"]))
        series = {s: {n: orjson.Fragment(f"[{r[n]}]") for n in _STATS} for s, r in found.items()}
        return orjson.Fragment(f"[{axis}]"), series
    return _by_hour(sensor_ids, found)


def _by_hour(
    sensor_ids: list[str], found: dict[str, Row]
) -> tuple[orjson.Fragment, dict[str, Any]]:
    """:func:`assemble` when the sensors' hours or minutes differ."""
    cells: dict[int, dict[str, tuple[int, dict[str, list[str]]]]] = {}
    for s, r in found.items():
        values = {n: r[n].split(",") for n in _STATS}
        at = 0
        for hour, mask in zip(r["hours"], r["masks"], strict=True):
            width = mask.bit_count()
            cells.setdefault(hour, {})[s] = (
                mask,
                {n: v[at : at + width] for n, v in values.items()},
            )
            at += width
    axis: list[str] = []
    parts: dict[str, dict[str, list[str]]] = {s: {n: [] for n in _STATS} for s in sensor_ids}
    for hour in sorted(cells):
        union = 0
        for mask, _ in cells[hour].values():
            union |= mask
        axis.append(_times(hour, union))
        for s in sensor_ids:
            cell = cells[hour].get(s)
            for n, out in parts[s].items():
                if cell is None:
                    out.append(",".join(["null"] * union.bit_count()))
                else:
                    out.append(_spread(cell[1][n], cell[0], union))
    series = {
        s: {n: orjson.Fragment(f"[{','.join(out)}]") for n, out in stats.items()}
        for s, stats in parts.items()
    }
    return orjson.Fragment(f"[{','.join(axis)}]"), series
