"""History: a floor's load, power or temperature, and one sensor's readings, by step.

Series are columnar: one list per statistic, on one time axis shared by every series of the
answer (``t``; a sensor without data in a step has null there); raw readings keep a time
list per series. PostgreSQL returns one row of arrays per sensor, read in binary, and the
answer is written by orjson: no Python per point in the usual case. The times come as the
bytes of a binary array, decoded once when every series has the same (the usual case: a
floor's sensors report every minute), so 4 sensors cost one time axis, not four. A floor's
history is one round trip to the database (:func:`api.auth.read_scoped`: its head, its
sensors and their series in one pipeline) unless the step needs the building's time zone to
bin (``5m``, ``15m``, ``1d``): then the series follow in a second. Row-level security
decides which sensors and which times a tenant sees (a zone's sensors only while it leases
the zone).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from psycopg import adapters, postgres
from psycopg.pq import Format
from pydantic import Field

from api.auth import Principal, PrincipalDep, Read, read_scoped
from api.common import (
    ID_PATTERN,
    _Strict,
    building_path,
    cached,
    forbid_unknown_query,
    not_found,
    responses,
)
from api.db import Pool, PoolDep
from api.fastroute import FastRoute
from api.packed import assemble, packed_read
from api.series import (
    From,
    Step,
    StepQuery,
    To,
    bin_params,
    bin_sql,
    bin_start_sql,
    choose_step,
    source,
)
from api.series import time_range as _range

router = APIRouter(
    prefix="/api/v1",
    tags=["history"],
    dependencies=[Depends(forbid_unknown_query)],
    route_class=FastRoute,
)

Metric = Literal["load", "power", "temperature"]
UNITS = {"load": "kg/m2", "power": "kW", "temperature": "degC", "energy": "kWh", "fire": "state"}


class Series(_Strict):
    sensor: str
    kind: str
    zone: str | None
    tenant: str | None
    unit: str
    t: list[datetime] | None = Field(
        default=None, description="raw only: time of each reading (steps share the answer's t)"
    )
    avg: list[float | None]
    min: list[float | None]
    max: list[float | None]
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
    t: list[datetime] | None = Field(
        default=None,
        description="start of each step, shared by every series (null where a sensor has no"
        " data); absent for raw, where each series has its own t",
    )
    series: list[Series]


_SENSOR_COLUMNS = "s.id, s.kind, s.zone_id AS zone, s.tenant_id AS tenant, s.building_id"
_OUT = orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS


_IDS = "%(ids)s"
#: The sensors of a floor of one kind, for the series query of a floor's history.
_FLOOR_IDS = (
    "ARRAY(SELECT s.id FROM sensors s WHERE s.building_id = %(building)s"
    " AND s.floor = %(floor)s AND s.kind = %(metric)s)"
)


def _rows_sql(step: Step, energy: bool, ids: str = _IDS) -> str:
    """One row per sensor of ``ids`` (SQL of a text array): the binary array of its step
    starts ``t`` as bytes (see :func:`decode_times`) and arrays of its statistics (in time
    order as a rule; :func:`shared_axis` checks and does not depend on it); kWh only when
    ``energy``."""
    table, column = source(step)
    if step is Step.RAW:
        inner = (
            "SELECT x.sensor_id, x.ts AS b, x.value AS avg, x.value AS min, x.value AS max,"
            " NULL::float8 AS kwh FROM readings x"
            f" WHERE x.sensor_id = ANY({ids}) AND x.ts >= %(start)s AND x.ts < %(end)s"
            " ORDER BY x.sensor_id, x.ts"
        )
    elif step in (Step.M1, Step.H1):  # one rollup row per step: nothing to aggregate
        inner = (
            f"SELECT x.sensor_id, x.{column} AS b,"
            " round(x.avg * 1e4::float8) / 1e4::float8 AS avg, x.min, x.max,"
            f" x.energy_kwh AS kwh FROM {table} x"
            f" WHERE x.sensor_id = ANY({ids}) AND x.{column} >= %(start)s"
            f" AND x.{column} < %(end)s ORDER BY x.sensor_id, x.{column}"
        )
    else:
        inner = (
            f"SELECT x.sensor_id, {bin_start_sql(step, 'k')} AS b, avg, min, max, kwh"
            f" FROM (SELECT x.sensor_id, {bin_sql(step, f'x.{column}')} AS k,"
            " round(sum(x.sum) / sum(x.count) * 1e4::float8) / 1e4::float8 AS avg,"
            " min(x.min) AS min, max(x.max) AS max, sum(x.energy_kwh) AS kwh"
            f" FROM {table} x WHERE x.sensor_id = ANY({ids})"
            f" AND x.{column} >= %(start)s AND x.{column} < %(end)s GROUP BY 1, 2) x"
            " ORDER BY 1, 2"
        )
    return (
        "SELECT r.sensor_id, array_send(array_agg(r.b)) AS t, array_agg(r.avg) AS avg,"
        " array_agg(r.min) AS min, array_agg(r.max) AS max,"
        f" {'array_agg(r.kwh)' if energy else 'NULL::float8[]'} AS kwh"
        f" FROM ({inner}) r GROUP BY r.sensor_id"
    )


_STATS = ("avg", "min", "max", "kwh")
Row = dict[str, Any]

_TIMES_OID = postgres.types["timestamptz"].array_oid


def decode_times(rows: list[Row]) -> None:
    """Each row's ``t`` (a binary ``timestamptz[]``, as bytes) as a list of UTC datetimes;
    decoded once when all rows have the same bytes, and then one list shared by all rows."""
    times_loader = adapters.get_loader(_TIMES_OID, Format.BINARY)
    if times_loader is None:  # pragma: no cover - psycopg always has it
        raise RuntimeError("psycopg has no binary loader for timestamptz[]")
    loader = times_loader(_TIMES_OID, None)  # no connection: UTC, as the API's sessions
    if rows and all(r["t"] == rows[0]["t"] for r in rows):
        times = loader.load(rows[0]["t"]) if rows[0]["t"] is not None else []
        for r in rows:
            r["t"] = times
        return
    for r in rows:
        r["t"] = loader.load(r["t"]) if r["t"] is not None else []


def shared_axis(rows: list[Row]) -> list[datetime]:
    """The shared time axis of ``rows``; each row's statistics put on it (None where absent).

    Usually every sensor has every step, in order: then the axis is the first row's ``t``
    and nothing moves. Otherwise the axis is the sorted union and the values are placed by
    time.
    """
    if not rows:
        return []
    first: list[datetime] = rows[0]["t"]
    if all(r["t"] == first for r in rows) and first == sorted(first):
        return first
    axis = sorted({t for r in rows for t in r["t"]})
    index = {t: i for i, t in enumerate(axis)}
    for r in rows:
        where = [index[t] for t in r["t"]]
        for name in _STATS:
            if r[name] is None:
                continue
            column: list[float | None] = [None] * len(axis)
            for i, value in zip(where, r[name], strict=True):
                column[i] = value
            r[name] = column
    return axis


def time_ordered(rows: list[Row]) -> None:
    """Put each row's readings in time order (raw series; as a rule they are already)."""
    for row in rows:
        if row["t"] != sorted(row["t"]):
            order = sorted(range(len(row["t"])), key=row["t"].__getitem__)
            for name in ("t", *_STATS):
                if row[name] is not None:
                    row[name] = [row[name][i] for i in order]


