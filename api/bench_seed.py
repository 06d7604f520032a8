"""Seeding of ``upstairs bench api``: D days of 1-minute history for every sensor of a building.

The last R days (``raw_days``) get readings and 1-minute rollups by binary COPY, and hourly
rollups aggregated from them in SQL; the older D - R days get hourly rollups only (one row per
sensor and hour, same value model). ``sensor_latest`` holds each sensor's newest minute.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg

from core.building import DECIMALS, Building, SensorKind


def _value(kind: SensorKind, i: int, minute: int, phase: int) -> float:
    """The value model, at the resolution the devices report (``core.building.DECIMALS``)."""
    hour = (minute // 60 + 8) % 24
    day = 0.6 + 0.4 * math.sin(math.pi * max(0, hour - 6) / 16) if 6 <= hour < 22 else 0.3
    value = 0.0
    if kind is SensorKind.LOAD:
        value = 250.0 + 30 * math.sin((minute + phase) / 300)
    elif kind is SensorKind.POWER:
        value = 300.0 * day + (phase % 50)
    elif kind is SensorKind.TEMPERATURE:
        value = 24.0 + 3 * day
    return round(value, DECIMALS[kind])


def _register(value: float) -> float:
    return round(value, DECIMALS[SensorKind.ENERGY])


def _rows(building: Building, start: datetime, minutes: int) -> Iterator[tuple[object, ...]]:
    """(sensor, ts, value, energy_kwh) per sensor and minute; energy registers integrate kW
    (the register as read, at its resolution; the kWh of a minute its increase)."""
    for i, sensor in enumerate(building.sensors):
        register = 1000.0 * (i + 1)
        shown = _register(register)
        for m in range(minutes):
            ts = start + timedelta(minutes=m)
            if sensor.kind is SensorKind.ENERGY:
                register += _value(SensorKind.POWER, i, m, i) / 60
                now = _register(register)
                yield sensor.id, ts, now, (now - shown if m else 0.0)
                shown = now
            else:
                yield sensor.id, ts, _value(sensor.kind, i, m, i * 37), None


def _hour_rows(building: Building, start: datetime, hours: int) -> Iterator[tuple[object, ...]]:
    """Hourly rollup rows for [start, start + hours): the value model at each hour's start."""
    for i, sensor in enumerate(building.sensors):
        register = 1000.0 * (i + 1)
        for h in range(hours):
            ts = start + timedelta(hours=h)
            last = ts + timedelta(minutes=59)
            if sensor.kind is SensorKind.ENERGY:
                before = _register(register)
                register += _value(SensorKind.POWER, i, h * 60, i)
                now = _register(register)
                yield (sensor.id, ts, 60, 60 * now, before, now, last, now,
                       now - before)  # fmt: skip
            else:
                v = _value(sensor.kind, i, h * 60, i * 37)
                yield sensor.id, ts, 60, 60 * v, v - 1.0, v + 1.0, last, v, None


_ROLLUP_TYPES = ["text", "timestamptz", "int8", "float8", "float8", "float8", "timestamptz",
                 "float8", "float8"]  # fmt: skip
_ROLLUP_COLUMNS = "(sensor_id, bucket, count, sum, min, max, last_ts, last_value, energy_kwh)"


def raw_days_of(days: int, raw_days: int | None) -> int:
    """The days :func:`seed` gives readings and 1-minute rollups: the last ``raw_days`` of the
    ``days`` (all of them when None)."""
    return days if raw_days is None else min(raw_days, days)


