"""A tenant's bill for a month: ``/api/v1/tenants/{tenant}/bill`` (rules: core.billing).

kWh and cost per time-of-use period from the 1-minute rollups of the tenant's energy
registers (its own always, a leased zone's for the lease's days), 15-minute peak demand and
contract utilisation. A computed bill is kept per process while a stamp of its data is
unchanged (docs/api.md, "Bills").
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import Field

from api.auth import Principal, PrincipalDep, Read, read_scoped
from api.common import (
    _Strict,
    array_literal,
    cached,
    forbid_unknown_query,
    json_response,
    not_found,
    remember,
    responses,
)
from api.db import Pool, PoolDep
from api.fastroute import FastRoute
from api.tenants import (
    CSV_RESPONSE,
    METERS_SQL,
    TENANT_SQL,
    BuildingQuery,
    Format,
    TenantPath,
    cell,
    check_tenant,
    csv_response,
    tenant_of,
    tenant_params,
)
from core.billing import (
    DEMAND_MINUTES,
    bill_from_totals,
    bin_minutes,
    compute_bill,
    month_bounds,
    quarter_periods,
)
from core.billing import Bill as ComputedBill
from core.building import Tariff

router = APIRouter(
    prefix="/api/v1",
    tags=["tenants"],
    dependencies=[Depends(forbid_unknown_query)],
    route_class=FastRoute,
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


# The tariff of the tenant of TENANT_SQL: one row per period, its windows as arrays.
_TARIFF_SQL = """
SELECT t.currency, p.name, p.price_per_kwh,
       array_agg(w.start_minute ORDER BY w.start_minute) AS starts,
       array_agg(w.end_minute ORDER BY w.start_minute) AS ends
  FROM tenants tn
  JOIN tariffs t ON t.building_id = tn.building_id AND t.id = tn.tariff_id
  JOIN tariff_periods p ON p.building_id = t.building_id AND p.tariff_id = t.id
  JOIN tariff_windows w ON w.building_id = p.building_id AND w.tariff_id = p.tariff_id
   AND w.period = p.name
 WHERE tn.id = %(t)s AND (%(qb)s::text IS NULL OR tn.building_id = %(qb)s)
 GROUP BY t.currency, p.name, p.price_per_kwh
"""


def _tariff(tariff_id: str, rows: list[Any]) -> Tariff:
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


def bill_cache(request: Request) -> OrderedDict[tuple[Any, ...], Bill] | None:
    """The process's bill cache; None when ``UPSTAIRS_API_BILL_CACHE`` is off."""
    settings = getattr(request.app.state, "settings", None)
    if not getattr(settings, "api_bill_cache", True):
        return None
    cache: OrderedDict[tuple[Any, ...], Bill] = request.state.bill_cache
    return cache


