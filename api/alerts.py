"""Alerts: list them, and ask the alert engine to act on one.

Acting never changes an alert here: the API inserts a row into ``alert_commands`` (commits
it, which wakes the engine) and waits up to ``api_command_timeout_s`` for the engine's verdict.
200 with the alert as it is now when the engine did it, 409 with the engine's reason when it
refused, 504 when it did not answer in time (the command stays queued), 503 without database.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request
from pydantic import AwareDatetime, Field

from api.auth import Principal, Scope, ScopeDep
from api.common import ID_PATTERN, _Strict, forbid_unknown_query, not_found, responses
from api.db import Connection
from api.live import redact_actors, redact_for_tenant
from core.alert_types import (
    FIRE_RULES,
    AlertState,
    AlertView,
    CommandAction,
    Evacuation,
    Severity,
    TenantRef,
)

router = APIRouter(prefix="/api/v1", tags=["alerts"], dependencies=[Depends(forbid_unknown_query)])

_SELECT = """
SELECT a.*,
       (SELECT coalesce(json_agg(json_build_object('id', t.id, 'name', t.name) ORDER BY t.id),
                        '[]')
          FROM tenants t WHERE t.building_id = a.building_id AND t.id = ANY (a.tenant_ids))
           AS tenant_refs,
       EXISTS (SELECT 1 FROM leases l JOIN buildings b ON b.id = l.building_id
                WHERE l.building_id = a.building_id AND l.zone_id = a.zone_id
                  AND l.tenant_id = (SELECT api_tenant())
                  AND l.valid_from <= (now() AT TIME ZONE b.timezone)::date
                  AND (l.valid_to IS NULL OR (now() AT TIME ZONE b.timezone)::date < l.valid_to))
           AS own_zone
  FROM alerts a