def seed(
    url: str, building: Building, days: int, now: datetime, raw_days: int | None = None
) -> int:
    """Seed ``days`` of history; readings and 1-minute rollups only for the last ``raw_days``."""
    raw_days = raw_days_of(days, raw_days)
    start = (now - timedelta(days=raw_days)).replace(second=0, microsecond=0)
    minutes = int((now - start).total_seconds() // 60)
    with psycopg.connect(url) as conn:
        month = datetime(start.year, start.month, 1, tzinfo=UTC)
        while month <= now:
            conn.execute("SELECT ensure_readings_partition(%s)", (month,))
            month = datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=UTC)
        conn.commit()
        n = 0
        with conn.cursor() as cur:
            with cur.copy("COPY readings (sensor_id, ts, value) FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(["text", "timestamptz", "float8"])
                for sensor, ts, value, _ in _rows(building, start, minutes):
                    cp.write_row((sensor, ts, value))
                    n += 1
            with cur.copy(f"COPY rollups_1m {_ROLLUP_COLUMNS} FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(_ROLLUP_TYPES)
                for sensor, ts, value, kwh in _rows(building, start, minutes):
                    cp.write_row((sensor, ts, 1, value, value, value, ts, value, kwh))
        conn.commit()
        conn.execute(
            "INSERT INTO rollups_1h (sensor_id, bucket, count, sum, min, max, last_ts,"
            " last_value, energy_kwh)"
            " SELECT sensor_id, date_trunc('hour', bucket, 'UTC'), sum(count), sum(sum),"
            " min(min), max(max), max(last_ts), (array_agg(last_value ORDER BY last_ts DESC))[1],"
            " sum(energy_kwh) FROM rollups_1m GROUP BY 1, 2"
        )
        older = (now - timedelta(days=days)).replace(minute=0, second=0, microsecond=0)
        hours = int((start.replace(minute=0) - older).total_seconds() // 3600)
        if hours > 0:
            copy = f"COPY rollups_1h {_ROLLUP_COLUMNS} FROM STDIN (FORMAT BINARY)"
            with conn.cursor() as cur, cur.copy(copy) as cp:
                cp.set_types(_ROLLUP_TYPES)
                for row in _hour_rows(building, older, hours):
                    cp.write_row(row)
        conn.execute(  # the closed hours of the last 14 days packed, as the refresh does
            "SELECT pack_hours(pack_sensor_ids(), %s, %s)",
            (now - timedelta(days=14), now),
        )
        conn.execute("ANALYZE")  # plan the backfill with statistics of what was written
        conn.execute("SELECT backfill_day_quarter_rollups()")  # migrations 0011, 0012
        conn.execute(
            "INSERT INTO sensor_latest (sensor_id, ts, value) SELECT DISTINCT ON (sensor_id)"
            " sensor_id, last_ts, last_value FROM rollups_1m ORDER BY sensor_id, bucket DESC"
        )
        conn.commit()
        # As autovacuum leaves history that is days old: the visibility map current, so the
        # index-only scans of the reads measured skip the heap (energy_15m, migration 0012).
        conn.autocommit = True
        conn.execute(f"VACUUM (ANALYZE) {', '.join(_VACUUMED)}")
        conn.execute("ANALYZE")
        conn.execute(
            f"CREATE TABLE {_SEEDED} (days int NOT NULL, raw_days int NOT NULL,"
            " seeded_at timestamptz NOT NULL)"
        )
        conn.execute(f"INSERT INTO {_SEEDED} VALUES (%s, %s, %s)", (days, raw_days, now))
    return n


_SEEDED = "bench_seeded"  # one row: what :func:`seed` wrote, and its ``now``


def seed_record(url: str) -> tuple[int, int, datetime] | None:
    """What :func:`seed` wrote into the schema of ``url``: its days, raw days and ``now``.
    None for a schema seeded before this record was kept (or not by :func:`seed`)."""
    with psycopg.connect(url) as conn:
        found = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (_SEEDED,)).fetchone()
        if not (found and found[0]):
            return None
        row = conn.execute(f"SELECT days, raw_days, seeded_at FROM {_SEEDED}").fetchone()
    return (row[0], row[1], row[2]) if row else None


_VACUUMED = (
    "rollups_1m",
    "rollups_1h",
    "rollups_1d",
    "energy_15m",
    "tenant_energy_days",
    "sensor_latest",
    "minute_packs",
)
