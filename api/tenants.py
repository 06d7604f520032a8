"""A tenant's power (``/api/v1/tenants/{tenant}/power``) and what it shares with the bill
(:mod:`api.bills`): who the tenant is, its meters and when they are its.

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

from api.auth import Principal, PrincipalDep, Read, Scope, read_scoped
from api.common import (
    ID_PATTERN,
    _Strict,
    bad_query,
    cached,
    forbid_unknown_query,
    json_response,
    not_found,
    remember,
    responses,
)
from api.db import Pool, PoolDep
from api.fastroute import FastRoute
from api.series import (
    From,
    Step,
    StepQuery,
    To,
    bin_params,
    bin_sql,
    bin_start_sql,
    choose_step,
    day_edges,
    source,
    whole_days,
)
from api.series import time_range as _range

router = APIRouter(
    prefix="/api/v1",
    tags=["tenants"],
    dependencies=[Depends(forbid_unknown_query)],
    route_class=FastRoute,
)

TenantPath = Annotated[str, Path(pattern=ID_PATTERN, description="tenant id", examples=["voltcab"])]
BuildingQuery = Annotated[
    str | None, Query(pattern=ID_PATTERN, description="building of the tenant")
]
Format = Annotated[Literal["json", "csv"], Query(description="json (default) or csv")]
CSV_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}}}
}

# The tenant's meters and when they are its: own meters always, zone meters while leased
# (from the first local midnight of the lease's first day to that of its end: migration 0016).
METERS_SQL = """
SELECT s.id, s.kind, '-infinity'::timestamptz AS from_ts, 'infinity'::timestamptz AS to_ts
  FROM sensors s
 WHERE s.building_id = %(b)s AND s.tenant_id = %(t)s AND s.kind IN ('power', 'energy')
UNION ALL
SELECT s.id, s.kind, local_midnight(l.valid_from, bl.timezone),
       coalesce(local_midnight(l.valid_to, bl.timezone), 'infinity')
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


# The tenant (``t``) in the building named (``qb``; NULL: any), with its building's timezone.
TENANT_SQL = """
SELECT t.building_id, t.id, t.name, t.contracted_kw, t.tariff_id, b.timezone
  FROM tenants t JOIN buildings b ON b.id = t.building_id
 WHERE t.id = %(t)s AND (%(qb)s::text IS NULL OR t.building_id = %(qb)s) LIMIT 2
"""


def tenant_params(p: Principal, tenant: str, building: str | None) -> dict[str, Any]:
    """The parameters of ``TENANT_SQL`` (and what is read with it) for ``p``'s question about
    ``tenant``; 404 at once when ``p`` may not ask it."""
    check_tenant(p, tenant, building)
    return {"t": tenant, "qb": building if p.is_operator else p.building_id}


def tenant_of(rows: list[Any], tenant: str) -> dict[str, Any]:
    """The row of ``TENANT_SQL``: 404 when there is none (absent, or not the caller's)."""
    if not rows:
        raise not_found(f"tenant {tenant!r}")
    if len(rows) > 1:
        raise bad_query("building", f"several buildings have a tenant {tenant!r}: name one")
    row: dict[str, Any] = rows[0]
    return row


async def resolve_tenant(s: Scope, tenant: str, building: str | None) -> dict[str, Any]:
    """The tenant row (with the building's timezone); 404 when absent or not the caller's."""
    cur = await s.conn.execute(TENANT_SQL, tenant_params(s.principal, tenant, building))
    return tenant_of(await cur.fetchall(), tenant)


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
    responses={**responses(404), **CSV_RESPONSE},
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
        series = await _power(pool, who, tenant, building, chosen, first, last)
        if format == "csv":
            lines = [("start", "power_kw", "energy_kwh")]
            lines += [
                (t.isoformat(), cell(kw), cell(kwh))
                for t, kw, kwh in zip(series.t, series.power_kw, series.energy_kwh, strict=True)
            ]
            return csv_response(lines, f"{tenant}-power.csv")
        return json_response(series)

    return await cached(request, who, make)


