"""Floors: live summaries of every floor, and one floor in detail.

Both read through row-level security: a tenant's summary is built from the sensors it may see
(its meters and the sensors of the zones it leases), so it never reveals a neighbour's power.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Request, Response
from psycopg import AsyncConnection
from psycopg.rows import DictRow
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from api.alerts import open_alerts
from api.auth import PrincipalDep, Read, ScopeDep, read_scoped
from api.buildings import local_today, require_building
from api.common import ID_PATTERN, _Strict, cached, forbid_unknown_query, not_found, responses
from api.db import PoolDep
from api.fastroute import FastRoute
from core.alert_types import AlertView

router = APIRouter(
    prefix="/api/v1",
    tags=["floors"],
    dependencies=[Depends(forbid_unknown_query)],
    route_class=FastRoute,
)

FireState = Literal["normal", "alarm", "fault", "unknown"]
BuildingId = Path(pattern=ID_PATTERN, description="building id", examples=["ref-tower"])
FloorNumber = Path(ge=-5, le=200, description="floor number", examples=[3])


class FloorSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    number: int
    area_m2: float
    height_m: float
    load_limit_kg_m2: float
    power_capacity_kw: float
    max_zone_load_kg_m2: float | None = Field(description="highest zone load now (kg/m2)")
    max_zone_load_pct: float | None = Field(description="highest zone load as % of its limit")
    power_kw: float | None = Field(description="sum of the floor's power meters (kW)")
    power_pct: float | None = Field(description="power_kw as % of power_capacity_kw")
    max_temperature_c: float | None
    fire_state: FireState = Field(description="from fresh detectors; unknown: none fresh")
    newest_reading_at: datetime | None = Field(description="time of the floor's newest reading")


_FLOORS_SQL = """
SELECT f.number, f.area_m2, f.height_m, f.load_limit_kg_m2, f.power_capacity_kw,
       max(l.value) FILTER (WHERE s.kind = 'load' AND fresh) AS max_load,
       max(100.0 * l.value / coalesce(z.load_limit_kg_m2, f.load_limit_kg_m2))
           FILTER (WHERE s.kind = 'load' AND fresh) AS max_load_pct,
       sum(l.value) FILTER (WHERE s.kind = 'power' AND fresh) AS power_kw,
       max(l.value) FILTER (WHERE s.kind = 'temperature' AND fresh) AS max_temp,
       bool_or(l.value = 1) FILTER (WHERE s.kind = 'fire' AND fresh) AS fire_alarm,
       bool_or(l.value = 2) FILTER (WHERE s.kind = 'fire' AND fresh) AS fire_fault,
       count(l.value) FILTER (WHERE s.kind = 'fire' AND fresh) AS fire_seen,
       max(l.ts) AS newest
  FROM floors f
  LEFT JOIN sensors s ON s.building_id = f.building_id AND s.floor = f.number AND s.active
  LEFT JOIN zones z ON z.building_id = s.building_id AND z.id = s.zone_id
  LEFT JOIN sensor_latest l ON l.sensor_id = s.id
  CROSS JOIN LATERAL (SELECT l.ts > now() - make_interval(secs => 3 * s.interval_s) AS fresh) q
 WHERE f.building_id = %(building)s
 GROUP BY f.building_id, f.number
 ORDER BY f.number
