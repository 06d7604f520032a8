"""History: a floor's load, power or temperature, and one sensor's readings, by step.

Series are columnar (one list of times, one list per statistic), which keeps a day of
minutes per zone small and quick to serialise. Row-level security decides which sensors and
which times a tenant sees (a zone's sensors only while it leases the zone).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import Field

from api.auth import PrincipalDep, open_scope
from api.common import (
    ID_PATTERN,
    _Strict,
    building_path,
    cached,
    forbid_unknown_query,
    not_found,
    responses,
)
from api.db import Connection, PoolDep
from api.series import From, Step, StepQuery, To, bin_params, bin_sql, choose_step, source
from api.series import time_range as _range

router = APIRouter(prefix="/api/v1", tags=["history"], dependencies=[Depends(forbid_unknown_query)])

Metric = Literal["load", "power", "temperature"]
UNITS = {"load": "kg/m2", "power": "kW", "temperature": "degC", "energy": "kWh", "fire": "state"}


class Series(_Strict):
    sensor: str
    kind: str
    zone: str | None
    tenant: str | None
    unit: str
    t: list[datetime] = Field(description="start of each step (raw: time of each reading)")
    avg: list[float]
    min: list[float]
    max: list[float]
    energy_kwh: list[float | None] | None = Field(
        default=None, description="energy registers: kWh consumed in each step"
    )


class History(_Strict):
    building: str
    floor: int | None = None
    metric: str
    unit: str
    step: Step
    start: datetime
    end: datetime
    series: list[Series]


_SENSOR_COLUMNS = "s.id, s.kind, s.zone_id AS zone, s.tenant_id AS tenant, s.building_id"


async def _series(
    conn: Connection,
    sensors: list[dict[str, Any]],
    *,
    step: Step,
    start: datetime,
    end: datetime,
    tz: ZoneInfo,
) -> str:
    """The series of ``sensors`` as a JSON array, built by PostgreSQL (no Python per point)."""
    if not sensors:
        return "[]"
    table, column = source(step)
    if step is Step.RAW:
        inner = (
            "SELECT x.sensor_id, x.ts AS b, x.value AS avg, x.value AS min, x.value AS max,"
            " NULL::float8 AS kwh FROM readings x"
            " WHERE x.sensor_id = ANY(%(ids)s) AND x.ts >= %(start)s AND x.ts < %(end)s"
        )
    elif step in (Step.M1, Step.H1):  # one rollup row per step: nothing to aggregate
        inner = (
            f"SELECT x.sensor_id, x.{column} AS b, x.sum / x.count AS avg, x.min, x.max,"
            f" x.energy_kwh AS kwh FROM {table} x WHERE x.sensor_id = ANY(%(ids)s)"
            f" AND x.{column} >= %(start)s AND x.{column} < %(end)s"
        )
    else:
        bin_expr = bin_sql(step, f"x.{column}")
        inner = (
            f"SELECT x.sensor_id, {bin_expr} AS b, sum(x.sum) / sum(x.count) AS avg,"
            " min(x.min) AS min, max(x.max) AS max, sum(x.energy_kwh) AS kwh"
            f" FROM {table} x WHERE x.sensor_id = ANY(%(ids)s)"
            f" AND x.{column} >= %(start)s AND x.{column} < %(end)s GROUP BY 1, 2"
        )
    query = (
        "SELECT r.sensor_id, json_build_object("
        " 't', json_agg(r.b ORDER BY r.b),"
        " 'avg', json_agg(round(r.avg * 1e4) / 1e4 ORDER BY r.b),"
        " 'min', json_agg(r.min ORDER BY r.b), 'max', json_agg(r.max ORDER BY r.b),"
        " 'energy_kwh', CASE WHEN r.sensor_id = ANY(%(energy)s)"
        "                    THEN json_agg(r.kwh ORDER BY r.b) END)::text AS body"
        f" FROM ({inner}) r GROUP BY r.sensor_id"
    )
    energy = [s["id"] for s in sensors if s["kind"] == "energy" and step is not Step.RAW]
    params = {"ids": [s["id"] for s in sensors], "start": start, "end": end, "energy": energy}
    params.update(bin_params(step, tz))
    cur = await conn.execute(query, params)
    found = {row["sensor_id"]: row["body"] for row in await cur.fetchall()}
    parts = []
    for s in sensors:
        head = {
            "sensor": s["id"],
            "kind": s["kind"],
            "zone": s["zone"],
            "tenant": s["tenant"],
            "unit": UNITS[s["kind"]],
        }
        empty: dict[str, list[float] | None] = {"t": [], "avg": [], "min": [], "max": []}
        empty["energy_kwh"] = [] if s["id"] in energy else None
        body = found.get(s["id"]) or json.dumps(empty)
        parts.append(json.dumps(head)[:-1] + ", " + body[1:])
    return "[" + ", ".join(parts) + "]"


def _history_response(history: History, series: str) -> Response:
    """The envelope by pydantic, the (large) series spliced in as PostgreSQL wrote them."""
    envelope = history.model_dump_json()
    assert envelope.endswith('"series":[]}')
    return Response(envelope[: -len("[]}")] + series + "}", media_type="application/json")


async def _timezone(conn: Connection, building: str) -> ZoneInfo:
    cur = await conn.execute("SELECT timezone FROM buildings WHERE id = %s", (building,))
    row = await cur.fetchone()
    if row is None:
        raise not_found(f"building {building!r}")
    return ZoneInfo(row["timezone"])


@router.get(
    "/buildings/{building}/floors/{floor}/history",
    response_model=History,
    responses=responses(404),
    summary="A floor's load, power or temperature per sensor over time",
)
async def floor_history(
    request: Request,
    who: PrincipalDep,
    pool: PoolDep,
    *,
    metric: Annotated[Metric, Query(description="load (kg/m2), power (kW), temperature (degC)")],
    start: From = None,
    end: To = None,
    step: StepQuery = None,
    building: str = building_path(),
    floor: int = Path(ge=-5, le=200),
) -> Response:
    first, last = _range(start, end, timedelta(hours=24))
    chosen = choose_step(step, first, last)

    async def make() -> Response:
        async with open_scope(pool, who) as s:
            # RLS hides a building (and its floors) the caller may not see: one query checks
            # both and finds the timezone
            cur = await s.conn.execute(
                "SELECT b.timezone, f.number FROM buildings b LEFT JOIN floors f"
                " ON f.building_id = b.id AND f.number = %s WHERE b.id = %s",
                (floor, building),
            )
            head = await cur.fetchone()
            if head is None:
                raise not_found(f"building {building!r}")
            if head["number"] is None:
                raise not_found(f"floor {floor} of {building!r}")
            tz = ZoneInfo(head["timezone"])
            cur = await s.conn.execute(
                f"SELECT {_SENSOR_COLUMNS} FROM sensors s"
                " WHERE s.building_id = %s AND s.floor = %s AND s.kind = %s ORDER BY s.id",
                (building, floor, metric),
            )
            sensors = list(await cur.fetchall())
            series = await _series(s.conn, sensors, step=chosen, start=first, end=last, tz=tz)
        history = History(
            building=building,
            floor=floor,
            metric=metric,
            unit=UNITS[metric],
            step=chosen,
            start=first,
            end=last,
            series=[],
        )
        return _history_response(history, series)

    return await cached(request, who, make)


@router.get(
    "/sensors/{sensor}/readings",
    response_model=History,
    responses=responses(404),
    summary="One sensor's readings (raw) or statistics per step",
)
async def sensor_readings(
    request: Request,
    who: PrincipalDep,
    pool: PoolDep,
    sensor: Annotated[
        str, Path(pattern=ID_PATTERN, description="sensor id", examples=["ref-f03-load-z2"])
    ],
    start: From = None,
    end: To = None,
    step: StepQuery = None,
) -> Response:
    first, last = _range(start, end, timedelta(hours=1))
    chosen = choose_step(step, first, last)

    async def make() -> Response:
        async with open_scope(pool, who) as s:
            cur = await s.conn.execute(
                f"SELECT {_SENSOR_COLUMNS} FROM sensors s WHERE s.id = %s", (sensor,)
            )
            row = await cur.fetchone()
            if row is None:
                raise not_found(f"sensor {sensor!r}")
            tz = await _timezone(s.conn, row["building_id"])
            series = await _series(s.conn, [row], step=chosen, start=first, end=last, tz=tz)
        history = History(
            building=row["building_id"],
            metric=row["kind"],
            unit=UNITS[row["kind"]],
            step=chosen,
            start=first,
            end=last,
            series=[],
        )
        return _history_response(history, series)

    return await cached(request, who, make)
