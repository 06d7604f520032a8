"""The sensor registry as the services hold it in memory: sensor id -> where and what it is.

Kind, floor, zone and tenant of a reading come from here, never from the payload. The
ingester and the alert engine load it from the ``sensors`` table and reload it when a building
is applied while they run.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from core.building import SensorKind

_QUERY = (
    "SELECT id, building_id, floor, kind, zone_id, tenant_id, interval_s FROM sensors WHERE active"
)

Row = tuple[str, str, int, str, str | None, str | None, float]


@dataclass(frozen=True, slots=True)
class SensorInfo:
    building: str
    floor: int
    kind: SensorKind
    zone: str | None
    tenant: str | None
    interval_s: float


Registry = dict[str, SensorInfo]


def _build(rows: list[Row]) -> Registry:
    return {
        sensor_id: SensorInfo(building, floor, SensorKind(kind), zone, tenant, float(interval))
        for sensor_id, building, floor, kind, zone, tenant, interval in rows
    }


def load_registry(conn: psycopg.Connection[tuple[object, ...]]) -> Registry:
    """Every active sensor, keyed by id."""
    rows = conn.execute(_QUERY).fetchall()
    return _build(rows)  # type: ignore[arg-type]


async def load_registry_async(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> Registry:
    """Every active sensor, keyed by id (async connection)."""
    cursor = await conn.execute(_QUERY)
    rows = await cursor.fetchall()
    return _build(rows)  # type: ignore[arg-type]
