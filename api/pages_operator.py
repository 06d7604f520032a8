"""Operator pages: the building cross-section (``/``) and one floor (``/floors/{n}``).

A tenant asking for either is sent to its own page (``/tenant``): these pages show every
tenant of the building.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import RedirectResponse, Response

from api import floors
from api.auth import Scope
from api.pages import (
    TEMPLATES,
    SignIn,
    building_row,
    context,
    floor_status,
    page_scope,
    to_sign_in,
)

router = APIRouter(include_in_schema=False)

_ALERT_COUNTS = """
SELECT floor, severity, count(*) AS n FROM alerts
 WHERE building_id = %s AND state <> 'resolved' AND floor IS NOT NULL
   AND (shelved_until IS NULL OR shelved_until <= now())
 GROUP BY floor, severity
"""

# Tenants with space on each floor today: leases of the building-local day, plus own meters.
_FLOOR_TENANTS = """
SELECT DISTINCT x.floor, t.id, t.name FROM (
    SELECT z.floor, l.tenant_id FROM leases l
      JOIN zones z ON z.building_id = l.building_id AND z.id = l.zone_id
     WHERE l.building_id = %(b)s AND l.valid_from <= %(today)s
       AND (l.valid_to IS NULL OR l.valid_to > %(today)s)
    UNION SELECT s.floor, s.tenant_id FROM sensors s
     WHERE s.building_id = %(b)s AND s.tenant_id IS NOT NULL AND s.active) x
  JOIN tenants t ON t.building_id = %(b)s AND t.id = x.tenant_id
 ORDER BY x.floor, t.name
"""

_FIRES = """
SELECT a.floor, a.evacuation_floors FROM alerts a
 WHERE a.building_id = %s AND a.rule = 'fire' AND a.state <> 'resolved'
"""


async def floor_tenants(s: Scope, building: dict[str, Any]) -> dict[int, list[dict[str, str]]]:
    from api.buildings import local_today

    cur = await s.conn.execute(
        _FLOOR_TENANTS, {"b": building["id"], "today": local_today(building["timezone"])}
    )
    out: dict[int, list[dict[str, str]]] = {}
    for row in await cur.fetchall():
        out.setdefault(row["floor"], []).append({"id": row["id"], "name": row["name"]})
    return out


async def bands(s: Scope, building: dict[str, Any]) -> list[dict[str, Any]]:
    """One band per floor, top floor first, from the database (the page then goes live)."""
    summaries = await floors.floor_summaries(s.conn, building["id"])
    cur = await s.conn.execute(_ALERT_COUNTS, (building["id"],))
    counts: dict[int, dict[str, int]] = {}
    for row in await cur.fetchall():
        counts.setdefault(row["floor"], {})[row["severity"]] = row["n"]
    cur = await s.conn.execute(_FIRES, (building["id"],))
    fires = await cur.fetchall()
    fire_floors = sorted({r["floor"] for r in fires})
    evacuated = {n for r in fires for n in (r["evacuation_floors"] or [])}
    cur = await s.conn.execute(
        "SELECT number, name FROM floors WHERE building_id = %s", (building["id"],)
    )
    names = {r["number"]: r["name"] for r in await cur.fetchall()}
    out = []
    for f in sorted(summaries, key=lambda x: -x.number):
        band: dict[str, Any] = {
            "number": f.number,
            "name": names.get(f.number),
            "load_pct": f.max_zone_load_pct,
            "load_kg_m2": f.max_zone_load_kg_m2,
            "load_limit_kg_m2": f.load_limit_kg_m2,
            "power_kw": f.power_kw,
            "power_pct": f.power_pct,
            "power_capacity_kw": f.power_capacity_kw,
            "temperature_c": f.max_temperature_c,
            "fire_state": f.fire_state,
            "alerts": counts.get(f.number, {}),
            "quality": "unknown" if f.newest_reading_at is None else "good",
            "newest_reading_at": f.newest_reading_at,
            "evacuation": f.number in evacuated,
            "evacuation_from": fire_floors if f.number in evacuated else [],
        }
        band["status"] = floor_status(band)
        out.append(band)
    return out


@router.get("/", response_model=None)
async def building_page(request: Request, building: str | None = None) -> Response:
    try:
        async with page_scope(request) as s:
            if not s.principal.is_operator:
                return RedirectResponse("/tenant", status_code=303)
            row = await building_row(s, building)
            if row is None:
                return TEMPLATES.TemplateResponse(request, "empty.html", {"principal": s.principal})
            shown = await bands(s, row)
            tenants = await floor_tenants(s, row)
    except SignIn:
        return to_sign_in()
    fire_floors = sorted({n for b in shown for n in b["evacuation_from"]})
    numbers = {b["number"] for b in shown}
    evacuations = [
        {"fire": f, "floors": [n for n in (f - 1, f, f + 1) if n in numbers]} for f in fire_floors
    ]
    return TEMPLATES.TemplateResponse(
        request,
        "building.html",
        context(
            request,
            s,
            row,
            bands=shown,
            floor_tenants=tenants,
            fire_floors=fire_floors,
            evacuations=evacuations,
        ),
    )


@router.get("/floors/{number}", response_model=None)
async def floor_page(
    request: Request, number: int = Path(ge=-5, le=200), building: str | None = None
) -> Response:
    try:
        async with page_scope(request) as s:
            if not s.principal.is_operator:
                return RedirectResponse("/tenant", status_code=303)
            row = await building_row(s, building)
            if row is None:
                raise HTTPException(404, "no building")
            detail = await floors.get_floor(s, row["id"], number)
            cur = await s.conn.execute(
                "SELECT id, name FROM tenants WHERE building_id = %s", (row["id"],)
            )
            tenant_names = {r["id"]: r["name"] for r in await cur.fetchall()}
            cur = await s.conn.execute(
                "SELECT number FROM floors WHERE building_id = %s ORDER BY number DESC",
                (row["id"],),
            )
            numbers = [r["number"] for r in await cur.fetchall()]
    except SignIn:
        return to_sign_in()
    stale = [x for x in detail.sensors if x.quality != "ok"]
    return TEMPLATES.TemplateResponse(
        request,
        "floor.html",
        context(
            request,
            s,
            row,
            floor=detail,
            tenant_names=tenant_names,
            floor_numbers=numbers,
            stale_count=len(stale),
        ),
    )
