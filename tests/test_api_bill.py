"""Bills: the API's bill equals a hand computation from the raw register readings."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from api import bills
from tests.api_helpers import apply, bearer, client, ref_tower, store_readings, token
from tests.conftest import REF_TOWER

TZ = ZoneInfo("Asia/Shanghai")
METER = "ref-f01-energy-voltcab"
PRICES = {"peak": 1.25, "flat": 0.78, "valley": 0.32}


def period(local: datetime) -> str:
    h = local.hour
    if 8 <= h < 11 or 18 <= h < 23:
        return "peak"
    if h == 7 or 11 <= h < 18:
        return "flat"
    return "valley"


def register_readings() -> list[tuple[str, datetime, float]]:
    """October 2026 (local) every 5 minutes, with a reset and a four-hour gap inside it."""
    start = datetime(2026, 9, 30, 22, 0, tzinfo=TZ).astimezone(UTC)
    end = datetime(2026, 11, 1, 2, 0, tzinfo=TZ).astimezone(UTC)
    gap = (datetime(2026, 10, 20, 6, 2, tzinfo=TZ), datetime(2026, 10, 20, 10, 7, tzinfo=TZ))
    reset_at = datetime(2026, 10, 10, 14, 30, tzinfo=TZ)
    rows, value, ts, i = [], 5000.0, start, 0
    while ts < end:
        local = ts.astimezone(TZ)
        value += 1.0 + (i % 7) * 0.5 + (3.0 if period(local) == "peak" else 0.0)
        if local == reset_at:
            value = 2.0  # meter replaced: the register starts again near zero
        if not gap[0] <= local < gap[1]:
            rows.append((METER, ts, round(value, 3)))
        ts += timedelta(minutes=5)
        i += 1
    return rows


def hand_bill(
    rows: list[tuple[str, datetime, float]], period: Callable[[datetime], str] = period
) -> dict[str, Any]:
    month_start = datetime(2026, 10, 1, tzinfo=TZ)
    month_end = datetime(2026, 11, 1, tzinfo=TZ)
    kwh: dict[str, float] = defaultdict(float)
    quarters: dict[datetime, float] = defaultdict(float)
    prev = None
    for _, ts, value in rows:
        local = ts.astimezone(TZ)
        delta = 0.0 if prev is None else (value - prev if value >= prev else value)
        prev = value
        if month_start <= local < month_end:
            kwh[period(local)] += delta
            quarters[local.replace(minute=local.minute - local.minute % 15)] += delta
    return {
        "kwh": dict(kwh),
        "cost": {p: round(kwh[p] * PRICES[p], 2) for p in PRICES},
        "total_kwh": sum(kwh.values()),
        "peak_kw": max(quarters.values()) * 4,
    }


def october(db_url: str) -> tuple[dict[str, Any], str]:
    """The reference building with October's register readings stored: the hand bill and a
    token of the meter's tenant."""
    apply(db_url, ref_tower(REF_TOWER))
    rows = register_readings()
    store_readings(db_url, rows)
    return hand_bill(rows), token(db_url, "tenant", "voltcab", "ref-tower")


def test_bill_equals_hand_computation(db_url: str) -> None:
    expected, secret = october(db_url)
    with client(db_url) as c:
        r = c.get("/api/v1/tenants/voltcab/bill?month=2026-10", headers=bearer(secret))
        assert r.status_code == 200, r.text
        bill = r.json()
        again = c.get("/api/v1/tenants/voltcab/bill?month=2026-10", headers=bearer(secret))
        assert again.json() == bill  # served from the validated cache
        csv = c.get("/api/v1/tenants/voltcab/bill?month=2026-10&format=csv", headers=bearer(secret))
    assert csv.headers["content-type"].startswith("text/csv")
    assert "total," in csv.text
    lines = {p["name"]: p for p in bill["periods"]}
    for name in PRICES:
        assert lines[name]["kwh"] == pytest.approx(expected["kwh"][name], abs=1e-3)
        assert lines[name]["cost"] == pytest.approx(expected["cost"][name], abs=0.011)
    assert bill["total_kwh"] == pytest.approx(expected["total_kwh"], abs=1e-3)
    assert bill["peak_demand_kw"] == pytest.approx(expected["peak_kw"], abs=1e-3)
    assert bill["contract_utilisation_pct"] == pytest.approx(
        100 * expected["peak_kw"] / 1800,
        abs=0.01,
    )
    assert bill["start"] == "2026-09-30T16:00:00Z" and bill["bin_minutes"] == 15
    assert bill["meters"] == [METER]


