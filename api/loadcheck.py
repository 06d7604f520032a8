"""The move-in check: may this machine come up to this zone?

``POST /api/v1/buildings/{building}/floors/{floor}/load-check`` weighs a machine (mass,
footprint, height, kW) against the zone's measured load and limit, the floor height, the
floor's spare power and the tenant's contract. Each check answers ok, warn or refuse with its
margin; the verdict is the worst of them. Thresholds are in docs/api.md.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Path
from pydantic import Field

from api.auth import ScopeDep
from api.buildings import local_today, require_building
from api.common import (
    ID_PATTERN,
    _Strict,
    building_path,
    forbid_unknown_query,
    not_found,
    responses,
)
from api.tenants import METERS_SQL

router = APIRouter(prefix="/api/v1", tags=["move-in"], dependencies=[Depends(forbid_unknown_query)])

Verdict = Literal["ok", "warn", "refuse"]
WARN_FRACTION = 0.9  # warn from 90 % of a limit
CLEARANCE_M = 0.5  # keep half a metre under the ceiling (sprinklers, lighting, cable trays)
_RANK = {"ok": 0, "warn": 1, "refuse": 2}


class Machine(_Strict):
    zone: str = Field(pattern=ID_PATTERN, description="zone the machine goes to")
    mass_kg: float = Field(gt=0, le=1_000_000, allow_inf_nan=False)
    footprint_m2: float = Field(gt=0, le=10_000, allow_inf_nan=False)
    height_m: float = Field(gt=0, le=100, allow_inf_nan=False)
    power_kw: float = Field(ge=0, le=100_000, allow_inf_nan=False)


class Check(_Strict):
    name: Literal["zone_load", "point_load", "height", "floor_power", "tenant_contract"]
    verdict: Verdict
    value: float | None = Field(description="the value after the move-in")
    limit: float
    margin: float | None = Field(description="limit - value (negative: over the limit)")
    unit: str
    reason: str


class LoadCheckResult(_Strict):
    verdict: Verdict
    building: str
    floor: int
    zone: str
    tenant: str | None
    checks: list[Check]


def _grade(value: float | None, limit: float) -> Verdict:
    if value is None:
        return "warn"
    if value > limit:
        return "refuse"
    return "warn" if value > WARN_FRACTION * limit else "ok"


def _check(
    name: str,
    value: float | None,
    limit: float,
    unit: str,
    what: str,
    *,
    verdict: Verdict | None = None,
) -> Check:
    verdict = verdict or _grade(value, limit)
    if value is None:
        reason = f"{what}: unknown (no fresh reading), check on site"
    else:
        reason = f"{what}: {value:.1f} of {limit:.1f} {unit}"
        if verdict == "refuse":
            reason += f", {value - limit:.1f} {unit} over the limit"
    return Check(
        name=name,
        verdict=verdict,
        value=None if value is None else round(value, 3),
        limit=round(limit, 3),
        margin=None if value is None else round(limit - value, 3),
        unit=unit,
        reason=reason,
    )


@router.post(
    "/buildings/{building}/floors/{floor}/load-check",
    response_model=LoadCheckResult,
    responses=responses(400, 404),
    summary="Move-in check of a machine against load, height and power margins",
)
async def load_check(
    s: ScopeDep,
    machine: Machine,
    building: str = building_path(),
    floor: int = Path(ge=-5, le=200),
) -> LoadCheckResult:
    await require_building(s.conn, building)
    cur = await s.conn.execute(
        "SELECT z.area_m2, coalesce(z.load_limit_kg_m2, f.load_limit_kg_m2) AS lim,"
        "       f.height_m, f.power_capacity_kw, b.timezone"
        "  FROM zones z JOIN floors f ON f.building_id = z.building_id AND f.number = z.floor"
        "  JOIN buildings b ON b.id = z.building_id"
        " WHERE z.building_id = %s AND z.floor = %s AND z.id = %s",
        (building, floor, machine.zone),
    )
    zone = await cur.fetchone()
    if zone is None:
        raise not_found(f"zone {machine.zone!r} on floor {floor}")
    cur = await s.conn.execute(
        "SELECT l.tenant_id FROM leases l WHERE l.building_id = %(b)s AND l.zone_id = %(z)s"
        " AND l.valid_from <= %(d)s AND (l.valid_to IS NULL OR l.valid_to > %(d)s)",
        {"b": building, "z": machine.zone, "d": local_today(zone["timezone"])},
    )
    lease = await cur.fetchone()
    tenant = lease["tenant_id"] if lease else None
    p = s.principal
    if not p.is_operator and tenant != p.tenant_id:
        raise not_found(f"zone {machine.zone!r} on floor {floor}")
    cur = await s.conn.execute(
        "SELECT max(l.value) AS load FROM sensors s JOIN sensor_latest l ON l.sensor_id = s.id"
        " WHERE s.building_id = %s AND s.zone_id = %s AND s.kind = 'load' AND s.active"
        "   AND l.ts > now() - make_interval(secs => 3 * s.interval_s)",
        (building, machine.zone),
    )
    measured = (await cur.fetchone() or {}).get("load")
    added = machine.mass_kg / zone["area_m2"]
    checks = [
        _check(
            "zone_load",
            None if measured is None else measured + added,
            zone["lim"],
            "kg/m2",
            f"zone load with the machine spread over {zone['area_m2']:g} m2",
        ),
        _check(
            "point_load",
            machine.mass_kg / machine.footprint_m2,
            zone["lim"],
            "kg/m2",
            "pressure under the machine's footprint (over the limit: a structural check first)",
        ),
        _check(
            "height",
            machine.height_m,
            zone["height_m"],
            "m",
            f"machine height against the floor height ({CLEARANCE_M:g} m clearance wanted)",
            verdict="refuse"
            if machine.height_m > zone["height_m"]
            else "warn"
            if machine.height_m > zone["height_m"] - CLEARANCE_M
            else "ok",
        ),
    ]
    if checks[1].verdict == "refuse":  # a point load over the limit needs a structural check
        checks[1] = checks[1].model_copy(update={"verdict": "warn"})
    cur = await s.conn.execute("SELECT * FROM api_floor_power_now(%s, %s)", (building, floor))
    power = await cur.fetchone()
    floor_kw = None
    if power is not None and power["meters"] and power["fresh"] == power["meters"]:
        floor_kw = power["power_kw"] + machine.power_kw
    checks.append(
        _check("floor_power", floor_kw, zone["power_capacity_kw"], "kW", "floor power after")
    )
    if tenant is not None:
        cur = await s.conn.execute(
            f"WITH m AS ({METERS_SQL})"
            " SELECT sum(l.value) AS kw, count(*) AS n, count(l.value) AS fresh, t.contracted_kw"
            "   FROM tenants t LEFT JOIN m ON m.kind = 'power'"
            "    AND now() >= m.from_ts AND now() < m.to_ts"
            "   LEFT JOIN sensors s ON s.id = m.id"
            "   LEFT JOIN sensor_latest l ON l.sensor_id = m.id"
            "    AND l.ts > now() - make_interval(secs => 3 * s.interval_s)"
            "  WHERE t.building_id = %(b)s AND t.id = %(t)s GROUP BY t.contracted_kw",
            {"b": building, "t": tenant},
        )
        row = await cur.fetchone()
        if row is not None:
            kw = None if row["fresh"] < row["n"] else (row["kw"] or 0.0) + machine.power_kw
            checks.append(
                _check("tenant_contract", kw, row["contracted_kw"], "kW", "tenant's power after")
            )
    verdict: Verdict = max((c.verdict for c in checks), key=_RANK.__getitem__)
    await s.audit("load_check", f"{building}/{floor}/{machine.zone}", verdict)
    return LoadCheckResult(
        verdict=verdict,
        building=building,
        floor=floor,
        zone=machine.zone,
        tenant=tenant,
        checks=checks,
    )
