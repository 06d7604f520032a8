"""A tenant's power and bill: ``/api/v1/tenants/{tenant}/power`` and ``.../bill``.

Tenant ids are unique per building only: ``?building=`` names the building; it may be left
out by a tenant (its own) and by an operator when one building has a tenant of that id.
A tenant's meters are its own meters at all times, and the zone meters of the zones it
leases, for the time of the lease.
"""

from __future__ import annotations

import csv
import io
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import Field

from api.auth import Principal, PrincipalDep, Scope, open_scope
from api.common import (
    ID_PATTERN,
    _Strict,
    bad_query,
    cached,
    forbid_unknown_query,
    json_response,
    not_found,
    responses,
)
from api.db import PoolDep
from api.series import From, Step, StepQuery, To, bin_params, bin_sql, choose_step, source
from api.series import time_range as _range
from core.billing import bin_minutes, compute_bill, month_bounds
from core.building import Tariff

router = APIRouter(prefix="/api/v1", tags=["tenants"], dependencies=[Depends(forbid_unknown_query)])

TenantPath = Annotated[str, Path(pattern=ID_PATTERN, description="tenant id", examples=["voltcab"])]
BuildingQuery = Annotated[
    str | None, Query(pattern=ID_PATTERN, description="building of the tenant")
]
Format = Annotated[Literal["json", "csv"], Query(description="json (default) or csv")]
_CSV: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}}}
}

# The tenant's meters and when they are its: own meters always, zone meters while leased.
METERS_SQL = """
SELECT s.id, s.kind, '-infinity'::timestamptz AS from_ts, 'infinity'::timestamptz AS to_ts
  FROM sensors s
 WHERE s.building_id = %(b)s AND s.tenant_id = %(t)s AND s.kind IN ('power', 'energy')
UNION ALL
SELECT s.id, s.kind, l.valid_from::timestamp AT TIME ZONE bl.timezone,
       coalesce(l.valid_to::timestamp AT TIME ZONE bl.timezone, 'infinity')
  FROM sensors s
  JOIN leases l ON l.building_id = s.building_id AND l.zone_id = s.zone_id
  JOIN buildings bl ON bl.id = s.building_id
 WHERE s.building_id = %(b)s AND s.tenant_id IS NULL AND l.tenant_id = %(t)s
   AND s.kind IN ('power', 'energy')
"""


def check_tenant(p: Principal, tenant: str, building: str | None) -> None:
    """A tenant may ask only about itself (404 otherwise, as for an id that does not exist)."""
    if not p.is_operator and (tenant != p.tenant_id or building not in (None, p.building_id)):
        raise not_found(f"tenant {tenant!r}")


async def resolve_tenant(s: Scope, tenant: str, building: str | None) -> dict[str, Any]:
    """The tenant row (with the building's timezone); 404 when absent or not the caller's."""
    p = s.principal
    check_tenant(p, tenant, building)
    if not p.is_operator:
        building = p.building_id
    cur = await s.conn.execute(
        "SELECT t.building_id, t.id, t.name, t.contracted_kw, t.tariff_id, b.timezone"
        "  FROM tenants t JOIN buildings b ON b.id = t.building_id"
        " WHERE t.id = %s AND (%s::text IS NULL OR t.building_id = %s) LIMIT 2",
        (tenant, building, building),
    )
    rows = await cur.fetchall()
    if not rows:
        raise not_found(f"tenant {tenant!r}")
    if len(rows) > 1:
        raise bad_query("building", f"several buildings have a tenant {tenant!r}: name one")
    return rows[0]


class PowerSeries(_Strict):
    building: str
    tenant: str
    step: Step
    start: datetime
    end: datetime
    meters: list[str]
    t: list[datetime] = Field(description="start of each step")
    power_kw: list[float | None] = Field(description="mean kW of the tenant's power meters")
    energy_kwh: list[float | None] = Field(description="kWh from the energy registers")


@router.get(
    "/tenants/{tenant}/power",
    response_model=PowerSeries,
    responses={**responses(404), **_CSV},
    summary="A tenant's kW and kWh per step",
)
async def tenant_power(
    request: Request,
    who: PrincipalDep,
    pool: PoolDep,
    tenant: TenantPath,
    *,
    building: BuildingQuery = None,
    start: From = None,
    end: To = None,
    step: StepQuery = None,
    format: Format = "json",
) -> Response:
    check_tenant(who, tenant, building)
    first, last = _range(start, end, timedelta(days=30))
    chosen = choose_step(step, first, last)
    if chosen is Step.RAW:
        chosen = Step.M1
        choose_step(chosen, first, last)

    async def make() -> Response:
        async with open_scope(pool, who) as s:
            series = await _power(s, tenant, building, chosen, first, last)
        if format == "csv":
            lines = [("start", "power_kw", "energy_kwh")]
            lines += [
                (t.isoformat(), _cell(kw), _cell(kwh))
                for t, kw, kwh in zip(series.t, series.power_kw, series.energy_kwh, strict=True)
            ]
            return _csv(lines, f"{tenant}-power.csv")
        return json_response(series)

    return await cached(request, who, make)