"""


def _fire_state(row: dict[str, Any]) -> FireState:
    if row["fire_alarm"]:
        return "alarm"
    if row["fire_fault"]:
        return "fault"
    return "normal" if row["fire_seen"] else "unknown"


async def floor_summaries(conn: AsyncConnection[DictRow], building: str) -> list[FloorSummary]:
    cur = await conn.execute(_FLOORS_SQL, {"building": building})
    return summaries_of(await cur.fetchall())


def summaries_of(rows: list[DictRow]) -> list[FloorSummary]:
    """The floor summaries of the rows of ``_FLOORS_SQL``."""
    out = []
    for row in rows:
        power = row["power_kw"]
        out.append(
            FloorSummary(
                number=row["number"],
                area_m2=row["area_m2"],
                height_m=row["height_m"],
                load_limit_kg_m2=row["load_limit_kg_m2"],
                power_capacity_kw=row["power_capacity_kw"],
                max_zone_load_kg_m2=row["max_load"],
                max_zone_load_pct=_round(row["max_load_pct"]),
                power_kw=_round(power),
                power_pct=_round(None if power is None else 100 * power / row["power_capacity_kw"]),
                max_temperature_c=_round(row["max_temp"]),
                fire_state=_fire_state(row),
                newest_reading_at=row["newest"],
            )
        )
    return out


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(float(value), digits)


Quality = Literal["ok", "stale", "no_data"]


class ZoneDetail(_Strict):
    id: str
    name: str | None
    area_m2: float
    load_limit_kg_m2: float
    tenant: str | None = Field(description="tenant leasing the zone today")
    load_kg_m2: float | None = Field(description="highest fresh load reading of the zone")
    load_pct: float | None


class SensorDetail(_Strict):
    id: str
    kind: str
    unit: str
    zone: str | None
    tenant: str | None
    interval_s: float
    value: float | None
    ts: datetime | None = Field(description="time of the latest reading")
    quality: Quality = Field(description="stale: nothing for 3 intervals")


class FloorDetail(_Strict):
    number: int
    name: str | None
    area_m2: float
    height_m: float
    load_limit_kg_m2: float
    power_capacity_kw: float
    zones: list[ZoneDetail]
    sensors: list[SensorDetail]
    open_alerts: list[AlertView]


@router.get(
    "/buildings/{building}/floors",
    response_model=list[FloorSummary],
    responses=responses(404),
    summary="Live state of every floor (a tenant: from its own sensors)",
)
async def get_floors(
    request: Request, who: PrincipalDep, pool: PoolDep, building: str = BuildingId
) -> Response:
    async def make() -> Response:
        (rows,) = await read_scoped(pool, who, Read(_FLOORS_SQL, {"building": building}))
        if not rows:  # floors are visible exactly when their building is (RLS)
            (found,) = await read_scoped(pool, who, Read(_BUILDING_SQL, (building,)))
            if not found:
                raise not_found(f"building {building!r}")
        return Response(_SUMMARIES.dump_json(summaries_of(rows)), media_type="application/json")

    return await cached(request, who, make)


_SUMMARIES = TypeAdapter(list[FloorSummary])
_BUILDING_SQL = "SELECT 1 FROM buildings WHERE id = %s"  # RLS: a building the caller may see


_SENSORS_SQL = """
SELECT s.id, s.kind, s.unit, s.zone_id AS zone, s.tenant_id AS tenant, s.interval_s,
       l.value, l.ts,
       CASE WHEN l.ts IS NULL THEN 'no_data'
            WHEN l.ts < now() - make_interval(secs => 3 * s.interval_s) THEN 'stale'
            ELSE 'ok' END AS quality
  FROM sensors s LEFT JOIN sensor_latest l ON l.sensor_id = s.id
 WHERE s.building_id = %s AND s.floor = %s AND s.active
 ORDER BY s.id
"""


@router.get(
    "/buildings/{building}/floors/{floor}",
    response_model=FloorDetail,
    responses=responses(404),
    summary="One floor: zones, sensors with data quality, open alerts",
)
async def get_floor(
    s: ScopeDep, building: str = BuildingId, floor: int = FloorNumber
) -> FloorDetail:
    await require_building(s.conn, building)
    cur = await s.conn.execute(
        "SELECT f.*, b.timezone FROM floors f JOIN buildings b ON b.id = f.building_id"
        " WHERE f.building_id = %s AND f.number = %s",
        (building, floor),
    )
    head = await cur.fetchone()
    if head is None:
        raise not_found(f"floor {floor} of {building!r}")
    cur = await s.conn.execute(
        "SELECT z.id, z.name, z.area_m2, coalesce(z.load_limit_kg_m2, f.load_limit_kg_m2) AS lim,"
        "       (SELECT l.tenant_id FROM leases l WHERE l.building_id = z.building_id"
        "          AND l.zone_id = z.id AND l.valid_from <= %(today)s"
        "          AND (l.valid_to IS NULL OR l.valid_to > %(today)s)) AS tenant"
        "  FROM zones z JOIN floors f ON f.building_id = z.building_id AND f.number = z.floor"
        " WHERE z.building_id = %(b)s AND z.floor = %(n)s ORDER BY z.id",
        {"b": building, "n": floor, "today": local_today(head["timezone"])},
    )
    zones_rows = await cur.fetchall()
    cur = await s.conn.execute(_SENSORS_SQL, (building, floor))
    sensors = [SensorDetail(**r) for r in await cur.fetchall()]
    p = s.principal
    zones = []
    for z in zones_rows:
        if not p.is_operator and z["tenant"] != p.tenant_id:
            continue  # RLS hides other tenants' leases; show a tenant only its own zones
        loads = [
            x.value
            for x in sensors
            if x.zone == z["id"] and x.kind == "load" and x.quality == "ok" and x.value is not None
        ]
        load = max(loads) if loads else None
        zones.append(
            ZoneDetail(
                id=z["id"],
                name=z["name"],
                area_m2=z["area_m2"],
                load_limit_kg_m2=z["lim"],
                tenant=z["tenant"],
                load_kg_m2=load,
                load_pct=_round(None if load is None else 100 * load / z["lim"]),
            )
        )
    return FloorDetail(
        number=head["number"],
        name=head["name"],
        area_m2=head["area_m2"],
        height_m=head["height_m"],
        load_limit_kg_m2=head["load_limit_kg_m2"],
        power_capacity_kw=head["power_capacity_kw"],
        zones=zones,
        sensors=sensors,
        open_alerts=await open_alerts(s.conn, p, building, floor),
    )
