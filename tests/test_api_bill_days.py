"""Bills are summed from the tenants' energy by local day (migration 0014): a zone's meter is
billed to whoever leases the zone on the day, its own meters always, and the days follow the
leases when the building is applied with other ones. Checked against hand computations from
the raw register readings, and against the bill of the 1-minute rollups."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg.rows import dict_row

from api import bills
from core.billing import compute_bill
from tests.api_helpers import apply, bearer, client, ref_tower, store_readings, token
from tests.conftest import REF_TOWER
from tests.test_api_bill import PRICES, TZ, period

ZONE_METER = "ref-f09-energy-z3"  # zone f09-z3: protoworks until the handover, then axisline
OWN_METER = "ref-f05-energy-axisline"
Row = tuple[str, datetime, float]


def july_readings() -> list[Row]:
    """Both meters every 5 minutes from 30 June to 1 August 2026 (local), unevenly."""
    start = datetime(2026, 6, 30, 20, 0, tzinfo=TZ).astimezone(UTC)
    end = datetime(2026, 8, 1, 3, 0, tzinfo=TZ).astimezone(UTC)
    rows: list[Row] = []
    zone, own, ts, i = 100.0, 7000.0, start, 0
    while ts < end:
        zone += 0.5 + (i % 11) * 0.25 + (4.0 if period(ts.astimezone(TZ)) == "peak" else 0.0)
        own += 2.0 + (i % 5) * 0.5
        rows += [(ZONE_METER, ts, round(zone, 3)), (OWN_METER, ts, round(own, 3))]
        ts += timedelta(minutes=5)
        i += 1
    return rows


def hand(rows: list[Row], windows: dict[str, tuple[date, date]]) -> dict[str, Any]:
    """kWh per period, total and peak kW of the meters in ``windows`` (local days [from, to)):
    a reading's increase over the meter's previous one counts when its local day is inside."""
    kwh: dict[str, float] = defaultdict(float)
    quarters: dict[datetime, float] = defaultdict(float)
    prev: dict[str, float] = {}
    for meter, ts, value in rows:
        local = ts.astimezone(TZ)
        delta = value - prev[meter] if meter in prev else 0.0
        prev[meter] = value
        if meter in windows and windows[meter][0] <= local.date() < windows[meter][1]:
            kwh[period(local)] += delta
            quarters[local.replace(minute=local.minute - local.minute % 15)] += delta
    return {
        "kwh": {p: kwh.get(p, 0.0) for p in PRICES},
        "total": sum(kwh.values()),
        "peak_kw": max(quarters.values()) * 4 if quarters else None,
    }


def handover_on(day: int, tmp_path: Path) -> Path:
    """The reference building with zone f09-z3 handed over on ``day`` July instead of the 1st."""
    text = REF_TOWER.read_text().replace(
        "zone: f09-z3, from: 2026-01-01, to: 2026-07-01}",
        f"zone: f09-z3, from: 2026-01-01, to: 2026-07-{day:02d}}}",
    )
    text = text.replace(
        "zone: f09-z3, from: 2026-07-01}", f"zone: f09-z3, from: 2026-07-{day:02d}}}"
    )
    assert text.count(f"2026-07-{day:02d}") == 2
    path = tmp_path / f"ref-tower-{day}.yaml"
    path.write_text(text)
    return path


def july_bills(db_url: str) -> dict[str, dict[str, Any]]:
    """The July bills of protoworks and axisline, computed (the bill cache off)."""
    secret = token(db_url, "operator")
    out = {}
    with client(db_url, api_cache_s=0, api_bill_cache=False) as c:
        for tenant in ("protoworks", "axisline"):
            r = c.get(f"/api/v1/tenants/{tenant}/bill?month=2026-07", headers=bearer(secret))
            assert r.status_code == 200, r.text
            out[tenant] = r.json()
    return out


def assert_bill(bill: dict[str, Any], expected: dict[str, Any]) -> None:
    lines = {p["name"]: p for p in bill["periods"]}
    for name in PRICES:
        assert lines[name]["kwh"] == pytest.approx(expected["kwh"][name], abs=2e-3), name
    assert bill["total_kwh"] == pytest.approx(expected["total"], abs=2e-3)
    if expected["peak_kw"] is None:
        assert bill["peak_demand_kw"] is None and bill["bins_with_data"] == 0
    else:
        assert bill["peak_demand_kw"] == pytest.approx(expected["peak_kw"], abs=2e-3)


def test_a_zone_meter_is_billed_to_whoever_leases_it_on_the_day(
    db_url: str, tmp_path: Path
) -> None:
    apply(db_url, ref_tower(handover_on(11, tmp_path)))
    rows = july_readings()
    store_readings(db_url, rows)
    july, handover, august = date(2026, 7, 1), date(2026, 7, 11), date(2026, 8, 1)
    got = july_bills(db_url)
    assert_bill(got["protoworks"], hand(rows, {ZONE_METER: (july, handover)}))
    assert_bill(
        got["axisline"], hand(rows, {ZONE_METER: (handover, august), OWN_METER: (july, august)})
    )
    whole = hand(rows, {ZONE_METER: (july, august)})["total"]
    shares = got["protoworks"]["total_kwh"] + got["axisline"]["total_kwh"]
    own = hand(rows, {OWN_METER: (july, august)})["total"]
    assert shares - own == pytest.approx(whole, abs=3e-3)  # every kWh billed once

    # The leases change (the file's handover on the 1st): the days are rebuilt on apply.
    result = apply(db_url, ref_tower(REF_TOWER))
    assert result.updated["tenant_energy_days"] > 0
    got = july_bills(db_url)
    assert_bill(got["protoworks"], hand(rows, {}))  # nothing of July
    assert_bill(
        got["axisline"], hand(rows, {ZONE_METER: (july, august), OWN_METER: (july, august)})
    )


def test_the_days_equal_the_bill_of_the_minutes(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same bills from the 1-minute rollups (the read for off-quarter tariffs), where no
    tenant-day is involved; and from the quarter hours, where days summed for other tariff
    windows than the tariff's send the bill."""
    building = ref_tower(handover_on(20, tmp_path))
    apply(db_url, building)
    store_readings(db_url, july_readings())
    quarter_reads: list[dict[str, Any]] = []
    read_quarters = bills._quarters_read

    def read_counted(*args: Any) -> Any:
        quarter_reads.append(args[2])
        return read_quarters(*args)

    monkeypatch.setattr(bills, "_quarters_read", read_counted)
    by_days = july_bills(db_url)
    assert quarter_reads == []  # the days' windows are the tariff's: the days are used
    with psycopg.connect(db_url) as stale:
        stale.execute("UPDATE tenant_energy_days SET tariff_key = 'other windows'")
    assert july_bills(db_url) == by_days
    assert len(quarter_reads) == 2
    tenants = {t.id: t for t in building.tenants}
    with psycopg.connect(db_url, row_factory=dict_row) as conn:  # the owner: every row
        counted = conn.execute("SELECT count(*) AS n FROM tenant_energy_days").fetchone()
        # one row per tenant and local day with data: axisline 30 June to 1 August (its own
        # meter; the zone's days from 20 July are in the same rows), protoworks to 19 July
        assert counted == {"n": 33 + 20}
        for tenant, bill in by_days.items():
            params = bills._month_params("ref-tower", tenant, TZ, "2026-07")
            rows = conn.execute(bills._MINUTES_SQL, params).fetchall()
            bins = [(r["bin"], r["kwh"]) for r in rows if r["meters"] is None]
            other = compute_bill(building.tariffs[0], TZ, tenants[tenant].contracted_kw, bins)
            assert bill["bin_minutes"] == 15 and bill["bins_with_data"] > 0
            lines = {p["name"]: p["kwh"] for p in bill["periods"]}
            assert lines == pytest.approx({p.name: p.kwh for p in other.periods}, abs=1e-3)
            assert bill["total_kwh"] == pytest.approx(other.total_kwh, abs=1e-3)
            assert bill["peak_demand_kw"] == pytest.approx(other.peak_demand_kw, abs=1e-3)
            assert other.peak_demand_at is not None
            assert bill["peak_demand_at"] == other.peak_demand_at.isoformat().replace("+00:00", "Z")


