"""The API benchmark's seed and the backfill of the daily and quarter-hour rollups
(``backfill_day_quarter_rollups``, migrations 0011 and 0012): with 1-minute history for the
last days only, every local day still comes out whole, from the hourly rollups where local
midnights are on UTC hours and from the minutes where they are not (UTC+05:30); and the days
0011 wrote short are written again from the hours (``backfill_days_from_hours``)."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest

from api.bench_seed import seed
from core.building_store import apply_building
from tests.api_helpers import apply, ref_tower
from tests.conftest import REF_TOWER

NOW = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)

# Per sensor and local day: the day's row against the aggregate of its hours and its minutes.
_DAYS = """
SELECT d.sensor_id, d.bucket, d.count, d.sum, d.min, d.max, d.energy_kwh,
       h.count AS h_count, h.sum AS h_sum, h.min AS h_min, h.max AS h_max, h.kwh AS h_kwh,
       m.count AS m_count, m.sum AS m_sum, m.kwh AS m_kwh
  FROM rollups_1d d JOIN sensors s ON s.id = d.sensor_id JOIN buildings b ON b.id = s.building_id
  CROSS JOIN LATERAL (
      SELECT sum(x.count) AS count, sum(x.sum) AS sum, min(x.min) AS min, max(x.max) AS max,
             sum(x.energy_kwh) AS kwh
        FROM rollups_1h x
       WHERE x.sensor_id = d.sensor_id AND date_trunc('day', x.bucket, b.timezone) = d.bucket) h
  CROSS JOIN LATERAL (
      SELECT sum(x.count) AS count, sum(x.sum) AS sum, sum(x.energy_kwh) AS kwh
        FROM rollups_1m x
       WHERE x.sensor_id = d.sensor_id AND date_trunc('day', x.bucket, b.timezone) = d.bucket) m
