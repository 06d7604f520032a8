"""The tenant page (``/tenant``): its power, energy, bill, alerts and the move-in check.

A tenant sees only itself: every query runs in its row-level-security scope, and the page
carries no other tenant's name, zone or figure (tests/test_pages_browser.py checks the
page and every response it fetches). An operator may open any tenant's page with
``?tenant=<id>``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from api import alerts as alerts_api
from api.auth import Scope
from api.buildings import local_today
from api.common import ID_PATTERN
from api.pages import (
    TEMPLATES,
    SignIn,
    building_row,
    context,
    page_scope,
    tenant_safe,
    to_sign_in,
)
from api.tenants import METERS_SQL, resolve_tenant

router = APIRouter(include_in_schema=False)

_NOW_SQL = f"""
WITH m AS ({METERS_SQL})
SELECT sum(l.value) FILTER (WHERE l.ts > now() - make_interval(secs => 3 * s.interval_s))
           AS kw,
       count(*) AS meters,
       count(*) FILTER (WHERE l.ts IS NULL
                           OR l.ts <= now() - make_interval(secs => 3 * s.interval_s)) AS stale
  FROM m JOIN sensors s ON s.id = m.id
  LEFT JOIN sensor_latest l ON l.sensor_id = m.id
 WHERE m.kind = 'power' AND now() >= m.from_ts AND now() < m.to_ts
"""

_TODAY_SQL = f"""
WITH m AS ({METERS_SQL})
SELECT sum(r.energy_kwh) AS kwh FROM m JOIN rollups_1m r ON r.sensor_id = m.id
 WHERE m.kind = 'energy' AND r.bucket >= greatest(m.from_ts, %(start)s)
   AND r.bucket < least(m.to_ts, %(end)s)
"""

_ZONES_SQL = """
SELECT z.id, z.name, z.floor, z.area_m2 FROM leases l
  JOIN zones z ON z.building_id = l.building_id AND z.id = l.zone_id
 WHERE l.building_id = %(b)s AND l.tenant_id = %(t)s AND l.valid_from <= %(today)s
   AND (l.valid_to IS NULL OR l.valid_to > %(today)s)
 ORDER BY z.floor, z.id
"""


async def _figures(s: Scope, tenant: dict[str, Any]) -> dict[str, Any]:
    tz = ZoneInfo(tenant["timezone"])
    today = local_today(tenant["timezone"])
    midnight = datetime(today.year, today.month, today.day, tzinfo=tz)
    params = {
        "b": tenant["building_id"],
        "t": tenant["id"],
        "start": midnight,
        "end": datetime.now(UTC),
        "today": today,
    }
    cur = await s.conn.execute(_NOW_SQL, params)
    now = await cur.fetchone() or {}
    cur = await s.conn.execute(_TODAY_SQL, params)
    energy = await cur.fetchone() or {}
    cur = await s.conn.execute(_ZONES_SQL, params)
    zones = await cur.fetchall()
    kw = now.get("kw")
    contracted = tenant["contracted_kw"]
    return {
        "kw_now": kw,
        "kw_pct": None if kw is None else 100 * kw / contracted,
        "meters": now.get("meters", 0),
        "stale_meters": now.get("stale", 0),
        "kwh_today": energy.get("kwh"),
        "zones": zones,
        "floors": sorted({z["floor"] for z in zones}),
        "month": today.strftime("%Y-%m"),
        "month_label": today.strftime("%B %Y"),
        "chart_from": (midnight - timedelta(days=29)).isoformat(),
    }


@router.get("/tenant", response_model=None)
async def tenant_page(
    request: Request, tenant: Annotated[str | None, Query(pattern=ID_PATTERN)] = None
) -> Response:
    try:
        async with page_scope(request) as s:
            p = s.principal
            if p.is_operator and tenant is None:
                cur = await s.conn.execute("SELECT id FROM tenants ORDER BY building_id, id")
                first = await cur.fetchone()
                if first is None:
                    return RedirectResponse("/", status_code=303)
                tenant = first["id"]
            wanted = p.tenant_id if not p.is_operator else tenant
            assert wanted is not None
            try:
                row = await resolve_tenant(s, wanted, p.building_id)
            except HTTPException:
                return RedirectResponse("/", status_code=303)
            building = await building_row(s, row["building_id"])
            assert building is not None
            figures = await _figures(s, row)
            found = await alerts_api.list_alerts(s, building=row["building_id"], limit=300)
            found = await tenant_safe(s, found)
            others: list[dict[str, Any]] = []
            if p.is_operator:
                cur = await s.conn.execute(
                    "SELECT id, name FROM tenants WHERE building_id = %s ORDER BY name",
                    (row["building_id"],),
                )
                others = list(await cur.fetchall())
    except SignIn:
        return to_sign_in()
    touching = [a for a in found if row["id"] in a.tenants][:50]
    return TEMPLATES.TemplateResponse(
        request,
        "tenant.html",
        context(
            request,
            s,
            building,
            tenant=row,
            fig=figures,
            alerts=touching,
            tenant_choices=others,
        ),
    )


@router.get("/tenant/live.json", response_model=None)
async def tenant_live(
    request: Request, tenant: Annotated[str | None, Query(pattern=ID_PATTERN)] = None
) -> Response:
    """Power now and evacuation advice for the tenant page (polled; only its own figures)."""
    try:
        async with page_scope(request) as s:
            p = s.principal
            wanted = tenant if p.is_operator else p.tenant_id
            if wanted is None:
                raise HTTPException(404, "no tenant")
            row = await resolve_tenant(s, wanted, None if p.is_operator else p.building_id)
            figures = await _figures(s, row)
            cur = await s.conn.execute(
                "SELECT floor, evacuation_floors FROM alerts WHERE building_id = %s"
                " AND rule = 'fire' AND state <> 'resolved' AND %s = ANY (tenant_ids)"
                " ORDER BY floor",
                (row["building_id"], row["id"]),
            )
            fires = await cur.fetchall()
    except SignIn:
        raise HTTPException(401, "sign in") from None
    evacuations = [
        {
            "fire_floor": f["floor"],
            "floors": list(f["evacuation_floors"] or []),
            "yours": [n for n in figures["floors"] if n in (f["evacuation_floors"] or [])],
        }
        for f in fires
    ]
    body = {"kw_now": figures["kw_now"], "evacuations": evacuations}
    return JSONResponse(body, headers={"Cache-Control": "no-store"})
