"""Buildings: ``GET /api/v1/buildings`` and ``GET /api/v1/buildings/{building}``."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends

from api.auth import ScopeDep
from api.common import ID_PATTERN, _Strict, building_path, forbid_unknown_query, not_found
from api.db import Connection

router = APIRouter(
    prefix="/api/v1", tags=["buildings"], dependencies=[Depends(forbid_unknown_query)]
)


class BuildingSummary(_Strict):
    id: str
    name: str
    timezone: str
    floors: int
    zones: int
    tenants: int


class TenantInfo(_Strict):
    id: str
    name: str
    contracted_kw: float
    tariff: str
    zones: list[str]


class BuildingDetail(BuildingSummary):
    floor_numbers: list[int]
    tenant_list: list[TenantInfo]


_SUMMARY_SQL = """
SELECT b.id, b.name, b.timezone,
       (SELECT count(*) FROM floors f WHERE f.building_id = b.id) AS floors,
       (SELECT count(*) FROM zones z WHERE z.building_id = b.id) AS zones,
       (SELECT count(*) FROM tenants t WHERE t.building_id = b.id) AS tenants
  FROM buildings b
"""


def local_today(timezone: str) -> date:
    return datetime.now(UTC).astimezone(ZoneInfo(timezone)).date()


async def building_visible(conn: Connection, building: str) -> bool:
    """RLS hides other buildings from a tenant, so this is the ownership check too."""
    cur = await conn.execute("SELECT 1 FROM buildings WHERE id = %s", (building,))
    return await cur.fetchone() is not None


async def require_building(conn: Connection, building: str) -> None:
    if not await building_visible(conn, building):
        raise not_found(f"building {building!r}")


@router.get(
    "/buildings",
    response_model=list[BuildingSummary],
    summary="Buildings you may see (a tenant: its own)",
)
async def list_buildings(s: ScopeDep) -> list[BuildingSummary]:
    cur = await s.conn.execute(_SUMMARY_SQL + " ORDER BY b.id")
    return [BuildingSummary(**row) for row in await cur.fetchall()]


@router.get(
    "/buildings/{building}",
    response_model=BuildingDetail,
    responses={404: {"description": "no such building, or not yours"}},
    summary="One building: floors and tenants (a tenant sees only itself)",
)
async def get_building(s: ScopeDep, building: str = building_path()) -> BuildingDetail:
    if not s.principal.sees_building(building):
        raise not_found(f"building {building!r}")
    cur = await s.conn.execute(_SUMMARY_SQL + " WHERE b.id = %s", (building,))
    row = await cur.fetchone()
    if row is None:
        raise not_found(f"building {building!r}")
    cur = await s.conn.execute(
        "SELECT number FROM floors WHERE building_id = %s ORDER BY number", (building,)
    )
    floors = [r["number"] for r in await cur.fetchall()]
    cur = await s.conn.execute(
        "SELECT t.id, t.name, t.contracted_kw, t.tariff_id AS tariff,"
        " coalesce(array_agg(l.zone_id ORDER BY l.zone_id) FILTER (WHERE l.zone_id IS NOT NULL),"
        "          '{}') AS zones"
        "  FROM tenants t LEFT JOIN leases l ON l.building_id = t.building_id"
        "   AND l.tenant_id = t.id AND l.valid_from <= %(today)s"
        "   AND (l.valid_to IS NULL OR l.valid_to > %(today)s)"
        " WHERE t.building_id = %(b)s GROUP BY t.building_id, t.id ORDER BY t.id",
        {"b": building, "today": local_today(row["timezone"])},
    )
    tenants = [TenantInfo(**r) for r in await cur.fetchall()]
    return BuildingDetail(**row, floor_numbers=floors, tenant_list=tenants)


__all__ = ["ID_PATTERN", "building_visible", "require_building", "router"]