#: (tenant, building asked for) -> (building, time zone) of the latest answer, per process: the
#: series is read in the same round trip as the tenant when this guess holds, which the
#: tenant's row of that round trip checks; otherwise a second round trip reads it.
_WHERE: OrderedDict[tuple[str, str | None], tuple[str, str]] = OrderedDict()
_WHERE_SIZE = 4096


async def _power(
    pool: Pool,
    who: Principal,
    tenant: str,
    building: str | None,
    step: Step,
    first: datetime,
    last: datetime,
) -> PowerSeries:
    """The tenant, its meters and its series in one round trip; two when the tenant's building
    and time zone (which the series' binning needs) are not yet known in this process or
    have changed."""
    params = tenant_params(who, tenant, building) | {"start": first, "end": last}
    reads = [Read(TENANT_SQL, params)]
    key = (tenant, params["qb"])
    guess = _WHERE.get(key)
    if guess is not None:
        reads.append(_series_read(step, params, *guess))
    found, *series = await read_scoped(pool, who, *reads)
    row = tenant_of(found, tenant)
    where = (row["building_id"], row["timezone"])
    remember(_WHERE, key, where, _WHERE_SIZE)
    if guess == where:
        (rows,) = series
    else:  # a guess of another building or zone read nothing that is used (and RLS held)
        (rows,) = await read_scoped(pool, who, _series_read(step, params, *where))
    meters: list[str] = next(r["meters"] for r in rows if r["meters"] is not None)
    bins = sorted((r for r in rows if r["meters"] is None), key=lambda r: r["bin"])
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


def _series_read(step: Step, params: dict[str, Any], building: str, timezone: str) -> Read:
    """kW and kWh per bin of the tenant's meters in ``building`` (time zone ``timezone``)."""
    first, last = params["start"], params["end"]
    tz = ZoneInfo(timezone)
    params = params | {"b": building} | bin_params(step, tz, first, last)
    table, column = source(step)
    # (table, from, to) of each part of the range: for 1d, whole local days from the daily
    # rollups and the partial days at either end from the hourly ones (one join each, so each
    # is an index range scan per meter)
    parts = [(table, "start", "end")]
    if step is Step.D1 and (days := whole_days(day_edges(tz, first, last), first, last)):
        params |= {"days_from": days[0], "days_to": days[1]}
        parts = [
            ("rollups_1h", "start", "days_from"),
            ("rollups_1d", "days_from", "days_to"),
            ("rollups_1h", "days_to", "end"),
        ]
    rows_sql = " UNION ALL ".join(
        f"SELECT {bin_sql(step, f'r.{column}')} AS k, m.id, m.kind, r.sum, r.count, r.energy_kwh"
        f"  FROM m JOIN {part} r ON r.sensor_id = m.id"
        f"  AND r.{column} >= greatest(m.from_ts, %({lo})s)"
        f"  AND r.{column} < least(m.to_ts, %({hi})s)"
        for part, lo, hi in parts
    )
    # per meter and bin, then per bin; and one row of the tenant's meter ids
    query = (
        f"WITH m AS ({METERS_SQL})"
        f" SELECT {bin_start_sql(step, 'k')} AS bin,"
        "        sum(avg) FILTER (WHERE kind = 'power') AS kw,"
        "        sum(kwh) FILTER (WHERE kind = 'energy') AS kwh, NULL::text[] AS meters"
        "  FROM (SELECT k, id, kind, sum(sum) / sum(count) AS avg, sum(energy_kwh) AS kwh"
        f"          FROM ({rows_sql}) r GROUP BY 1, 2, 3) per_meter"
        " GROUP BY k"
        " UNION ALL SELECT NULL, NULL, NULL,"
        "        coalesce(array_agg(DISTINCT m.id ORDER BY m.id), '{}') FROM m"
    )
    return Read(query, params)


def cell(value: float | None) -> str:
    return "" if value is None else repr(value)


def csv_response(lines: Sequence[Sequence[str]], filename: str) -> Response:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(lines)
    return Response(
        buf.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
