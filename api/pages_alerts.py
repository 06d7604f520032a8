"""The alerts page (``/alerts``): open and recent alerts, filters, and the actions.

Actions go through the JSON API (``POST /api/v1/alerts/{id}/ack|shelve|reset``) from the
page's script, so the alert engine decides, and the page shows who did what and when.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from api import alerts as alerts_api
from api.pages import (
    TEMPLATES,
    SignIn,
    building_row,
    context,
    page_scope,
    tenant_safe,
    to_sign_in,
)
from core.alert_types import FIRE_RULES, AlertState, Severity

router = APIRouter(include_in_schema=False)

SHOWN = {"open": "open and acknowledged", "recent": "all, newest first"}


@router.get("/alerts", response_model=None)
async def alerts_page(
    request: Request,
    floor: Annotated[int | None, Query(ge=-5, le=200)] = None,
    severity: Severity | None = None,
    show: Annotated[str, Query(pattern="^(open|recent)$")] = "open",
) -> Response:
    try:
        async with page_scope(request) as s:
            row = await building_row(s)
            if row is None:
                return TEMPLATES.TemplateResponse(request, "empty.html", {"principal": s.principal})
            found = await alerts_api.list_alerts(
                s, severity=severity, floor=floor, building=row["id"], limit=300
            )
            found = await tenant_safe(s, found)
            cur = await s.conn.execute(
                "SELECT number FROM floors WHERE building_id = %s ORDER BY number DESC",
                (row["id"],),
            )
            numbers = [r["number"] for r in await cur.fetchall()]
    except SignIn:
        return to_sign_in()
    if show == "open":
        found = [a for a in found if a.state is not AlertState.RESOLVED]
    operator = s.principal.is_operator
    rows = []
    for a in found:
        actions = []
        if a.state is AlertState.OPEN and (operator or a.rule not in FIRE_RULES):
            actions.append("ack")
        if operator and a.state is not AlertState.RESOLVED and a.rule not in FIRE_RULES:
            actions.append("unshelve" if a.shelved_until else "shelve")
        if operator and a.latched and a.state is not AlertState.RESOLVED:
            actions.append("reset")
        rows.append({"alert": a, "actions": actions})
    return TEMPLATES.TemplateResponse(
        request,
        "alerts.html",
        context(
            request,
            s,
            row,
            rows=rows,
            floor_numbers=numbers,
            severities=[v.value for v in reversed(Severity)],
            selected={"floor": floor, "severity": severity.value if severity else None},
            show=show,
            shows=SHOWN,
        ),
    )
