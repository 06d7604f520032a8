"""Live floor summaries: ``GET /api/v1/buildings/{building}/floors``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Path
from psycopg import AsyncConnection
from psycopg.rows import DictRow
from pydantic import BaseModel, ConfigDict, Field

from api.db import Conn

router = APIRouter(prefix="/api/v1", tags=["floors"])

FireState = Literal["normal", "alarm", "fault", "unknown"]
BuildingId = Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="building id")


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
    fire_state: FireState
    newest_reading_at: datetime | None = Field(description="time of the floor's newest reading")


class Problem(BaseModel):
    detail: str


_FLOORS_SQL = """
SELECT f.number, f.area_m2, f.height_m, f.load_limit_kg_m2, f.power_capacity_kw,
       max(l.value) FILTER (WHERE s.kind = 'load') AS max_load,
       max(100.0 * l.value / coalesce(z.load_limit_kg_m2, f.load_limit_kg_m2))
           FILTER (WHERE s.kind = 'load') AS max_load_pct,
       sum(l.value) FILTER (WHERE s.kind = 'power') AS power_kw,
       max(l.value) FILTER (WHERE s.kind = 'temperature') AS max_temp,
       bool_or(l.value = 1) FILTER (WHERE s.kind = 'fire') AS fire_alarm,
       bool_or(l.value = 2) FILTER (WHERE s.kind = 'fire') AS fire_fault,
       count(l.value) FILTER (WHERE s.kind = 'fire') AS fire_seen,
       max(l.ts) AS newest
  FROM floors f
  LEFT JOIN sensors s ON s.building_id = f.building_id AND s.floor = f.number AND s.active
  LEFT JOIN zones z ON z.building_id = s.building_id AND z.id = s.zone_id
  LEFT JOIN sensor_latest l ON l.sensor_id = s.id
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


async def building_exists(conn: AsyncConnection[DictRow], building: str) -> bool:
    cur = await conn.execute("SELECT 1 FROM buildings WHERE id = %s", (building,))
    return await cur.fetchone() is not None


async def floor_summaries(conn: AsyncConnection[DictRow], building: str) -> list[FloorSummary]:
    cur = await conn.execute(_FLOORS_SQL, {"building": building})
    out = []
    for row in await cur.fetchall():
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


@router.get(
    "/buildings/{building}/floors",
    response_model=list[FloorSummary],
    responses={404: {"model": Problem, "description": "no such building"}},
    summary="Live state of every floor of a building",
)
async def get_floors(conn: Conn, building: str = BuildingId) -> list[FloorSummary]:
    if not await building_exists(conn, building):
        raise HTTPException(404, f"building {building!r} does not exist")
    return await floor_summaries(conn, building)