async def _power(
    s: Scope, tenant: str, building: str | None, step: Step, first: datetime, last: datetime
) -> PowerSeries:
    row = await resolve_tenant(s, tenant, building)
    tz = ZoneInfo(row["timezone"])
    table, column = source(step)
    bin_expr = bin_sql(step, f"r.{column}")
    query = (
        f"WITH m AS ({METERS_SQL}),"
        f" per_meter AS (SELECT {bin_expr} AS bin, m.id, m.kind,"
        "   sum(r.sum) / sum(r.count) AS avg, sum(r.energy_kwh) AS kwh"
        f"   FROM m JOIN {table} r ON r.sensor_id = m.id"
        f"    AND r.{column} >= greatest(m.from_ts, %(start)s)"
        f"    AND r.{column} < least(m.to_ts, %(end)s)"
        "  GROUP BY 1, 2, 3)"
        " SELECT bin, sum(avg) FILTER (WHERE kind = 'power') AS kw,"
        "        sum(kwh) FILTER (WHERE kind = 'energy') AS kwh"
        "   FROM per_meter GROUP BY bin ORDER BY bin"
    )
    params = {"b": row["building_id"], "t": tenant, "start": first, "end": last}
    params.update(bin_params(step, tz))
    cur = await s.conn.execute(query, params)
    bins = await cur.fetchall()
    cur = await s.conn.execute(f"SELECT DISTINCT id FROM ({METERS_SQL}) m ORDER BY id", params)
    meters = [r["id"] for r in await cur.fetchall()]
    return PowerSeries(
        building=row["building_id"],
        tenant=tenant,
        step=step,
        start=first,
        end=last,
        meters=meters,
        t=[b["bin"] for b in bins],
        power_kw=[None if b["kw"] is None else round(b["kw"], 3) for b in bins],
        energy_kwh=[None if b["kwh"] is None else round(b["kwh"], 4) for b in bins],
    )


class BillPeriod(_Strict):
    name: str
    price_per_kwh: float
    kwh: float
    cost: float


class Bill(_Strict):
    building: str
    tenant: str
    tenant_name: str
    month: str = Field(description="YYYY-MM, a calendar month in the building's timezone")
    timezone: str
    start: datetime
    end: datetime
    currency: str
    periods: list[BillPeriod]
    total_kwh: float
    total_cost: float
    peak_demand_kw: float | None = Field(description="highest 15-minute mean demand")
    peak_demand_at: datetime | None = Field(description="start of that quarter hour")
    contracted_kw: float
    contract_utilisation_pct: float | None = Field(description="peak demand / contracted kW")
    meters: list[str]
    bin_minutes: int = Field(description="width of the bins the bill was summed from")
    bins_with_data: int


async def _tariff(s: Scope, building: str, tariff_id: str) -> Tariff:
    cur = await s.conn.execute(
        "SELECT t.currency, p.name, p.price_per_kwh,"
        "       array_agg(w.start_minute ORDER BY w.start_minute) AS starts,"
        "       array_agg(w.end_minute ORDER BY w.start_minute) AS ends"
        "  FROM tariffs t JOIN tariff_periods p ON p.building_id = t.building_id"
        "   AND p.tariff_id = t.id"
        "  JOIN tariff_windows w ON w.building_id = p.building_id AND w.tariff_id = p.tariff_id"
        "   AND w.period = p.name"
        " WHERE t.building_id = %s AND t.id = %s GROUP BY t.currency, p.name, p.price_per_kwh",
        (building, tariff_id),
    )
    rows = await cur.fetchall()
    if not rows:
        raise not_found(f"tariff {tariff_id!r}")
    return Tariff(
        id=tariff_id,
        currency=rows[0]["currency"],
        periods=[
            {
                "name": r["name"],
                "price_per_kwh": float(r["price_per_kwh"]),
                "windows": [
                    f"{a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}"
                    for a, b in zip(r["starts"], r["ends"], strict=True)
                ],
            }
            for r in rows
        ],
    )


_CACHE_SIZE = 512


def bill_cache(request: Request) -> OrderedDict[tuple[Any, ...], Bill]:
    cache: OrderedDict[tuple[Any, ...], Bill] = request.state.bill_cache
    return cache