def test_a_handover_on_a_day_whose_midnight_happens_twice(db_url: str, tmp_path: Path) -> None:
    """America/Havana, 1 November 2026: the clock goes back from 01:00 to 00:00. A lease that
    starts (or ends) that day starts at the first midnight (migration 0016), as the day does:
    the hour between the two midnights is the new lessee's, in its bill and in what it may
    read, and not the old one's."""
    havana = ZoneInfo("America/Havana")
    text = REF_TOWER.read_text().replace("timezone: Asia/Shanghai", "timezone: America/Havana")
    text = text.replace(
        "f09-z3, from: 2026-01-01, to: 2026-07-01}", "f09-z3, from: 2026-01-01, to: 2026-11-01}"
    )
    text = text.replace("f09-z3, from: 2026-07-01}", "f09-z3, from: 2026-11-01}")
    path = tmp_path / "havana.yaml"
    path.write_text(text)
    apply(db_url, ref_tower(path))
    start = datetime(2026, 10, 31, 20, 0, tzinfo=havana).astimezone(UTC)
    rows = [(ZONE_METER, start + timedelta(minutes=5 * k), 100.0 + 1.5 * k) for k in range(12 * 32)]
    store_readings(db_url, rows)
    first = datetime(2026, 11, 1, tzinfo=havana).astimezone(UTC)
    assert first == datetime(2026, 11, 1, 4, tzinfo=UTC)  # the second midnight is 05:00 UTC
    before = next(v for _, ts, v in reversed(rows) if ts < first)
    november = rows[-1][2] - before  # every increase from the first midnight on
    october = before - rows[0][2]
    secret = token(db_url, "operator")
    with client(db_url, api_cache_s=0, api_bill_cache=False) as c:
        bills_of = {
            (tenant, month): c.get(
                f"/api/v1/tenants/{tenant}/bill?month={month}", headers=bearer(secret)
            ).json()["total_kwh"]
            for tenant in ("protoworks", "axisline")
            for month in ("2026-10", "2026-11")
        }
        z = "%Y-%m-%dT%H:%M:%SZ"
        first_hour = f"from={first:{z}}&to={first + timedelta(hours=1):{z}}"
        seen = {
            tenant: c.get(
                f"/api/v1/sensors/{ZONE_METER}/readings?{first_hour}&step=raw",
                headers=bearer(token(db_url, "tenant", tenant)),
            )
            for tenant in ("protoworks", "axisline")
        }
    assert bills_of["axisline", "2026-11"] == pytest.approx(november, abs=2e-3)
    assert bills_of["protoworks", "2026-10"] == pytest.approx(october, abs=2e-3)
    assert bills_of["protoworks", "2026-11"] == 0
    assert bills_of["axisline", "2026-10"] == 0
    assert seen["axisline"].status_code == 200
    assert len(seen["axisline"].json()["series"][0]["t"]) == 12  # the hour, every 5 minutes
    assert seen["protoworks"].status_code == 200  # its zone's sensor until the handover
    assert seen["protoworks"].json()["series"][0]["t"] == []  # but not in that hour