@router.get(
    "/tenants/{tenant}/bill",
    response_model=Bill,
    responses={**responses(404), **CSV_RESPONSE},
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
        bill = await _bill(request, pool, who, tenant, building, month)
        if format == "csv":
            lines = [("period", "price_per_kwh", "kwh", "cost", "currency")]
            lines += [
                (p.name, cell(p.price_per_kwh), cell(p.kwh), cell(p.cost), bill.currency)
                for p in bill.periods
            ]
            lines.append(("total", "", cell(bill.total_kwh), cell(bill.total_cost), bill.currency))
            lines.append(("peak_demand_kw", "", cell(bill.peak_demand_kw), "", ""))
            lines.append(
                ("contract_utilisation_pct", "", cell(bill.contract_utilisation_pct), "", "")
            )
            return csv_response(lines, f"{tenant}-bill-{month}.csv")
        return json_response(bill)

    return await cached(request, who, make)


@dataclass(frozen=True, slots=True)
class _Seen:
    """What a process last read of a tenant's bill terms: its building, time zone and tariff
    (rows as read, and parsed)."""

    building: str
    timezone: str
    tariff_id: str
    tariff_rows: tuple[Any, ...]
    tariff: Tariff
    tariff_key: str


#: (tenant, building asked for) -> _Seen, per process: the bill's own read goes in the same
#: round trip as the tenant and its tariff when these still hold (checked against what that
#: round trip reads); otherwise a second round trip reads it.
_SEEN: OrderedDict[tuple[str, str | None], _Seen] = OrderedDict()
_SEEN_SIZE = 4096


async def _bill(
    request: Request, pool: Pool, who: Principal, tenant: str, building: str | None, month: str
) -> Bill:
    """The month's bill: from the per-process bill cache while its data stamp is unchanged.

    One round trip reads the tenant, its tariff and (when the process has seen the tenant's
    terms before and they still hold) the bill's quarter hours or, with the bill cache on,
    the stamp; a bill not in the cache, or terms not seen before, take one more."""
    asked = tenant_params(who, tenant, building)
    key = (tenant, asked["qb"])
    seen = _SEEN.get(key)
    cache = bill_cache(request)
    reads = [Read(TENANT_SQL, asked), Read(_TARIFF_SQL, asked)]
    if seen is not None:
        zone = ZoneInfo(seen.timezone)
        guess = _month_params(seen.building, tenant, zone, month)
        reads.append(
            _compute_read(seen.tariff, zone, guess) if cache is None else Read(_STAMP_SQL, guess)
        )
    found, tariff_rows, *early = await read_scoped(pool, who, *reads)
    row = tenant_of(found, tenant)
    rows = tuple(_tariff_row(r) for r in tariff_rows)
    hit = seen is not None and (seen.building, seen.timezone, seen.tariff_id, seen.tariff_rows) == (
        row["building_id"], row["timezone"], row["tariff_id"], rows
    )  # fmt: skip
    if seen is None or not hit:
        seen = _Seen(
            row["building_id"], row["timezone"], row["tariff_id"], rows,
            _tariff(row["tariff_id"], tariff_rows), tariff_key(rows),
        )  # fmt: skip
    remember(_SEEN, key, seen, _SEEN_SIZE)
    tz = ZoneInfo(row["timezone"])
    params = _month_params(row["building_id"], tenant, tz, month)

    async def compute(given: list[Any] | None = None) -> Bill:
        read = _compute_read(seen.tariff, tz, params)
        (found_rows,) = [given] if given is not None else await read_scoped(pool, who, read)
        if read.sql is _DAYS_SQL and any(
            r["what"] == "day" and r["tariff_key"] != seen.tariff_key for r in found_rows
        ):  # days summed for other windows: the quarter hours
            quarters = _quarters_read(seen.tariff, tz, params)
            (found_rows,) = await read_scoped(pool, who, quarters)
        return _computed(row, seen.tariff, month, params, tz, found_rows)

    if cache is None:
        return await compute(early[0] if hit else None)
    # Every stored reading moves an hourly rollup's count: a cheap, exact version stamp of the
    # data; the terms (tariff, prices, contract, name) are read with the tenant every time.
    ((stamp,),) = early if hit else await read_scoped(pool, who, Read(_STAMP_SQL, params))
    cache_key = (month, stamp["n"], stamp["kwh"], stamp["last"], *_terms(row, rows))
    bill = cache.get(cache_key)
    if bill is None:
        bill = await compute()
        remember(cache, cache_key, bill, _CACHE_SIZE)
    else:
        cache.move_to_end(cache_key)
    return bill


def _month_params(building: str, tenant: str, tz: ZoneInfo, month: str) -> dict[str, Any]:
    start, end = month_bounds(tz, int(month[:4]), int(month[5:]))
    return {"b": building, "t": tenant, "start": start, "end": end}


def _tariff_row(r: Any) -> tuple[Any, ...]:
    """A row of ``_TARIFF_SQL`` as a comparable tuple."""
    return (r["name"], r["price_per_kwh"], r["currency"], tuple(r["starts"]), tuple(r["ends"]))


def _terms(row: dict[str, Any], tariff_rows: tuple[Any, ...]) -> tuple[Any, ...]:
    """What besides the data a bill depends on: a change to any of it is another bill."""
    names = ("building_id", "id", "name", "contracted_kw", "tariff_id", "timezone")
    return (*(row[n] for n in names), tariff_rows)


_STAMP_SQL = f"""
WITH m AS ({METERS_SQL})
SELECT coalesce(sum(r.count), 0) AS n, sum(r.energy_kwh) AS kwh, max(r.last_ts) AS last
  FROM m JOIN rollups_1h r ON r.sensor_id = m.id AND m.kind = 'energy'
   AND r.bucket >= greatest(m.from_ts, %(start)s) AND r.bucket < least(m.to_ts, %(end)s)
"""


def _compute_read(tariff: Tariff, tz: ZoneInfo, params: dict[str, Any]) -> Read:
    """The read of a bill (see ``_computed``): the tenant's days of the month, or its minutes
    where a window or the offset is off the quarter hours."""
    if bin_minutes(tariff, tz, params["start"], params["end"]) == DEMAND_MINUTES:
        return Read(_DAYS_SQL, params, binary=True)
    return Read(_MINUTES_SQL, params)


def _computed(
    row: dict[str, Any],
    tariff: Tariff,
    month: str,
    params: dict[str, Any],
    tz: ZoneInfo,
    rows: list[Any],
) -> Bill:
    """The bill of the rows of ``_compute_read``."""
    start, end = params["start"], params["end"]
    width = bin_minutes(tariff, tz, start, end)
    if width == DEMAND_MINUTES and any(r["what"] == "period" for r in rows):
        computed, meters = _from_quarters(tariff, row, rows)
    elif width == DEMAND_MINUTES:
        computed, meters = _from_days(tariff, row, rows)
    else:
        meters = next(r["meters"] for r in rows if r["meters"] is not None)
        bins = [(r["bin"], r["kwh"]) for r in rows if r["meters"] is None]
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


# The tenant's energy meters in this bill, sorted.
_METER_IDS = "array_agg(DISTINCT m.id ORDER BY m.id) FILTER (WHERE m.kind = 'energy')"


# The tenant's energy by local day (``tenant_energy_days``, migration 0014: each day's kWh
# per period of the tariff windows named by tariff_key, its peak quarter hour and the number
# of quarter hours with data, over all of the tenant's meters), and its meters for the answer.
_DAYS_SQL = (
    "SELECT 'day' AS what, d.tariff_key, d.periods, d.kwh, d.quarters, d.peak_kwh, d.peak_at,"
    "       NULL::text[] AS meters"
    "  FROM tenant_energy_days d WHERE d.building_id = %(b)s AND d.tenant_id = %(t)s"
    "   AND d.day >= %(start)s AND d.day < %(end)s"
    " UNION ALL SELECT 'meters', NULL, NULL, NULL, NULL, NULL, NULL,"
    f"       coalesce({_METER_IDS}, '{{}}') FROM ({METERS_SQL}) m"
)

# From the quarter-hour energy rollups (``energy_15m``), summed per time-of-use period in the
# database: the period of each quarter hour of the month comes as one array. For a month
# whose days were summed for other tariff windows than the tariff's (see ``_from_days``).
_QUARTERS_SQL = (
    f"WITH m AS ({METERS_SQL}), q AS MATERIALIZED ("
    "  SELECT r.bucket, sum(r.energy_kwh) AS kwh"
    "    FROM m JOIN energy_15m r ON r.sensor_id = m.id AND m.kind = 'energy'"
    "     AND r.bucket >= greatest(m.from_ts, %(start)s)"
    "     AND r.bucket < least(m.to_ts, %(end)s)"
    "   GROUP BY r.bucket)"
    " SELECT 'period' AS what, (SELECT %(periods)s::int[])"  # cast once, not per row
    "        [(date_part('epoch', q.bucket) - %(start_epoch)s)::int / 900 + 1] AS period,"
    "        sum(q.kwh) AS kwh, count(*) AS bins, NULL::timestamptz AS at,"
    "        NULL::text[] AS meters"
    "   FROM q GROUP BY 2"
    " UNION ALL (SELECT 'peak', NULL, q.kwh, NULL, q.bucket, NULL FROM q"
    "             ORDER BY q.kwh DESC, q.bucket LIMIT 1)"
    " UNION ALL SELECT 'meters', NULL, NULL, NULL, NULL,"
    f"        coalesce({_METER_IDS}, '{{}}') FROM m"
)


def _quarters_read(tariff: Tariff, tz: ZoneInfo, params: dict[str, Any]) -> Read:
    start, end = params["start"], params["end"]
    periods = array_literal(quarter_periods(tariff, tz, start, end))
    return Read(_QUARTERS_SQL, params | {"periods": periods, "start_epoch": start.timestamp()})


def tariff_key(tariff_rows: tuple[Any, ...]) -> str:
    """The windows of a tariff (rows of ``_tariff_row``) as migration 0014's tariff_key()."""
    windows = sorted(
        (name, a, b)
        for name, _, _, starts, ends in tariff_rows
        for a, b in zip(starts, ends, strict=True)
    )
    return ",".join(f"{name}:{a}-{b}" for name, a, b in windows)


def _from_days(
    tariff: Tariff, row: dict[str, Any], rows: list[Any]
) -> tuple[ComputedBill, list[str]]:
    """The bill of the rows of ``_DAYS_SQL``: the days' kWh per period added up, the highest
    of their peaks (the earliest of equal ones), their quarter hours with data."""
    kwh: dict[str, float] = defaultdict(float)
    peak: tuple[float, datetime] | None = None
    bins = 0
    for r in rows:
        if r["what"] != "day":
            continue
        for name, value in zip(r["periods"], r["kwh"], strict=True):
            kwh[name] += value
        bins += r["quarters"]
        if peak is None or (r["peak_kwh"], peak[1]) > (peak[0], r["peak_at"]):
            peak = (r["peak_kwh"], r["peak_at"])
    meters: list[str] = next(r["meters"] for r in rows if r["what"] == "meters")
    computed = bill_from_totals(
        tariff,
        row["contracted_kw"],
        kwh,
        None if peak is None else peak[0],
        None if peak is None else peak[1],
        bins,
    )
    return computed, meters


def _from_quarters(
    tariff: Tariff, row: dict[str, Any], rows: list[Any]
) -> tuple[ComputedBill, list[str]]:
    """The bill of the rows of ``_QUARTERS_SQL``: kWh per period, the peak quarter, meters."""
    by_period = [r for r in rows if r["what"] == "period"]
    peak = next((r for r in rows if r["what"] == "peak"), None)
    meters: list[str] = next(r["meters"] for r in rows if r["what"] == "meters")
    computed = bill_from_totals(
        tariff,
        row["contracted_kw"],
        {tariff.periods[r["period"]].name: r["kwh"] for r in by_period},
        None if peak is None else peak["kwh"],
        None if peak is None else peak["at"],
        sum(r["bins"] for r in by_period),
    )
    return computed, meters


# From the 1-minute rollups, priced in Python: for a tariff window or a UTC offset that is not
# on a quarter hour (where quarter hours in UTC are not local ones).
_MINUTES_SQL = (
    f"WITH m AS ({METERS_SQL})"
    " SELECT r.bucket AS bin, sum(r.energy_kwh) AS kwh, NULL AS meters"
    "   FROM m JOIN rollups_1m r ON r.sensor_id = m.id AND m.kind = 'energy'"
    "    AND r.bucket >= greatest(m.from_ts, %(start)s) AND r.bucket < least(m.to_ts, %(end)s)"
    "  WHERE r.energy_kwh IS NOT NULL GROUP BY 1"
    f" UNION ALL SELECT NULL, NULL, coalesce({_METER_IDS}, '{{}}') FROM m"
)
