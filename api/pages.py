"""The pages' shared parts: templates, filters, the signed-in scope of a page, statuses.

Pages are server-rendered (Jinja2) and read the database through the same row-level-security
scope as the JSON API: a page request authenticates with the session cookie, and every query
it makes runs as that principal. A little JavaScript (``api/static/js``) then keeps them live
over ``/api/v1/live`` and draws charts from the JSON API. See docs/dashboards.md.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import HTTPException, Request
from fastapi.responses import RedirectResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from api.auth import Scope, authenticate, credentials
from api.db import Pool
from core.alert_types import AlertView

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
STATIC_DIR = Path(__file__).parent / "static"


def _localtime(value: datetime | str | None, tz: str, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A time in the building's timezone (the zone's abbreviation is shown once per page)."""
    if value is None:
        return "—"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(ZoneInfo(tz)).strftime(fmt)


def _num(value: float | None, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "—"
    text = f"{value:,.{digits}f}"
    return f"{text} {unit}".rstrip()


def _tojson_safe(value: Any) -> Markup:
    """JSON for a ``<script type="application/json">`` block (no ``</script>`` breakout)."""
    text = json.dumps(value, default=str).replace("<", "\\u003c").replace(">", "\\u003e")
    return Markup(text)


TEMPLATES.env.filters["localtime"] = _localtime
TEMPLATES.env.filters["num"] = _num
TEMPLATES.env.filters["jsonblock"] = _tojson_safe

# Worst status first. Colour is never the only signal: every status has a word and an icon.
STATUSES: dict[str, tuple[str, str]] = {
    "fire": ("FIRE", "✹"),
    "evacuate": ("Evacuate", "⚑"),
    "critical": ("Critical", "✖"),
    "warning": ("Warning", "⚠"),
    "trouble": ("Trouble", "⚙"),
    "unknown": ("No data", "?"),
    "normal": ("Normal", "✓"),
}
TEMPLATES.env.globals["STATUSES"] = STATUSES
SEVERITY_ICONS = {"critical": "✖", "warning": "⚠", "trouble": "⚙", "info": "ℹ"}
TEMPLATES.env.globals["SEVERITY_ICONS"] = SEVERITY_ICONS


def floor_status(band: dict[str, Any]) -> str:
    """The worst status of a floor band; the same rules as ``statusOf`` in live.js."""
    alerts = band.get("alerts") or {}
    load, power = band.get("load_pct"), band.get("power_pct")
    if band.get("fire_state") == "alarm" or band["number"] in band.get("evacuation_from", []):
        return "fire"
    if band.get("evacuation"):
        return "evacuate"
    if alerts.get("critical") or (load or 0) >= 100 or (power or 0) >= 100:
        return "critical"
    if alerts.get("warning") or (load or 0) >= 90 or (power or 0) >= 90:
        return "warning"
    if alerts.get("trouble") or band.get("fire_state") == "fault":
        return "trouble"
    if band.get("quality") == "unknown":
        return "unknown"
    return "normal"


class SignIn(Exception):
    """The page needs a signed-in user: redirect to the sign-in page."""


@asynccontextmanager
async def page_scope(request: Request) -> AsyncIterator[Scope]:
    """The signed-in principal's scope for one page (one transaction), or :class:`SignIn`."""
    try:
        found = credentials(request)
    except HTTPException:
        found = None
    if found is None:
        raise SignIn
    pool: Pool = request.state.pool
    async with pool.connection() as conn:
        principal = await authenticate(conn, *found)
        if principal is None:
            await conn.rollback()
            raise SignIn
        yield Scope(conn, principal)
        await conn.commit()


def to_sign_in() -> RedirectResponse:
    return RedirectResponse("/sign-in", status_code=303)


async def building_row(s: Scope, wanted: str | None = None) -> dict[str, Any] | None:
    """The building the page shows: the tenant's own, else ``wanted`` or the first one."""
    building = s.principal.building_id or wanted
    cur = await s.conn.execute(
        "SELECT id, name, timezone FROM buildings"
        " WHERE %(b)s::text IS NULL OR id = %(b)s ORDER BY id LIMIT 1",
        {"b": building},
    )
    return await cur.fetchone()


def context(request: Request, s: Scope, building: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """What every page template gets: who, where, the building and its timezone."""
    now = datetime.now(ZoneInfo(building["timezone"]))
    return {
        "request": request,
        "principal": s.principal,
        "building": building,
        "tz": building["timezone"],
        "tz_abbr": now.strftime("%Z (UTC%z)"),
        "path": request.url.path,
        **extra,
    }


async def tenant_safe(s: Scope, alerts: list[AlertView]) -> list[AlertView]:
    """Alerts as a tenant may read them: a fire next door without the neighbour's zone.

    A tenant sees alerts that name it, including a fire on a neighbouring floor (it must
    evacuate). The engine's message and subject name the detector and zone on fire, which may
    be another tenant's: those are replaced by a message that names only the floors.
    """
    if s.principal.is_operator:
        return alerts
    cur = await s.conn.execute("SELECT id FROM sensors")  # RLS: its meters and zones' sensors
    sensors = {r["id"] for r in await cur.fetchall()}
    cur = await s.conn.execute("SELECT zone_id FROM leases")  # RLS: its own leases
    zones = {r["zone_id"] for r in await cur.fetchall()}
    out = []
    for alert in alerts:
        a = alert
        if (a.zone and a.zone not in zones) or (a.sensor and a.sensor not in sensors):
            if a.evacuation is not None:
                floors = ", ".join(str(n) for n in a.evacuation.floors)
                text = f"FIRE on floor {a.floor}: evacuate floors {floors}"
            else:
                text = f"{a.rule.value.replace('_', ' ')} on floor {a.floor}"
            a = a.model_copy(update={"message": text, "zone": None, "sensor": None})
        out.append(a)
    return out
