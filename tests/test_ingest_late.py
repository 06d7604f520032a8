"""Late, shuffled and duplicated readings: stored once, rollups exact, latest is the newest."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg

from core.billing import month_bounds
from core.db import migrations
from tests.ingest_helpers import (
    BUILDING,
    Publisher,
    SensorRow,
    add_sensors,
    raw_message,
    rollups_settled,
    running_ingester,
    scalar,
    settings_for,
    topic,
    wait_until,
)

# Recompute every rollup level from raw rows; energy kWh with the same rule as the ingester.
WITH_DELTAS = """
WITH w AS (
    SELECT r.sensor_id, r.ts, r.value, s.kind, b.timezone,
           lag(r.value) OVER (PARTITION BY r.sensor_id ORDER BY r.ts) AS prev
      FROM readings r JOIN sensors s ON s.id = r.sensor_id JOIN buildings b ON b.id = s.building_id
)
"""
DELTA = "CASE WHEN prev IS NULL THEN 0 WHEN value >= prev THEN value - prev ELSE value END"
RECOMPUTE = (
    WITH_DELTAS
    + "SELECT sensor_id, {bucket} AS bucket, count(*), sum(value), min(value), max(value),"
    " max(ts), (array_agg(value ORDER BY ts DESC))[1],"
    f" CASE WHEN bool_and(kind = 'energy') THEN sum({DELTA}) END"
    " FROM w GROUP BY 1, 2 ORDER BY 1, 2"
)
#: The first instant of ts's local date (the first of two midnights where the clock goes back
#: at 01:00; the 01:00 after a midnight that does not exist), written independently of
#: migration 0015's local_day_start: date_trunc's midnight, or the instant 30 or 60 minutes
#: before it when that is still on the same local date.
FIRST_MIDNIGHT = (
    "(SELECT min(c) FROM (VALUES (date_trunc('day', ts, timezone) - interval '1 hour'),"
    " (date_trunc('day', ts, timezone) - interval '30 minutes'),"
    " (date_trunc('day', ts, timezone))) v(c)"
    " WHERE (c AT TIME ZONE timezone)::date = (ts AT TIME ZONE timezone)::date)"
)
LEVELS = {
    "rollups_1m": "date_trunc('minute', ts, 'UTC')",
    "rollups_1h": "date_trunc('hour', ts, 'UTC')",
    "rollups_1d": FIRST_MIDNIGHT,  # the building's local day
}
RECOMPUTE_15M = (
    WITH_DELTAS + f"SELECT sensor_id, date_bin('15 minutes', ts, 'epoch'), sum({DELTA})"
    " FROM w WHERE kind = 'energy' GROUP BY 1, 2 ORDER BY 1, 2"
)
STORED = """
SELECT sensor_id, bucket, count, sum, min, max, last_ts, last_value, energy_kwh
  FROM {table} ORDER BY 1, 2