"""


def _days(db_url: str) -> list[dict[str, object]]:
    with psycopg.connect(db_url, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(_DAYS).fetchall()


def _close(a: object, b: object) -> bool:
    if a is None or b is None:
        return a is b
    assert isinstance(a, float | int) and isinstance(b, float | int)
    return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


@pytest.mark.timeout(300)
def test_whole_hour_offset_days_come_whole_from_the_hours(db_url: str) -> None:
    building = ref_tower(REF_TOWER)
    apply(db_url, building)
    seed(db_url, building, 4, NOW, raw_days=2)  # minutes for the last 2 of 4 days only
    days = _days(db_url)
    sensors = {d["sensor_id"] for d in days}
    assert len(sensors) == len(building.sensors)
    # 4 days back from 09:30 UTC touch 5 local days (UTC+8) per sensor, none missing
    assert {len([d for d in days if d["sensor_id"] == s]) for s in sensors} == {5}
    partial = 0
    for d in days:
        assert d["count"] == d["h_count"] and _close(d["sum"], d["h_sum"]), d
        assert d["min"] == d["h_min"] and d["max"] == d["h_max"], d
        assert _close(d["energy_kwh"], d["h_kwh"]), d
        if d["m_count"] is not None and d["m_count"] < d["count"]:
            partial += 1  # minutes for part of the day: the day still counts all of it
    assert partial == len(sensors)  # the day the 1-minute history begins in
    with psycopg.connect(db_url) as conn:
        quarters = conn.execute(
            "SELECT count(*) FROM energy_15m q FULL JOIN ("
            "  SELECT sensor_id, date_bin('15 minutes', bucket, 'epoch') AS bucket,"
            "         sum(energy_kwh) AS kwh FROM rollups_1m"
            "   WHERE energy_kwh IS NOT NULL GROUP BY 1, 2) m USING (sensor_id, bucket)"
            " WHERE q.energy_kwh IS NULL OR m.kwh IS NULL OR abs(q.energy_kwh - m.kwh) > 1e-9"
        ).fetchone()
        assert quarters == (0,)  # every quarter hour with minutes, exactly their sum
        assert conn.execute("SELECT count(*) > 0 FROM energy_15m").fetchone() == (True,)


@pytest.mark.timeout(300)
def test_half_hour_offset_days_come_from_the_minutes(db_url: str) -> None:
    building = ref_tower(REF_TOWER)
    apply(db_url, building)
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE buildings SET timezone = 'Asia/Kolkata'")
    seed(db_url, building, 4, NOW, raw_days=2)
    days = _days(db_url)
    with_minutes = [d for d in days if d["m_count"] is not None]
    assert with_minutes
    for d in with_minutes:  # an hourly rollup straddles a +05:30 midnight: minutes are exact
        assert d["count"] == d["m_count"] and _close(d["sum"], d["m_sum"]), d
        assert _close(d["energy_kwh"], d["m_kwh"]), d
    straddled = [d for d in with_minutes if d["count"] != d["h_count"]]
    assert straddled  # the hours would have counted wrong: this is the path that matters
    # days older than the minutes: from the hours that start in them (edges off by 30 min)
    hours_only = [d for d in days if d["m_count"] is None]
    assert len(hours_only) >= len(building.sensors)
    for d in hours_only:
        assert d["count"] == d["h_count"] and _close(d["sum"], d["h_sum"]), d


def test_days_that_0011_wrote_short_are_repaired_from_the_hours(db_url: str) -> None:
    building = ref_tower(REF_TOWER)
    apply(db_url, building)
    seed(db_url, building, 3, NOW, raw_days=3)
    with psycopg.connect(db_url) as conn:
        # as 0011 left them: a day counted from a part of its minutes, a day missing
        short = conn.execute(
            "UPDATE rollups_1d SET count = count - 7, sum = sum - 1, energy_kwh = energy_kwh / 2"
            " WHERE ctid IN (SELECT ctid FROM rollups_1d WHERE energy_kwh > 0 LIMIT 20)"
        ).rowcount
        gone = conn.execute(
            "DELETE FROM rollups_1d WHERE ctid IN (SELECT ctid FROM rollups_1d"
            " ORDER BY sensor_id DESC, bucket LIMIT 5)"
        ).rowcount
        longer = conn.execute(  # a day that counts more than its hours is not touched
            "UPDATE rollups_1d SET count = count + 1000 WHERE ctid IN"
            " (SELECT ctid FROM rollups_1d ORDER BY sensor_id, bucket LIMIT 1)"
            " RETURNING sensor_id, bucket, count"
        ).fetchone()
        assert (short, gone) == (20, 5) and longer is not None
        conn.execute("SELECT backfill_days_from_hours()")
        assert conn.execute(
            "SELECT count FROM rollups_1d WHERE sensor_id = %s AND bucket = %s", longer[:2]
        ).fetchone() == (longer[2],)
        conn.execute("DELETE FROM rollups_1d WHERE sensor_id = %s AND bucket = %s", longer[:2])
        conn.execute("SELECT backfill_days_from_hours()")
    days = _days(db_url)
    assert {len([d for d in days if d["sensor_id"] == s.id]) for s in building.sensors} == {4}
    for d in days:
        assert d["count"] == d["h_count"] and _close(d["sum"], d["h_sum"]), d
        assert _close(d["energy_kwh"], d["h_kwh"]), d


def test_a_changed_time_zone_rebuilds_the_local_days(db_url: str) -> None:
    building = ref_tower(REF_TOWER)
    apply(db_url, building)
    seed(db_url, building, 3, NOW, raw_days=2)  # days of Asia/Shanghai, the file's zone
    moved = building.model_copy(update={"timezone": "Asia/Kolkata"})
    with psycopg.connect(db_url) as conn:
        result = apply_building(conn, moved)
    assert result.updated.get("rollups_1d", 0) > 0, result
    days = _days(db_url)  # now against Kolkata's days (the query reads the building's zone)
    with_minutes = [d for d in days if d["m_count"] is not None]
    assert len(with_minutes) >= 2 * len(building.sensors)
    for d in with_minutes:  # +05:30: exact from the minutes
        assert d["count"] == d["m_count"] and _close(d["sum"], d["m_sum"]), d
    for d in days:
        if d["m_count"] is None:  # older: from the hours that start in the day
            assert d["count"] == d["h_count"] and _close(d["sum"], d["h_sum"]), d
    with psycopg.connect(db_url) as conn:
        again = apply_building(conn, moved)
    assert "rollups_1d" not in again.updated  # the same zone: nothing rebuilt