def series_read(
    step: Step,
    params: dict[str, Any],
    *,
    energy: bool,
    ids: str = _IDS,
    tz: ZoneInfo | None = None,
) -> Read:
    """The series query of ``step`` (binary): ``params`` has ``start``, ``end`` and what
    ``ids`` binds; ``tz`` is the building's, needed only by steps that bin in local time."""
    if tz is None and step not in _NO_TZ:
        raise ValueError(f"step {step} bins in the building's time zone")
    bins = bin_params(step, tz or _UTC, params["start"], params["end"])
    return Read(_rows_sql(step, energy, ids), params | bins, binary=True)


#: Steps whose query does not depend on the building's time zone (no binning).
_NO_TZ = (Step.RAW, Step.M1, Step.H1)
_UTC = ZoneInfo("UTC")


def series_of(
    sensors: list[Row], rows: list[Row], step: Step
) -> tuple[list[datetime] | None, list[dict[str, Any]]]:
    """(shared axis, or None for raw; the series of ``sensors``) from the series query."""
    decode_times(rows)
    axis = None if step is Step.RAW else shared_axis(rows)
    if axis is None:
        time_ordered(rows)
    found = {r["sensor_id"]: r for r in rows}
    n = 0 if axis is None else len(axis)
    out = []
    for s in sensors:
        r = found.get(s["id"])
        kwh = s["kind"] == "energy" and step is not Step.RAW
        item = _item(s)
        if axis is None:
            item["t"] = r["t"] if r else []
        for name in ("avg", "min", "max"):
            item[name] = r[name] if r else [None] * n
        item["energy_kwh"] = (r["kwh"] if r else [None] * n) if kwh else None
        out.append(item)
    return axis, out


