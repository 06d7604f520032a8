"""The floor history by minute from packed hours (migration 0017, api/packed.py).

The oracle is the sensor readings endpoint by minute, which reads ``rollups_1m`` as it is:
every series of the floor's answer has, minute by minute, what that endpoint gives for its
sensor, from packs, from minutes where there is no pack, and across the tenants' lease
windows; and the packs follow the rollups when late minutes arrive and when hours close.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from fastapi.testclient import TestClient

from api.history import _FLOOR_IDS
from api.packed import packed_read
from api.settings import api_role_conninfo
from tests.api_helpers import apply, bearer, client, ref_tower, store_readings, token
from tests.conftest import REF_TOWER

MINUTE = timedelta(minutes=1)
LOAD = "/api/v1/buildings/ref-tower/floors/{floor}/history?metric=load&step=1m"


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def points(series: dict[str, Any], axis: list[str] | None = None) -> dict[str, tuple[Any, ...]]:
    """{time: (avg, min, max)} of the minutes where ``series`` has a value."""
    times = axis if axis is not None else series["t"]
    return {
        t: (a, lo, hi)
        for t, a, lo, hi in zip(times, series["avg"], series["min"], series["max"], strict=True)
        if a is not None
    }


def check_against_readings(c: TestClient, who: dict[str, str], floor: int, window: str) -> Any:
    """The floor's answer, after checking each series against the sensor's readings by minute
    (the ``rollups_1m`` path) over the same window; the axis holds exactly the minutes where
    some series has a value, in order."""
    answer = c.get(LOAD.format(floor=floor) + window, headers=who)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    seen: set[str] = set()
    for series in body["series"]:
        mine = points(series, body["t"])
        one = c.get(f"/api/v1/sensors/{series['sensor']}/readings?step=1m{window}", headers=who)
        assert one.status_code == 200, one.text
        theirs = one.json()
        assert mine == points(theirs["series"][0], theirs["t"]), series["sensor"]
        seen |= mine.keys()
    assert body["t"] == sorted(seen)
    return body


def pack_count(db_url: str, sensors: list[str], start: datetime, end: datetime) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM minute_packs WHERE sensor_id = ANY(%s)"
            " AND hour >= %s AND hour < %s",
            (sensors, start, end),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_packed_and_unpacked_hours_answer_as_the_minutes_do(db_url: str) -> None:
    apply(db_url, ref_tower(REF_TOWER))
    h0 = (datetime.now(UTC) - timedelta(hours=6)).replace(minute=0, second=0, microsecond=0)
    sensors = [f"ref-f03-load-z{z}" for z in range(1, 5)]
    rows = []
    for m in range(5 * 60):
        at = h0 + timedelta(minutes=m)
        for z, sensor in enumerate(sensors, 1):
            if m == 75:  # no sensor has this minute: it is not on the axis
                continue
            if z == 2 and 130 <= m < 140:  # z2 misses ten minutes of the third hour
                continue
            if z == 4 and 180 <= m < 240:  # z4 misses the fourth hour whole
                continue
            value = 100.0 * z + m / 10
            if z == 3:  # signs and exponents: 1.5e-12 .. 1.5e12 (avg rounds the small to 0)
                value = (-1) ** m * 1.5 * 10.0 ** (m % 25 - 12)
            rows.append((sensor, at + timedelta(seconds=5), value))
            if m % 7 == 0:  # two readings in the minute: min < avg < max
                rows.append((sensor, at + timedelta(seconds=35), value + 0.3))
    store_readings(db_url, rows)
    assert pack_count(db_url, sensors, h0, h0 + timedelta(hours=5)) == 5 * 4 - 1
    op = bearer(token(db_url, "operator"))
    windows = [  # edges inside hours, whole hours only, inside one hour, empty, all alike
        (h0 + timedelta(minutes=17, seconds=23), h0 + timedelta(hours=4, minutes=41)),
        (h0, h0 + timedelta(hours=5)),
        (h0 + timedelta(hours=2, minutes=5), h0 + timedelta(hours=2, minutes=50)),
        (h0 - timedelta(hours=3), h0),
        (h0 + timedelta(minutes=10), h0 + timedelta(hours=2)),  # the same minutes missing
    ]
    with client(db_url) as c:
        packed = []
        for start, end in windows:
            window = f"&from={iso(start)}&to={iso(end)}"
            packed.append(check_against_readings(c, op, 3, window))
        assert packed[0]["t"][0] == iso(h0 + timedelta(minutes=18))
        assert iso(h0 + timedelta(minutes=75)) not in packed[1]["t"]
        assert len(packed[1]["t"]) == 5 * 60 - 1
        z4 = {s["sensor"]: s for s in packed[1]["series"]}["ref-f03-load-z4"]
        assert z4["avg"][179:239] == [None] * 60
        assert packed[3]["t"] == [] and all(s["avg"] == [] for s in packed[3]["series"])
        with psycopg.connect(db_url) as conn:  # the same answers from the minutes alone
            conn.execute("DELETE FROM minute_packs")
        for (start, end), before in zip(windows, packed, strict=True):
            window = f"&from={iso(start)}&to={iso(end)}"
            assert check_against_readings(c, op, 3, window) == before


def test_packs_follow_late_minutes_and_closing_hours(db_url: str) -> None:
    apply(db_url, ref_tower(REF_TOWER))
    h0 = (datetime.now(UTC) - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    sensor = "ref-f05-load-z1"
    store_readings(db_url, [(sensor, h0 + timedelta(minutes=m), 50.0) for m in range(0, 120, 2)])
    late = h0 + timedelta(minutes=31)

    def pending(at: datetime, value: float) -> None:  # as the ingester leaves a reading
        conn.execute(
            "INSERT INTO rollup_pending VALUES (%s, %s, 1, %s, %s, %s, %s, %s)",
            (sensor, at, value, value, value, at, value),
        )

    with psycopg.connect(db_url, autocommit=True) as conn:
        mask = "SELECT mask FROM minute_packs WHERE sensor_id = %s AND hour = %s"
        assert conn.execute(mask, (sensor, h0)).fetchone() == (
            sum(1 << m for m in range(0, 60, 2)),
        )
        pending(late, 80.0)  # a late minute of a closed hour: packed again by the refresh
        conn.execute("SELECT refresh_rollups(1000)")
        assert conn.execute(mask, (sensor, h0)).fetchone() == (
            sum(1 << m for m in range(0, 60, 2)) | 1 << 31,
        )
        # an hour that closed since the last sweep: packed by the sweep, with no late minute
        conn.execute("DELETE FROM minute_packs WHERE hour = %s", (h0 + timedelta(hours=1),))
        conn.execute("UPDATE minute_pack_state SET swept_to = %s", (h0 + timedelta(hours=1),))
        before = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        conn.execute("SELECT refresh_rollups(1000)")
        after = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        swept = conn.execute(mask, (sensor, h0 + timedelta(hours=1))).fetchone()
        assert swept == (sum(1 << m for m in range(0, 60, 2)),)
        swept_to = conn.execute("SELECT swept_to FROM minute_pack_state").fetchone()
        assert swept_to is not None and before <= swept_to[0] <= after
        # a minute of the open hour is not packed until the hour closes
        now_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        pending(now_hour, 60.0)
        conn.execute("SELECT refresh_rollups(1000)")
        packed = conn.execute(mask, (sensor, now_hour)).fetchone()
        if datetime.now(UTC) < now_hour + timedelta(hours=1):
            assert packed is None
        else:  # the hour closed meanwhile: then the refresh packed it
            assert packed == (1,)
    op = bearer(token(db_url, "operator"))
    window = f"&from={iso(h0)}&to={iso(datetime.now(UTC) + timedelta(minutes=1))}"
    with client(db_url) as c:
        body = check_against_readings(c, op, 5, window)
    z1 = {s["sensor"]: s for s in body["series"]}[sensor]
    assert points(z1, body["t"])[iso(late)] == (80.0, 80.0, 80.0)
    assert iso(now_hour) in points(z1, body["t"])


def test_a_lease_that_starts_inside_an_hour_shows_each_tenant_its_own_minutes(
    db_url: str,
) -> None:
    # In Asia/Kolkata (UTC+05:30) the zone f09-z3 changes hands on 2026-07-01 at 18:30 UTC:
    # the hour 18:00 is packed whole, but each tenant may read only half of it.
    apply(db_url, ref_tower(REF_TOWER))
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE buildings SET timezone = 'Asia/Kolkata' WHERE id = 'ref-tower'")
    start = datetime(2026, 6, 30, 16, 0, tzinfo=UTC)
    handover = datetime(2026, 6, 30, 18, 30, tzinfo=UTC)
    sensors = [f"ref-f09-load-z{z}" for z in range(1, 5)]
    rows = [
        (s, start + timedelta(minutes=m, seconds=1), 10.0 * z + m)
        for m in range(4 * 60)
        for z, s in enumerate(sensors, 1)
    ]
    store_readings(db_url, rows)
    assert pack_count(db_url, sensors, start, start + timedelta(hours=4)) == 16
    window = f"&from={iso(start)}&to={iso(start + timedelta(hours=4))}"
    with client(db_url) as c:
        for tenant, first, end in (
            ("protoworks", start, handover),
            ("axisline", handover, start + timedelta(hours=4)),
        ):
            who = bearer(token(db_url, "tenant", tenant, "ref-tower"))
            body = check_against_readings(c, who, 9, window)
            z3 = {s["sensor"]: s for s in body["series"]}.get("ref-f09-load-z3")
            assert z3 is not None, tenant
            times = [datetime.fromisoformat(t) for t in points(z3, body["t"])]
            assert times == [first + timedelta(minutes=m) for m in range((end - first) // MINUTE)]


def test_the_generic_plan_reads_the_minutes_by_index(db_url: str) -> None:
    # The statement's plan is made once for any parameters (api.auth.Read.generic): a plan
    # that joined rollups_1m whole by hash ran 1,000 times slower than this one.
    apply(db_url, ref_tower(REF_TOWER))
    end = datetime.now(UTC)
    params = {"building": "ref-tower", "floor": 3, "metric": "load",
              "start": end - timedelta(hours=24), "end": end}  # fmt: skip
    read = packed_read(_FLOOR_IDS, params)
    names: list[str] = []

    def placeholder(m: re.Match[str]) -> str:
        if m.group(1) not in names:
            names.append(m.group(1))
        return f"${names.index(m.group(1)) + 1}"

    assert isinstance(read.sql, str)
    sql = re.sub(r"%\((\w+)\)s", placeholder, read.sql)
    with psycopg.connect(api_role_conninfo(db_url), autocommit=True) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute(f"PREPARE q AS {sql}")
        cur = psycopg.ClientCursor(conn)
        args = ", ".join(cur.mogrify("%s", (read.params[n],)) for n in names)  # type: ignore[call-overload]
        plan = "\n".join(r[0] for r in conn.execute(f"EXPLAIN EXECUTE q({args})").fetchall())
    assert "Index Cond: ((sensor_id = g.id) AND (bucket >= g.lo) AND (bucket < g.hi))" in plan
    assert "Seq Scan on rollups_1m" not in plan and "Hash Join" not in plan, plan


def twelve_packed_hours(db_url: str) -> tuple[datetime, int]:
    """The reference tower with a reading in each of the last 12 closed hours for every sensor
    that has packs: (the first hour, how many packs that makes)."""
    apply(db_url, ref_tower(REF_TOWER))
    h0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=12)
    with psycopg.connect(db_url) as conn:
        packed = [r[0] for r in conn.execute("SELECT unnest(pack_sensor_ids())").fetchall()]
    hours = [h0 + timedelta(hours=h) for h in range(12)]
    store_readings(db_url, [(s, h, 1.0) for s in packed for h in hours])
    return h0, len(packed) * len(hours)


def test_a_backlog_of_hours_is_packed_over_several_refreshes(db_url: str) -> None:
    h0, total = twelve_packed_hours(db_url)
    assert total > 1000
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM minute_packs").fetchone() == (total,)
        conn.execute("DELETE FROM minute_packs")  # as if the refresher had been stopped
        conn.execute("UPDATE minute_pack_state SET swept_to = %s", (h0,))
        counts = []
        for _ in range(-(-total // 1000) + 1):
            conn.execute("SELECT refresh_rollups(1000)")
            row = conn.execute("SELECT count(*) FROM minute_packs").fetchone()
            assert row is not None
            counts.append(row[0])
    # the sweep queues every such sensor's closed hours; a refresh packs 1,000 of them
    assert 0 < counts[0] <= 1000 and counts[1] <= 2000
    assert counts[-1] == total


def test_late_minutes_are_read_even_while_a_backlog_waits_to_be_packed(db_url: str) -> None:
    # A late minute deletes its hour's pack when it is merged, so a backlog longer than one
    # refresh packs (1,000 hours) never leaves an old pack to be read.
    h0, _ = twelve_packed_hours(db_url)
    late = h0 + timedelta(minutes=30)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE minute_pack_state SET swept_to = %s", (h0,))  # a backlog to sweep
        conn.execute(
            "INSERT INTO rollup_pending VALUES (%s, %s, 1, 7.0, 7.0, 7.0, %s, 7.0)",
            ("ref-f03-load-z2", late, late),
        )
        conn.execute("SELECT refresh_rollups(1000)")
        left = conn.execute("SELECT count(*) FROM minute_pack_pending").fetchone()
        assert left is not None and left[0] > 0  # the oldest hours wait for a later refresh
    op = bearer(token(db_url, "operator"))
    window = f"&from={iso(h0)}&to={iso(h0 + timedelta(hours=2))}"
    with client(db_url) as c:
        body = check_against_readings(c, op, 3, window)
    z2 = {s["sensor"]: s for s in body["series"]}["ref-f03-load-z2"]
    assert points(z2, body["t"])[iso(late)] == (7.0, 7.0, 7.0)
