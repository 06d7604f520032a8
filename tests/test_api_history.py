"""History answers: one time axis shared by a floor's series (null where a sensor has no data),
per-series times for raw readings, local days for ``1d``."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from api import tenants
from api.history import shared_axis, time_ordered
from tests.api_helpers import apply, bearer, client, ref_tower, store_readings, token
from tests.conftest import REF_TOWER

TZ = ZoneInfo("Asia/Shanghai")


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def test_floor_history_shares_one_axis_with_nulls_for_missing_steps(db_url: str) -> None:
    apply(db_url, ref_tower(REF_TOWER))
    start = (datetime.now(UTC) - timedelta(hours=1)).replace(second=0, microsecond=0)
    start -= timedelta(minutes=start.minute % 10)  # on the 5-minute bins
    rows = []
    for m in range(10):
        at = start + timedelta(minutes=m, seconds=10)
        rows.append(("ref-f03-load-z1", at, 100.0 + m))
        if m not in (3, 4):  # z2 misses two minutes; z4 has no data at all
            rows.append(("ref-f03-load-z2", at, 200.0 + m))
        if m >= 5:  # z3 starts late
            rows.append(("ref-f03-load-z3", at, 300.0))
    store_readings(db_url, rows)
    op = bearer(token(db_url, "operator"))
    base = "/api/v1/buildings/ref-tower/floors/3/history?metric=load"
    window = f"&from={iso(start)}&to={iso(start + timedelta(minutes=10))}"
    with client(db_url) as c:
        h = c.get(f"{base}&step=1m{window}", headers=op).json()
        raw = c.get(f"{base}&step=raw{window}", headers=op).json()
        five = c.get(f"{base}&step=5m{window}", headers=op).json()
    assert h["t"] == [iso(start + timedelta(minutes=m)) for m in range(10)]
    series = {s["sensor"]: s for s in h["series"]}
    assert sorted(series) == [f"ref-f03-load-z{z}" for z in range(1, 5)]
    assert series["ref-f03-load-z1"]["avg"] == [100.0 + m for m in range(10)]
    z2 = series["ref-f03-load-z2"]["max"]
    assert z2 == [None if m in (3, 4) else 200.0 + m for m in range(10)]
    assert series["ref-f03-load-z3"]["min"] == [None] * 5 + [300.0] * 5
    assert series["ref-f03-load-z4"]["avg"] == [None] * 10
    assert all("t" not in s and s["energy_kwh"] is None for s in h["series"])
    # raw: each series keeps the times of its own readings, and there is no shared axis
    assert raw["t"] is None
    by_sensor = {s["sensor"]: s for s in raw["series"]}
    assert len(by_sensor["ref-f03-load-z2"]["t"]) == len(by_sensor["ref-f03-load-z2"]["avg"]) == 8
    assert by_sensor["ref-f03-load-z4"]["t"] == []
    # 5 minutes: the mean of each bin, on the bins' starts
    assert five["t"] == [iso(start), iso(start + timedelta(minutes=5))]
    assert {s["sensor"]: s["avg"] for s in five["series"]}["ref-f03-load-z3"] == [None, 300.0]


def _local_days(db_url: str) -> tuple[datetime, dict[str, str], str]:
    """Power readings either side of a local midnight: (the first day, a tenant's header, the
    window's query)."""
    apply(db_url, ref_tower(REF_TOWER))
    first = datetime(2026, 3, 10, tzinfo=TZ)
    rows = [
        ("ref-f03-power-northbridge", first + timedelta(hours=23, minutes=30), 10.0),
        ("ref-f03-power-northbridge", first + timedelta(days=1, minutes=30), 30.0),
        ("ref-f03-power-northbridge", first + timedelta(days=1, hours=23), 50.0),
    ]
    store_readings(db_url, [(s, t.astimezone(UTC), v) for s, t, v in rows])
    tenant = bearer(token(db_url, "tenant", "northbridge", "ref-tower"))
    return first, tenant, f"&from={iso(first)}&to={iso(first + timedelta(days=3))}"


def test_days_are_local_days_of_the_building(db_url: str) -> None:
    first, tenant, window = _local_days(db_url)
    with client(db_url) as c:
        h = c.get(
            f"/api/v1/sensors/ref-f03-power-northbridge/readings?step=1d{window}", headers=tenant
        ).json()
        power = c.get(f"/api/v1/tenants/northbridge/power?step=1d{window}", headers=tenant).json()
    days = [iso(first), iso(first + timedelta(days=1))]
    assert h["t"] == days and h["series"][0]["avg"] == [10.0, 40.0]
    assert h["series"][0]["energy_kwh"] is None  # a power meter
    assert power["t"] == days and power["power_kw"] == [10.0, 40.0]
    assert power["meters"] == [
        f"ref-f0{f}-{k}-northbridge" for f in (3, 4) for k in ("energy", "power")
    ]


def test_power_is_right_whatever_the_process_guessed(db_url: str) -> None:
    """Tenant power reads its series with the tenant when the process's guess of the tenant's
    building and time zone holds; a wrong guess is found out and read again."""
    first, tenant, window = _local_days(db_url)
    key = ("northbridge", "ref-tower")
    right = ("ref-tower", "Asia/Shanghai")
    guesses = [None, ("ref-tower", "UTC"), ("elsewhere", "Asia/Shanghai"), right, right]
    with client(db_url, api_cache_s=0) as c:
        for guess in guesses:
            if guess is None:
                tenants._WHERE.pop(key, None)
            else:
                tenants._WHERE[key] = guess
            path = f"/api/v1/tenants/northbridge/power?step=1d{window}"
            power = c.get(path, headers=tenant).json()
            assert power["t"] == [iso(first), iso(first + timedelta(days=1))], guess
            assert power["power_kw"] == [10.0, 40.0], guess  # by UTC days: [20.0, 50.0]
            assert tenants._WHERE[key] == right


def test_energy_registers_have_kwh_per_step(db_url: str) -> None:
    apply(db_url, ref_tower(REF_TOWER))
    start = datetime(2026, 3, 10, 2, 0, tzinfo=UTC)
    meter = "ref-f03-energy-northbridge"
    rows = [(meter, start + timedelta(minutes=m), 100.0 + 2 * m) for m in range(0, 120, 15)]
    store_readings(db_url, rows)
    op = bearer(token(db_url, "operator"))
    window = f"&from={iso(start)}&to={iso(start + timedelta(hours=2))}"
    with client(db_url) as c:
        h = c.get(f"/api/v1/sensors/{meter}/readings?step=1h{window}", headers=op).json()
    assert h["t"] == [iso(start), iso(start + timedelta(hours=1))]
    # 30 kWh between readings; the first reading has none before it
    assert h["series"][0]["energy_kwh"] == [90.0, 120.0]


def test_the_axis_does_not_depend_on_the_order_rows_arrive_in() -> None:
    t = [datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=m) for m in range(50)]
    late = [i for i in random.Random(7).sample(range(50), 50) if i % 3]
    rows: list[dict[str, Any]] = [
        {"t": t, "avg": [float(m) for m in range(50)]},
        {"t": [t[i] for i in late], "avg": [float(i) for i in late]},
    ]
    for r in rows:
        n = len(r["t"])
        r |= {"min": [0.0] * n, "max": [1.0] * n, "kwh": [None] * n}
    assert shared_axis(rows) == t
    assert rows[0]["avg"] == [float(m) for m in range(50)]
    assert rows[1]["avg"] == [None if m % 3 == 0 else float(m) for m in range(50)]
    # complete and in time order: the first row's times, nothing moved
    rows[1] = {"t": list(t), "avg": [2.0] * 50, "min": [], "max": [], "kwh": []}
    assert shared_axis(rows) is t and rows[1]["avg"] == [2.0] * 50