def test_a_cached_bill_follows_its_prices_and_contract(db_url: str) -> None:
    expected, secret = october(db_url)
    url = "/api/v1/tenants/voltcab/bill?month=2026-10"
    with client(db_url, api_cache_s=0) as c:  # the bill cache only (on by default)
        first = c.get(url, headers=bearer(secret)).json()
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE tariff_periods SET price_per_kwh = price_per_kwh * 2 WHERE name = 'peak'"
            )
            conn.execute("UPDATE tenants SET contracted_kw = 900 WHERE id = 'voltcab'")
        second = c.get(url, headers=bearer(secret)).json()
    assert first["contracted_kw"] == 1800 and second["contracted_kw"] == 900
    peak = {b["name"]: b for b in second["periods"]}["peak"]
    assert peak["price_per_kwh"] == 2 * PRICES["peak"]
    assert peak["cost"] == pytest.approx(round(expected["kwh"]["peak"] * 2 * PRICES["peak"], 2))
    assert second["contract_utilisation_pct"] == pytest.approx(
        2 * first["contract_utilisation_pct"], abs=0.02
    )


@pytest.mark.parametrize("bill_cache", [True, False])
def test_the_bill_is_right_whatever_the_process_guessed(db_url: str, bill_cache: bool) -> None:
    """The bill's own read goes with the tenant's when the process's guess of the tenant's
    building, time zone and tariff holds; a wrong guess is found out and read again."""
    expected, secret = october(db_url)
    key = ("voltcab", "ref-tower")
    url = "/api/v1/tenants/voltcab/bill?month=2026-10"
    with client(db_url, api_cache_s=0, api_bill_cache=bill_cache) as c:
        bills._SEEN.pop(key, None)
        assert c.get(url, headers=bearer(secret)).status_code == 200
        right = bills._SEEN[key]
        twice = replace(right, tariff=right.tariff.model_copy(update={"currency": "XXX"}))
        wrong = [
            replace(right, timezone="UTC"),
            replace(right, building="elsewhere"),
            replace(right, tariff_rows=right.tariff_rows[1:]),  # prices changed since
            replace(twice, tariff_rows=right.tariff_rows[:1] + right.tariff_rows[:1]),
            right,
        ]
        for guess in wrong:
            bills._SEEN[key] = guess
            bill = c.get(url, headers=bearer(secret)).json()
            assert bill["currency"] != "XXX" and bill["start"] == "2026-09-30T16:00:00Z", guess
            assert bill["total_kwh"] == pytest.approx(expected["total_kwh"], abs=1e-3), guess
            assert bill["peak_demand_kw"] == pytest.approx(expected["peak_kw"], abs=1e-3)
            assert bills._SEEN[key] == right


def test_bill_of_a_month_without_data_is_zero(db_url: str) -> None:
    apply(db_url, ref_tower(REF_TOWER))
    secret = token(db_url, "operator")
    with client(db_url) as c:
        r = c.get("/api/v1/tenants/axisline/bill?month=2026-03", headers=bearer(secret))
        assert r.status_code == 200, r.text
        assert r.json()["total_kwh"] == 0 and r.json()["peak_demand_kw"] is None
        assert (
            c.get("/api/v1/tenants/axisline/bill?month=2026-13", headers=bearer(secret)).status_code
            == 422
        )


def late_peak(local: datetime) -> str:
    """The tariff with its morning peak from 08:10: a window edge off the quarter hours."""
    if local.hour == 8 and local.minute < 10:
        return "flat"
    return period(local)


def test_bill_off_quarter_tariff_from_minutes(db_url: str) -> None:
    """A window edge at 08:10: quarter hours cannot be priced whole, so the bill is summed
    from 1-minute bins (the other path of api.bills); still equal to a hand computation."""
    apply(db_url, ref_tower(REF_TOWER))
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE tariff_windows SET end_minute = 490 WHERE period = 'flat' AND end_minute = 480"
        )
        conn.execute("UPDATE tariff_windows SET start_minute = 490 WHERE start_minute = 480")
    rows = register_readings()
    store_readings(db_url, rows)
    expected = hand_bill(rows, late_peak)
    secret = token(db_url, "operator")
    with client(db_url) as c:
        r = c.get("/api/v1/tenants/voltcab/bill?month=2026-10", headers=bearer(secret))
    assert r.status_code == 200, r.text
    bill = r.json()
    assert bill["bin_minutes"] == 1
    lines = {p["name"]: p for p in bill["periods"]}
    for name in PRICES:
        assert lines[name]["kwh"] == pytest.approx(expected["kwh"][name], abs=1e-3)
    assert bill["total_kwh"] == pytest.approx(expected["total_kwh"], abs=1e-3)
    assert bill["peak_demand_kw"] == pytest.approx(expected["peak_kw"], abs=1e-3)
    assert bill["meters"] == [METER]