def _item(s: Row) -> dict[str, Any]:
    """The head of a series: its sensor."""
    return {"sensor": s["id"], "kind": s["kind"], "zone": s["zone"], "tenant": s["tenant"],
            "unit": UNITS[s["kind"]]}  # fmt: skip


def _history_response(head: dict[str, Any], axis: Any, series: Any) -> Response:
    """The whole answer by orjson (a day of minutes of a floor is a few hundred kB)."""
    body = head | {"t": axis, "series": series}
    return Response(orjson.dumps(body, option=_OUT), media_type="application/json")


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
        head, axis, series = await _floor_series(
            pool, who, building, floor, metric, chosen, first, last
        )
        return _history_response(head, axis, series)

    return await cached(request, who, make)


_FLOOR_HEAD_SQL = (
    "SELECT b.timezone, f.number FROM buildings b LEFT JOIN floors f"
    " ON f.building_id = b.id AND f.number = %(floor)s WHERE b.id = %(building)s"
)
_FLOOR_SENSORS_SQL = (
    f"SELECT {_SENSOR_COLUMNS} FROM sensors s WHERE s.building_id = %(building)s"
    " AND s.floor = %(floor)s AND s.kind = %(metric)s ORDER BY s.id"
)


async def _floor_series(
    pool: Pool,
    who: Principal,
    building: str,
    floor: int,
    metric: str,
    step: Step,
    start: datetime,
    end: datetime,
) -> tuple[dict[str, Any], Any, list[dict[str, Any]]]:
    """(head of the answer, axis, series) of a floor's history of ``metric``; by minute, the
    axis and the statistics are JSON already (:mod:`api.packed`).

    RLS hides a building (and its floors) the caller may not see: the head query checks both
    and finds the time zone. Its sensors and their series (a floor's sensors of one kind,
    selected in the series query itself) come in the same round trip, unless ``step`` bins
    in local time.
    """
    params = {"building": building, "floor": floor, "metric": metric, "start": start, "end": end}
    reads = [Read(_FLOOR_HEAD_SQL, params), Read(_FLOOR_SENSORS_SQL, params)]
    if step is Step.M1:  # from the packed hours (api/packed.py)
        reads.append(packed_read(_FLOOR_IDS, params))
    elif step in _NO_TZ:  # a floor's metric is never energy: no kWh
        reads.append(series_read(step, params, energy=False, ids=_FLOOR_IDS))
    found = await read_scoped(pool, who, *reads)
    if not found[0]:
        raise not_found(f"building {building!r}")
    if found[0][0]["number"] is None:
        raise not_found(f"floor {floor} of {building!r}")
    sensors = found[1]
    head = {"building": building, "floor": floor, "metric": metric, "unit": UNITS[metric],
            "step": step, "start": start, "end": end}  # fmt: skip
    if step is Step.M1:
        times, packed = assemble([s["id"] for s in sensors], found[2], start, end)
        return head, times, [_item(s) | packed[s["id"]] | {"energy_kwh": None} for s in sensors]
    if step in _NO_TZ:
        rows = found[2]
    elif sensors:
        tz = ZoneInfo(found[0][0]["timezone"])
        ids = {"ids": [s["id"] for s in sensors], "start": start, "end": end}
        (rows,) = await read_scoped(pool, who, series_read(step, ids, energy=False, tz=tz))
    else:
        rows = []
    axis, series = series_of(sensors, rows, step)
    return head, axis, series


_SENSOR_SQL = (
    f"SELECT {_SENSOR_COLUMNS}, b.timezone FROM sensors s"
    " JOIN buildings b ON b.id = s.building_id WHERE s.id = %s"
)


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
        params = {"ids": [sensor], "start": first, "end": last}
        if chosen in _NO_TZ:  # one round trip; kWh read whatever the kind, shown for energy
            reads = [Read(_SENSOR_SQL, (sensor,)), series_read(chosen, params, energy=True)]
            found, rows = await read_scoped(pool, who, *reads)
        else:
            (found,) = await read_scoped(pool, who, Read(_SENSOR_SQL, (sensor,)))
        if not found:
            raise not_found(f"sensor {sensor!r}")
        row = found[0]
        if chosen not in _NO_TZ:
            tz = ZoneInfo(row["timezone"])
            read = series_read(chosen, params, energy=row["kind"] == "energy", tz=tz)
            (rows,) = await read_scoped(pool, who, read)
        axis, series = series_of([row], rows, chosen)
        kind = row["kind"]
        head = {"building": row["building_id"], "floor": None, "metric": kind,
                "unit": UNITS[kind], "step": chosen, "start": first, "end": last}  # fmt: skip
        return _history_response(head, axis, series)

    return await cached(request, who, make)
