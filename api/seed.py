"""Seeding history straight into the database (the benchmark, and tests).

Readings go in with binary COPY; the rollups are then computed from the stored readings with
the documented semantics of migration 0002 (per UTC minute / hour: count, sum, min, max, the
newest reading, and for energy registers the kWh of the bucket: each reading's increase over
the one before it, a reset counting from zero). Runs as the schema owner (the main URL).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import psycopg

_ROLLUP = """
INSERT INTO {table} (sensor_id, bucket, count, sum, min, max, last_ts, last_value, energy_kwh)
SELECT sensor_id, date_trunc('{unit}', ts, 'UTC'), count(*), sum(value), min(value), max(value),
       max(ts), (array_agg(value ORDER BY ts DESC))[1],
       CASE WHEN bool_or(kind = 'energy') THEN
            sum(CASE WHEN prev IS NULL THEN 0 WHEN value >= prev THEN value - prev ELSE value END)
       END
  FROM (SELECT r.sensor_id, r.ts, r.value, s.kind,
               lag(r.value) OVER (PARTITION BY r.sensor_id ORDER BY r.ts) AS prev
          FROM readings r JOIN sensors s ON s.id = r.sensor_id
         WHERE r.sensor_id = ANY(%(ids)s) AND r.ts >= %(start)s AND r.ts < %(end)s) x
 GROUP BY 1, 2
ON CONFLICT (sensor_id, bucket) DO UPDATE SET
    count = excluded.count, sum = excluded.sum, min = excluded.min, max = excluded.max,
    last_ts = excluded.last_ts, last_value = excluded.last_value,
    energy_kwh = excluded.energy_kwh
"""


# Quarter-hour energy and local days (migration 0011) from the 1-minute rollups just written.
_QUARTERS = """
INSERT INTO energy_15m (sensor_id, bucket, energy_kwh)
SELECT sensor_id, date_bin('15 minutes', bucket, 'epoch'), sum(energy_kwh) FROM rollups_1m
 WHERE sensor_id = ANY(%(ids)s) AND energy_kwh IS NOT NULL
   AND bucket >= date_bin('15 minutes', %(start)s, 'epoch') AND bucket < %(end)s
 GROUP BY 1, 2
ON CONFLICT (sensor_id, bucket) DO UPDATE SET energy_kwh = excluded.energy_kwh
"""
_DAYS = """
INSERT INTO rollups_1d (sensor_id, bucket, count, sum, min, max, last_ts, last_value, energy_kwh)
SELECT m.sensor_id, local_day_start(m.bucket, b.timezone), sum(m.count), sum(m.sum),
       min(m.min), max(m.max), max(m.last_ts),
       (array_agg(m.last_value ORDER BY m.last_ts DESC))[1], sum(m.energy_kwh)
  FROM rollups_1m m JOIN sensors s ON s.id = m.sensor_id JOIN buildings b ON b.id = s.building_id
 WHERE m.sensor_id = ANY(%(ids)s) AND m.bucket >= local_day_start(%(start)s, b.timezone)
   AND m.bucket < %(end)s
 GROUP BY 1, 2
ON CONFLICT (sensor_id, bucket) DO UPDATE SET
    count = excluded.count, sum = excluded.sum, min = excluded.min, max = excluded.max,
    last_ts = excluded.last_ts, last_value = excluded.last_value,
    energy_kwh = excluded.energy_kwh
"""


def ensure_partitions(conn: psycopg.Connection[Any], start: datetime, end: datetime) -> None:
    month = datetime(start.year, start.month, 1, tzinfo=UTC)
    while month <= end:
        conn.execute("SELECT ensure_readings_partition(%s)", (month,))
        month = datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=UTC)


def copy_readings(
    conn: psycopg.Connection[Any], rows: Iterable[tuple[str, datetime, float]]
) -> int:
    n = 0
    with conn.cursor().copy(
        "COPY readings (sensor_id, ts, value) FROM STDIN (FORMAT BINARY)"
    ) as cp:
        cp.set_types(["text", "timestamptz", "float8"])
        for row in rows:
            cp.write_row(row)
            n += 1
    return n


def recompute_rollups(
    conn: psycopg.Connection[Any], sensor_ids: list[str], start: datetime, end: datetime
) -> None:
    """Rollups and latest values of ``sensor_ids`` from the readings in [start, end).

    ``start`` should be a UTC hour; the reading before ``start`` is not looked at, so the
    first reading of the range counts no kWh.
    """
    params = {"ids": sensor_ids, "start": start, "end": end}
    for table, unit in (("rollups_1m", "minute"), ("rollups_1h", "hour")):
        conn.execute(_ROLLUP.format(table=table, unit=unit), params)  # literals only
    conn.execute(_QUARTERS, params)
    conn.execute(_DAYS, params)
    conn.execute(
        "INSERT INTO sensor_latest AS l (sensor_id, ts, value)"
        " SELECT DISTINCT ON (sensor_id) sensor_id, ts, value FROM readings"
        "  WHERE sensor_id = ANY(%(ids)s) AND ts >= %(start)s AND ts < %(end)s"
        "  ORDER BY sensor_id, ts DESC"
        " ON CONFLICT (sensor_id) DO UPDATE SET ts = excluded.ts, value = excluded.value"
        "  WHERE excluded.ts > l.ts",
        params,
    )
    conn.execute("SELECT pack_hours(%(ids)s, %(start)s, %(end)s)", params)  # migration 0017


def store(conn: psycopg.Connection[Any], rows: list[tuple[str, datetime, float]]) -> None:
    """Store a few readings and recompute what they touch (tests)."""
    if not rows:
        return
    first = min(r[1] for r in rows)
    last = max(r[1] for r in rows)
    ensure_partitions(conn, first, last)
    copy_readings(conn, rows)
    start = first.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    ids = sorted({r[0] for r in rows})
    cur = conn.execute("SELECT min(ts) FROM readings WHERE sensor_id = ANY(%s)", (ids,)).fetchone()
    earliest = cur[0] if cur and cur[0] else start
    recompute_rollups(conn, ids, min(start, earliest), datetime(2200, 1, 1, tzinfo=UTC))