"""


def _close(a, b) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))
    return a == b


def bill_to(db_url: str, tenant: str, sensors: list[str]) -> None:
    """Make ``sensors`` the energy meters of a new tenant ``tenant`` (straight into the tables)."""
    with psycopg.connect(db_url) as conn:
        for sql in (
            "INSERT INTO tariffs (building_id, id, currency) VALUES (%s, 'tou', 'CNY')",
            "INSERT INTO tariff_periods (building_id, tariff_id, name, price_per_kwh)"
            " VALUES (%s, 'tou', 'day', 1), (%s, 'tou', 'night', 0.5)",
            "INSERT INTO tariff_windows (building_id, tariff_id, period, start_minute, end_minute)"
            " VALUES (%s, 'tou', 'night', 0, 420), (%s, 'tou', 'day', 420, 1320),"
            " (%s, 'tou', 'night', 1320, 1440)",
        ):
            conn.execute(sql + " ON CONFLICT DO NOTHING", (BUILDING,) * sql.count("%s"))
        conn.execute(
            "INSERT INTO tenants (building_id, id, name, contracted_kw, tariff_id)"
            " VALUES (%s, %s, %s, 100, 'tou')",
            (BUILDING, tenant, tenant),
        )
        conn.execute("UPDATE sensors SET tenant_id = %s WHERE id = ANY(%s)", (tenant, sensors))


def assert_tenant_days_match_a_rebuild(conn: psycopg.Connection) -> None:
    """The tenants' energy by day as the refresh kept it equals the days built again from the
    quarter hours (migration 0014), which the caller has checked against the raw rows."""
    query = "SELECT * FROM tenant_energy_days ORDER BY 1, 2, 3"
    kept = conn.execute(query).fetchall()
    conn.execute("SELECT rebuild_tenant_days(id) FROM buildings")
    built = conn.execute(query).fetchall()
    conn.rollback()
    assert kept and len(kept) == len(built)
    for k, b in zip(kept, built, strict=True):  # key, tariff, periods; kWh; the rest
        assert k[:5] == b[:5] and all(map(_close, k[5], b[5])), (k, b)
        assert all(map(_close, k[6:], b[6:])), (k, b)


def assert_rollups_match_raw(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        checks = [
            (t, RECOMPUTE.format(bucket=b), STORED.format(table=t)) for t, b in LEVELS.items()
        ]
        checks.append(("energy_15m", RECOMPUTE_15M, "SELECT * FROM energy_15m ORDER BY 1, 2"))
        for table, recompute, stored_sql in checks:
            fresh = conn.execute(recompute).fetchall()
            stored = conn.execute(stored_sql).fetchall()
            assert fresh, table
            assert len(fresh) == len(stored), table
            for f, s in zip(fresh, stored, strict=True):
                assert all(_close(a, b) for a, b in zip(f, s, strict=True)), (table, f, s)
        assert_tenant_days_match_a_rebuild(conn)


async def test_late_shuffled_duplicates(db_url, mqtt):
    rng = random.Random(7)
    kinds = ["power", "energy", "load", "temperature", "power"]
    sensors = add_sensors(db_url, [SensorRow(f"s{i}", kinds[i % 5], 1) for i in range(20)])
    bill_to(db_url, "ta", ["s1", "s6"])  # energy meters (s16 is nobody's)
    bill_to(db_url, "tb", ["s11"])
    with psycopg.connect(db_url) as conn:  # local days that are not UTC days (+05:30)
        conn.execute("UPDATE buildings SET timezone = 'Asia/Kolkata'")
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=10)
    readings: list[dict[str, object]] = []
    per_sensor = 500
    for s in sensors:
        register = rng.uniform(100, 5000)
        for k in range(per_sensor):
            ts = end - timedelta(hours=48) + timedelta(seconds=k * 345 + rng.randint(0, 300))
            if s.kind == "energy":
                register += rng.uniform(0, 3)
                value = register
            else:
                value = rng.uniform(0, 400)
            readings.append({"sensor": s.id, "ts": ts.isoformat(), "value": round(value, 3)})
    assert len(readings) == 10_000
    sent = readings + rng.sample(readings, 1000)
    rng.shuffle(sent)
    settings = settings_for(db_url, mqtt.url, mqtt.prefix, batch_size=700)
    async with running_ingester(settings):
        with Publisher(mqtt.address.host, mqtt.address.port) as pub:
            for i in range(0, len(sent), 50):
                pub.publish(topic(1, mqtt.prefix), raw_message(sent[i : i + 50], i))
        await wait_until(lambda: scalar(db_url, "SELECT count(*) FROM readings") == 10_000)
        await wait_until(lambda: rollups_settled(db_url))
    assert scalar(db_url, "SELECT count(*) FROM dead_letters") == 0
    assert scalar(db_url, "SELECT count(*) FROM readings") == 10_000
    assert_rollups_match_raw(db_url)
    newest = scalar(
        db_url,
        "SELECT count(*) FROM sensor_latest l JOIN (SELECT DISTINCT ON (sensor_id) sensor_id, ts,"
        " value FROM readings ORDER BY sensor_id, ts DESC) r USING (sensor_id)"
        " WHERE l.ts = r.ts AND l.value = r.value",
    )
    assert newest == len(sensors)


def store_and_refresh(
    conn: psycopg.Connection, db_url: str, readings: list[tuple[str, datetime, float]]
) -> None:
    """Store ``readings`` with their pending partials, as the ingester does, and run the
    rollup refresh until nothing is pending (the refresh's path, without MQTT)."""
    conn.execute("SELECT ensure_readings_partition(%s)", (min(r[1] for r in readings),))
    with conn.cursor().copy("COPY readings (sensor_id, ts, value) FROM STDIN") as copy:
        for row in readings:
            copy.write_row(row)
    with conn.cursor().copy(
        "COPY rollup_pending (sensor_id, bucket, count, sum, min, max, last_ts, last_value)"
        " FROM STDIN"
    ) as copy:
        for sensor, ts, value in readings:
            copy.write_row((sensor, ts, 1, value, value, value, ts, value))
    conn.commit()
    while scalar(db_url, "SELECT count(*) FROM rollup_pending"):
        conn.execute("SELECT refresh_rollups(100000)")
        conn.commit()


def test_a_local_day_that_starts_at_one_in_the_morning(db_url):
    """America/Santiago, 6 September 2026: daylight saving time starts at midnight, so the
    local day runs from 01:00 (04:00 UTC) to the next midnight (03:00 UTC), 23 hours. Its
    energy is its own, not also the next day's first hour (the rollup refresh's path)."""
    add_sensors(db_url, [SensorRow("e1", "energy", 1), SensorRow("p1", "power", 1)])
    bill_to(db_url, "ta", ["e1"])
    start = datetime(2026, 9, 5, 23, 0, tzinfo=UTC)  # 19:00 local, the day before
    readings = [
        (sensor, start + timedelta(minutes=5 * k), 1000.0 + 2.5 * k + (k % 3) * 0.25)
        for k in range(12 * 40)  # 40 hours: into the day after
        for sensor in ("e1", "p1")
    ]
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE buildings SET timezone = 'America/Santiago'")
        store_and_refresh(conn, db_url, readings)
        day = datetime(2026, 9, 6, 4, 0, tzinfo=UTC)
        kwh = conn.execute(
            "SELECT energy_kwh FROM rollups_1d WHERE sensor_id = 'e1' AND bucket = %s", (day,)
        ).fetchone()
        tenant_day = conn.execute(
            "SELECT quarters, kwh FROM tenant_energy_days WHERE tenant_id = 'ta' AND day = %s",
            (day,),
        ).fetchone()
    # 23 hours of readings every 5 minutes, each 2.5 kWh plus the 0.25 steps of k % 3
    inside = [v for s, t, v in readings if s == "e1" and day <= t < day + timedelta(hours=23)]
    before = next(v for s, t, v in reversed(readings) if s == "e1" and t < day)
    assert kwh is not None and abs(kwh[0] - (inside[-1] - before)) < 1e-9
    assert tenant_day is not None and tenant_day[0] == 92  # 23 hours of quarter hours
    assert abs(sum(tenant_day[1]) - kwh[0]) < 1e-9
    assert_rollups_match_raw(db_url)


def test_a_local_midnight_that_happens_twice(db_url):
    """America/Havana, 1 November 2026: at 01:00 the clock goes back to 00:00, so midnight
    happens twice. The tenants' day starts at the first one (04:00 UTC), as Python reads it
    (core.billing.month_bounds), and has 25 hours: every quarter hour is in exactly one
    tenant-day, and each month's days add up to the month's quarter hours."""
    add_sensors(db_url, [SensorRow("e1", "energy", 1)])
    bill_to(db_url, "ta", ["e1"])
    tz = ZoneInfo("America/Havana")
    start = datetime(2026, 10, 30, 20, 0, tzinfo=tz).astimezone(UTC)
    readings = [
        ("e1", start + timedelta(minutes=5 * k), 1000.0 + 2.5 * k + (k % 3) * 0.25)
        for k in range(12 * 60)  # 60 hours: 30 October 20:00 to 2 November 07:00 (local)
    ]
    day = datetime(2026, 11, 1, tzinfo=tz).astimezone(UTC)
    assert day == datetime(2026, 11, 1, 4, tzinfo=UTC)
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE buildings SET timezone = 'America/Havana'")
        store_and_refresh(conn, db_url, readings)
        quarters = conn.execute(
            "SELECT quarters FROM tenant_energy_days WHERE day = %s", (day,)
        ).fetchone()
        assert quarters == (100,)  # 25 hours
        for year, month in ((2026, 10), (2026, 11)):
            lo, hi = month_bounds(tz, year, month)
            by_days = conn.execute(
                "SELECT sum(k) FROM tenant_energy_days, unnest(kwh) k WHERE day >= %s AND day < %s",
                (lo, hi),
            ).fetchone()
            by_quarters = conn.execute(
                "SELECT sum(energy_kwh) FROM energy_15m WHERE bucket >= %s AND bucket < %s",
                (lo, hi),
            ).fetchone()
            assert by_days is not None and by_quarters is not None
            assert abs(by_days[0] - by_quarters[0]) < 1e-9, (year, month)
        assert_tenant_days_match_a_rebuild(conn)
        # the daily rollups: the same days (labelled at the first midnight), each quarter
        # hour's energy in exactly one of them (the hour between the midnights was in both)
        daily = conn.execute(
            "SELECT bucket, energy_kwh FROM rollups_1d WHERE sensor_id = 'e1' ORDER BY 1"
        ).fetchall()
        quarters_kwh = conn.execute("SELECT sum(energy_kwh) FROM energy_15m").fetchone()
    days = [datetime(2026, 10, d, tzinfo=tz) for d in (30, 31)]
    days += [datetime(2026, 11, d, tzinfo=tz) for d in (1, 2)]
    assert [b for b, _ in daily] == [d.astimezone(UTC) for d in days]
    assert quarters_kwh is not None
    assert abs(sum(k for _, k in daily) - quarters_kwh[0]) < 1e-9
    after = [v for _, t, v in readings if day <= t < day + timedelta(hours=25)]
    before = next(v for _, t, v in reversed(readings) if t < day)
    assert abs(daily[2][1] - (after[-1] - before)) < 1e-9  # 1 November: 25 hours
    assert_rollups_match_raw(db_url)
    # a database that migration 0015 finds with the days of before (1 November labelled at
    # the second midnight, its first hour's energy also in 31 October) is repaired
    first_hour = "bucket >= %(day)s AND bucket < %(day)s + interval '1 hour'"
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE rollups_1d SET bucket = bucket + interval '1 hour' WHERE bucket = %(day)s",
            {"day": day},
        )
        conn.execute(
            "UPDATE rollups_1d SET energy_kwh = energy_kwh + (SELECT sum(energy_kwh)"
            f" FROM energy_15m WHERE {first_hour}) WHERE bucket = %(day)s - interval '1 day'",
            {"day": day},
        )
        assert conn.execute(
            "SELECT count(*) FROM rollups_1d WHERE bucket = %s", (day,)
        ).fetchone() == (0,)
        conn.execute(next(m for m in migrations() if m.version == 15).sql.encode())
        again = conn.execute(
            "SELECT bucket, energy_kwh FROM rollups_1d WHERE sensor_id = 'e1' ORDER BY 1"
        ).fetchall()
    assert [b for b, _ in again] == [b for b, _ in daily]
    assert all(abs(k - j) < 1e-9 for (_, k), (_, j) in zip(again, daily, strict=True))