"""


def alert_view(row: dict[str, Any], viewer: Principal) -> AlertView:
    """A row of ``alerts`` as the wire type, redacted for a tenant.

    A tenant sees no other tenant's id; an alert about a zone it does not lease (a
    neighbour's fire that puts it in the evacuation zone) shows only the floor, the rule and
    the advice (:func:`api.live.redact_for_tenant`), as on the WebSocket.
    """
    view = _alert_view(row, viewer)
    if viewer.is_operator or viewer.tenant_id is None:
        return view
    own = {row["zone_id"]} if row.get("own_zone") and row["zone_id"] else set()
    data = redact_for_tenant(view.model_dump(mode="json"), viewer.tenant_id, own)
    return AlertView.model_validate(data)


def _alert_view(row: dict[str, Any], viewer: Principal) -> AlertView:
    tenants = list(row["tenant_ids"])
    if not viewer.is_operator:
        tenants = [t for t in tenants if t == viewer.tenant_id]
    evacuation = None
    if row.get("evacuation_floors") and row["floor"] is not None:
        evacuation = Evacuation(
            fire_floor=row["floor"],
            floors=list(row["evacuation_floors"]),
            tenants=[TenantRef(**t) for t in row["tenant_refs"]],  # RLS: a tenant, only itself
        )
    return AlertView(
        id=row["id"],
        building=row["building_id"],
        rule=row["rule"],
        subject=row["subject"],
        floor=row["floor"],
        zone=row["zone_id"],
        sensor=row["sensor_id"],
        tenants=tenants,
        severity=row["severity"],
        state=row["state"],
        latched=row["latched"],
        condition_active=row["condition_active"],
        shelved_until=row["shelved_until"],
        message=row["message"],
        value=row["value"],
        limit=row["limit_value"],
        unit=row["unit"],
        opened_at=row["opened_at"],
        acknowledged_at=row["acknowledged_at"],
        acknowledged_by=row["acknowledged_by"],
        resolved_at=row["resolved_at"],
        resolved_by=row["resolved_by"],
        evacuation=evacuation,
    )


async def open_alerts(
    conn: Connection, viewer: Principal, building: str, floor: int
) -> list[AlertView]:
    cur = await conn.execute(
        _SELECT + " WHERE a.building_id = %s AND a.floor = %s AND a.state <> 'resolved'"
        " ORDER BY a.opened_at DESC, a.id DESC LIMIT 500",
        (building, floor),
    )
    return [alert_view(r, viewer) for r in await cur.fetchall()]


@router.get(
    "/alerts",
    response_model=list[AlertView],
    responses=responses(),
    summary="Alerts you may see, newest first",
)
async def list_alerts(
    s: ScopeDep,
    *,
    state: Annotated[AlertState | None, Query(description="open, acknowledged, resolved")] = None,
    severity: Annotated[Severity | None, Query()] = None,
    floor: Annotated[int | None, Query(ge=-5, le=200)] = None,
    building: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[AlertView]:
    where = ["true"]
    params: dict[str, Any] = {"limit": limit}
    for column, value in (("state", state), ("severity", severity), ("floor", floor)):
        if value is not None:
            where.append(f"a.{column} = %({column})s")  # column: one of three literals
            params[column] = value.value if isinstance(value, AlertState | Severity) else value
    if building is not None:
        where.append("a.building_id = %(building)s")
        params["building"] = building
    query = _SELECT + f" WHERE {' AND '.join(where)} ORDER BY a.opened_at DESC, a.id DESC"
    cur = await s.conn.execute(query + " LIMIT %(limit)s", params)
    return [alert_view(r, s.principal) for r in await cur.fetchall()]


class CommandBody(_Strict):
    note: str | None = Field(default=None, max_length=500)


class ShelveBody(_Strict):
    until: AwareDatetime | None = Field(default=None, description="shelved until (with offset)")
    duration_s: float | None = Field(default=None, gt=0, le=7 * 86_400)
    note: str | None = Field(default=None, max_length=500)


OptBody = Annotated[CommandBody | None, Body()]
AlertId = Annotated[int, Path(ge=1, le=2**63 - 1, description="alert id")]
_ACTION_RESPONSES = responses(400, 403, 404, 409, 503, 504)


async def _act(
    request: Request,
    s: Scope,
    alert_id: int,
    action: CommandAction,
    *,
    note: str | None,
    shelve_until: datetime | None = None,
) -> AlertView:
    cur = await s.conn.execute(_SELECT + " WHERE a.id = %s", (alert_id,))
    row = await cur.fetchone()
    if row is None:
        raise not_found(f"alert {alert_id}")
    p = s.principal
    if not p.is_operator and (action is not CommandAction.ACK or row["rule"] in FIRE_RULES):
        raise HTTPException(403, f"only operators may {action.value} this alert")
    cur = await s.conn.execute(
        "INSERT INTO alert_commands (alert_id, action, actor, shelve_until, note)"
        " VALUES (%s, %s, %s, %s, %s) RETURNING id",
        (alert_id, action.value, p.actor, shelve_until, note),
    )
    command = await cur.fetchone()
    assert command is not None
    await s.audit(f"alert.{action.value}", f"alert:{alert_id}", "requested", note)
    await s.commit()
    timeout = request.app.state.settings.api_command_timeout_s
    deadline = time.monotonic() + timeout
    while True:
        cur = await s.conn.execute(
            "SELECT result, detail FROM alert_commands WHERE id = %s AND processed_at IS NOT NULL",
            (command["id"],),
        )
        done = await cur.fetchone()
        await s.commit()
        if done is not None:
            break
        if time.monotonic() >= deadline:
            raise HTTPException(
                504, f"the alert engine did not answer within {timeout:g} s; command queued"
            )
        await asyncio.sleep(0.05)
    if done["result"] != "done":
        detail = done["detail"] or "refused by the alert engine"
        if not p.is_operator and p.tenant_id is not None:
            detail = redact_actors(detail, p.tenant_id)  # "already acknowledged by ..."
        raise HTTPException(409, detail)
    cur = await s.conn.execute(_SELECT + " WHERE a.id = %s", (alert_id,))
    row = await cur.fetchone()
    if row is None:
        raise not_found(f"alert {alert_id}")
    return alert_view(row, p)


@router.post(
    "/alerts/{alert_id}/ack",
    response_model=AlertView,
    responses=_ACTION_RESPONSES,
    summary="Acknowledge an alert (tenants: non-fire alerts of their space)",
)
async def ack(
    request: Request,
    s: ScopeDep,
    alert_id: AlertId,
    body: OptBody = None,
) -> AlertView:
    return await _act(request, s, alert_id, CommandAction.ACK, note=body.note if body else None)


@router.post(
    "/alerts/{alert_id}/shelve",
    response_model=AlertView,
    responses=_ACTION_RESPONSES,
    summary="Shelve an alert until a time (operators; never fire alarms)",
)
async def shelve(request: Request, s: ScopeDep, alert_id: AlertId, body: ShelveBody) -> AlertView:
    until = body.until
    if until is None:
        row = await (await s.conn.execute("SELECT now() AS now")).fetchone()
        assert row is not None
        until = row["now"] + timedelta(seconds=body.duration_s or 3600.0)
    return await _act(
        request, s, alert_id, CommandAction.SHELVE, note=body.note, shelve_until=until
    )


@router.post(
    "/alerts/{alert_id}/unshelve",
    response_model=AlertView,
    responses=_ACTION_RESPONSES,
    summary="Return a shelved alert to service (operators)",
)
async def unshelve(
    request: Request,
    s: ScopeDep,
    alert_id: AlertId,
    body: OptBody = None,
) -> AlertView:
    return await _act(
        request, s, alert_id, CommandAction.UNSHELVE, note=body.note if body else None
    )


@router.post(
    "/alerts/{alert_id}/reset",
    response_model=AlertView,
    responses=_ACTION_RESPONSES,
    summary="Reset a latched (fire) alert whose condition cleared (operators)",
)
async def reset(
    request: Request,
    s: ScopeDep,
    alert_id: AlertId,
    body: OptBody = None,
) -> AlertView:
    return await _act(request, s, alert_id, CommandAction.RESET, note=body.note if body else None)