def test_raw_series_come_out_in_time_order() -> None:
    t = [datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=5 * i) for i in range(4)]
    values = [2.0, 0.0, 3.0, 1.0]
    row: dict[str, Any] = {"t": [t[2], t[0], t[3], t[1]], "kwh": None}
    row |= {"avg": list(values), "min": list(values), "max": list(values)}
    time_ordered([row])
    assert row["t"] == t and row["avg"] == row["min"] == [0.0, 1.0, 2.0, 3.0]
    assert row["kwh"] is None


def test_power_by_day_reads_whole_days_from_daily_rollups(db_url: str, monkeypatch: Any) -> None:
    """Tenant power by local day: whole days from rollups_1d, the partial days at either end
    of the range from the hourly rollups; the same answer as from hourly rollups alone, also
    for a zone meter whose zone changes tenant inside the range (protoworks -> axisline)."""
    apply(db_url, ref_tower(REF_TOWER))
    with psycopg.connect(db_url) as conn:
        meters = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM sensors WHERE kind IN ('power', 'energy')"
                " AND (tenant_id IN ('axisline', 'protoworks') OR id LIKE 'ref-f09-%%-z3')"
            )
        ]
    assert "ref-f09-energy-z3" in meters
    rng = random.Random(11)
    start = datetime(2026, 6, 26, 21, 0, tzinfo=TZ).astimezone(UTC)
    rows = []
    for i, meter in enumerate(sorted(meters)):
        value = 1000.0 * (i + 1)
        for k in range(8 * 24 * 6):  # every ~10 minutes for 8 days, with jitter and a gap
            if 300 <= k < 340:
                continue
            at = start + timedelta(minutes=10 * k, seconds=rng.randint(0, 500))
            value += rng.uniform(0, 5) if "energy" in meter else 0.0
            reading = value if "energy" in meter else rng.uniform(10, 90)
            rows.append((meter, at, round(reading, 3)))
    store_readings(db_url, rows)
    window = "&from=2026-06-27T05:17:00%2B08:00&to=2026-07-03T19:44:00%2B08:00"
    with client(db_url, api_cache_s=0) as c:  # each answer computed
        for tenant in ("axisline", "protoworks"):
            auth = bearer(token(db_url, "tenant", tenant, "ref-tower"))
            path = f"/api/v1/tenants/{tenant}/power?step=1d{window}"
            with_days = c.get(path, headers=auth).json()
            monkeypatch.setattr("api.tenants.whole_days", lambda *_: None)
            hours_only = c.get(path, headers=auth).json()
            monkeypatch.undo()
            assert with_days["t"] == hours_only["t"] and len(with_days["t"]) == 7
            for key in ("power_kw", "energy_kwh"):
                assert with_days[key] == pytest.approx(hours_only[key], rel=1e-9, abs=1e-3), key
            assert any(v for v in with_days["energy_kwh"]), tenant