@router.get(
    "/tenants/{tenant}/bill",
    response_model=Bill,
    responses={**responses(404), **_CSV},
    summary="A tenant's bill for a month: kWh and cost per time-of-use period, peak demand",
)
async def tenant_bill(
    request: Request,
    who: PrincipalDep,
    pool: PoolDep,
    tenant: TenantPath,
    month: Annotated[str, Query(pattern=r"^(19[7-9][0-9]|2[01][0-9][0-9])-(0[1-9]|1[0-2])$")],
    *,
    building: BuildingQuery = None,
    format: Format = "json",
) -> Response:
    check_tenant(who, tenant, building)

    async def make() -> Response:
        async with open_scope(pool, who) as s:
            bill = await _bill(request, s, tenant, building, month)
        if format == "csv":
            lines = [("period", "price_per_kwh", "kwh", "cost", "currency")]
            lines += [
                (p.name, _cell(p.price_per_kwh), _cell(p.kwh), _cell(p.cost), bill.currency)
                for p in bill.periods
            ]
            lines.append(
                ("total", "", _cell(bill.total_kwh), _cell(bill.total_cost), bill.currency)
            )
            lines.append(("peak_demand_kw", "", _cell(bill.peak_demand_kw), "", ""))
            lines.append(
                ("contract_utilisation_pct", "", _cell(bill.contract_utilisation_pct), "", "")
            )
            return _csv(lines, f"{tenant}-bill-{month}.csv")
        return json_response(bill)

    return await cached(request, who, make)


async def _bill(request: Request, s: Scope, tenant: str, building: str | None, month: str) -> Bill:
    """The month's bill: from the per-process bill cache while its data stamp is unchanged."""
    row = await resolve_tenant(s, tenant, building)
    tz = ZoneInfo(row["timezone"])
    year, mon = int(month[:4]), int(month[5:])
    start, end = month_bounds(tz, year, mon)
    params = {"b": row["building_id"], "t": tenant, "start": start, "end": end}
    # Every stored reading moves an hourly rollup's count: a cheap, exact version stamp.
    cur = await s.conn.execute(
        f"WITH m AS ({METERS_SQL})"
        " SELECT coalesce(sum(r.count), 0) AS n, sum(r.energy_kwh) AS kwh,"
        "        max(r.last_ts) AS last, array_agg(DISTINCT m.id) AS ids"
        "   FROM m JOIN rollups_1h r ON r.sensor_id = m.id AND m.kind = 'energy'"
        "    AND r.bucket >= greatest(m.from_ts, %(start)s) AND r.bucket < least(m.to_ts, %(end)s)",
        params,
    )
    stamp = await cur.fetchone()
    assert stamp is not None
    key = (row["building_id"], tenant, month, stamp["n"], stamp["kwh"], stamp["last"])
    cache = bill_cache(request)
    bill = cache.get(key)
    if bill is None:
        bill = await _compute(s, row, month, start=start, end=end, tz=tz)
        cache[key] = bill
        while len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return bill


async def _compute(
    s: Scope, row: dict[str, Any], month: str, *, start: datetime, end: datetime, tz: ZoneInfo
) -> Bill:
    tariff = await _tariff(s, row["building_id"], row["tariff_id"])
    width = bin_minutes(tariff, tz, start, end)
    params = {
        "b": row["building_id"],
        "t": row["id"],
        "start": start,
        "end": end,
        "width": timedelta(minutes=width),
    }
    cur = await s.conn.execute(
        f"WITH m AS ({METERS_SQL})"
        " SELECT date_bin(%(width)s, r.bucket, %(start)s) AS bin, sum(r.energy_kwh) AS kwh"
        "   FROM m JOIN rollups_1m r ON r.sensor_id = m.id AND m.kind = 'energy'"
        "    AND r.bucket >= greatest(m.from_ts, %(start)s) AND r.bucket < least(m.to_ts, %(end)s)"
        "  WHERE r.energy_kwh IS NOT NULL GROUP BY 1",
        params,
    )
    bins = [(b["bin"], b["kwh"]) for b in await cur.fetchall()]
    cur = await s.conn.execute(
        f"SELECT DISTINCT id FROM ({METERS_SQL}) m WHERE kind = 'energy' ORDER BY id", params
    )
    meters = [r["id"] for r in await cur.fetchall()]
    computed = compute_bill(tariff, tz, row["contracted_kw"], bins)
    return Bill(
        building=row["building_id"],
        tenant=row["id"],
        tenant_name=row["name"],
        month=month,
        timezone=tz.key,
        start=start,
        end=end,
        currency=computed.currency,
        periods=[
            BillPeriod(name=p.name, price_per_kwh=p.price_per_kwh, kwh=p.kwh, cost=p.cost)
            for p in computed.periods
        ],
        total_kwh=computed.total_kwh,
        total_cost=computed.total_cost,
        peak_demand_kw=computed.peak_demand_kw,
        peak_demand_at=computed.peak_demand_at,
        contracted_kw=computed.contracted_kw,
        contract_utilisation_pct=computed.contract_utilisation_pct,
        meters=meters,
        bin_minutes=width,
        bins_with_data=computed.bins_with_data,
    )


def _cell(value: float | None) -> str:
    return "" if value is None else repr(value)


def _csv(lines: Sequence[Sequence[str]], filename: str) -> Response:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(lines)
    return Response(
        buf.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
