"""Database I/O of the alert engine: load state at start, persist effects, commands.

Everything an engine decides is written in one transaction per batch (alerts, events, the
conditions with their pending delays, the webhook outbox, the processed command) before it
is published, so a restart resumes exactly where the database says.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from alerts.conditions import Condition
from alerts.engine import BuildingEngine, Effects, Key
from alerts.lifecycle import Alert
from core.alert_config import AlertConfig
from core.alert_types import (
    AlertEvent,
    AlertState,
    CommandAction,
    CommandResult,
    Rule,
    Severity,
)
from core.building import Building
from core.building_store import list_buildings, load_building_from_db

AConn = psycopg.AsyncConnection[Any]


def load_buildings(conninfo: str, wanted: Sequence[str]) -> list[Building]:
    """The buildings this instance owns (all when ``wanted`` is empty), with their rules."""
    out = []
    with psycopg.connect(conninfo) as conn:
        ids = list(wanted) or list_buildings(conn)
        for building_id in ids:
            building = load_building_from_db(conn, building_id)
            row = conn.execute(
                "SELECT alert_config FROM buildings WHERE id = %s", (building_id,)
            ).fetchone()
            raw = row[0] if row else None
            if raw:  # else the defaults of AlertConfig
                building = building.model_copy(update={"alerts": AlertConfig.model_validate(raw)})
            out.append(building)
    return out


_ALERT_COLS = (
    "id, rule, subject, floor, zone_id, sensor_id, tenant_ids, severity, state, latched,"
    " condition_active, shelved_until, message, value, limit_value, unit, opened_at,"
    " acknowledged_at, acknowledged_by, resolved_at, resolved_by, escalated_at"
)


async def load_state(
    conn: AConn, engine: BuildingEngine, now: datetime
) -> tuple[list[Alert], dict[Key, Condition], list[datetime]]:
    b = engine.id
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(
        f"SELECT {_ALERT_COLS} FROM alerts WHERE building_id = %s AND state <> 'resolved'", (b,)
    )
    alerts = []
    for r in await cur.fetchall():
        alert = Alert(
            b, Rule(r[1]), r[2], Severity(r[7]), r[16], r[12], r[3], r[4], r[5], tuple(r[6]),
            r[9], r[10], r[13], r[14], r[15], AlertState(r[8]), r[11], r[17], r[18], r[19],
            r[20], r[21], id=r[0],
        )  # fmt: skip
        if alert.rule is Rule.FIRE and alert.floor is not None and alert.floor in engine.floors:
            alert.evacuation = engine.evacuation(alert.floor)
        alerts.append(alert)
    await cur.execute(
        "SELECT rule, subject, level, pending_dir, pending_since FROM alert_conditions"
        " WHERE building_id = %s",
        (b,),
    )
    conditions = {
        (Rule(r[0]), r[1]): Condition(Severity(r[2]) if r[2] else None, r[3], r[4])
        for r in await cur.fetchall()
    }
    window = timedelta(seconds=engine.cfg.flood.window_s)
    await cur.execute(
        "SELECT opened_at FROM alerts WHERE building_id = %s AND rule <> 'flood'"
        " AND opened_at > %s",
        (b, now - window),
    )
    opened = [r[0] for r in await cur.fetchall()]
    return alerts, conditions, opened


async def latest_readings(conn: AConn, building_id: str) -> list[tuple[str, datetime, float]]:
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(
        "SELECT l.sensor_id, l.ts, l.value FROM sensor_latest l"
        " JOIN sensors s ON s.id = l.sensor_id WHERE s.building_id = %s AND s.active",
        (building_id,),
    )
    return [(r[0], r[1], r[2]) for r in await cur.fetchall()]


def _alert_params(a: Alert) -> dict[str, Any]:
    return {
        "building": a.building, "rule": a.rule.value, "subject": a.subject, "floor": a.floor,
        "zone": a.zone, "sensor": a.sensor, "tenants": list(a.tenants),
        "severity": a.severity.value, "state": a.state.value, "latched": a.latched,
        "active": a.condition_active, "shelved": a.shelved_until, "message": a.message,
        "value": a.value, "limit": a.limit, "unit": a.unit, "opened": a.opened_at,
        "acked_at": a.acknowledged_at, "acked_by": a.acknowledged_by,
        "resolved_at": a.resolved_at, "resolved_by": a.resolved_by,
        "escalated": a.escalated_at,
        "evac": a.evacuation.floors if a.evacuation is not None else [],
    }  # fmt: skip


_INSERT_ALERT = """
INSERT INTO alerts (building_id, rule, subject, floor, zone_id, sensor_id, tenant_ids, severity,
    state, latched, condition_active, shelved_until, message, value, limit_value, unit,
    opened_at, acknowledged_at, acknowledged_by, resolved_at, resolved_by, escalated_at,
    evacuation_floors)
VALUES (%(building)s, %(rule)s, %(subject)s, %(floor)s, %(zone)s, %(sensor)s, %(tenants)s,
    %(severity)s, %(state)s, %(latched)s, %(active)s, %(shelved)s, %(message)s, %(value)s,
    %(limit)s, %(unit)s, %(opened)s, %(acked_at)s, %(acked_by)s, %(resolved_at)s,
    %(resolved_by)s, %(escalated)s, %(evac)s)
RETURNING id
"""

_UPDATE_ALERT = """
UPDATE alerts SET severity = %(severity)s, state = %(state)s,
    condition_active = %(active)s, shelved_until = %(shelved)s, message = %(message)s,
    value = %(value)s, limit_value = %(limit)s, acknowledged_at = %(acked_at)s,
    acknowledged_by = %(acked_by)s, resolved_at = %(resolved_at)s,
    resolved_by = %(resolved_by)s, escalated_at = %(escalated)s,
    evacuation_floors = %(evac)s, updated_at = now()
WHERE id = %(id)s
"""


@dataclass(frozen=True, slots=True)
class CommandRow:
    id: int
    alert_id: int
    building_id: str
    action: CommandAction
    actor: str
    shelve_until: datetime | None


async def persist(
    conn: AConn,
    engine: BuildingEngine,
    fx: Effects,
    *,
    webhook_urls: Sequence[str],
    now: datetime,
    command: tuple[int, CommandResult, str] | None = None,
) -> list[AlertEvent]:
    """Write ``fx`` (and a command's outcome) in one transaction; return the events."""
    events: list[AlertEvent] = []
    async with conn.transaction():
        cur = conn.cursor(row_factory=tuple_row)
        touched: dict[int, Alert] = {}
        for change in fx.changes:
            touched.setdefault(id(change.alert), change.alert)
        for alert in touched.values():
            params = _alert_params(alert)
            if alert.id is None:
                await cur.execute(_INSERT_ALERT, params)
                row = await cur.fetchone()
                assert row is not None
                alert.id = int(row[0])
            else:
                await cur.execute(_UPDATE_ALERT, {**params, "id": alert.id})
        for change in fx.changes:
            change.snapshot.id = change.alert.id
            await cur.execute(
                "INSERT INTO alert_events (alert_id, at, kind, actor, severity, detail)"
                " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                (
                    change.alert.id,
                    change.at,
                    change.kind.value,
                    change.actor,
                    change.snapshot.severity.value,
                    change.detail,
                ),
            )
            row = await cur.fetchone()
            assert row is not None
            change.event_id = int(row[0])
            events.append(
                AlertEvent(
                    event_id=change.event_id,
                    kind=change.kind,
                    at=change.at,
                    actor=change.actor,
                    detail=change.detail,
                    alert=change.snapshot.view(),
                )
            )
        for (rule, subject), cond in fx.conditions.items():
            if cond is None:
                await cur.execute(
                    "DELETE FROM alert_conditions WHERE building_id = %s AND rule = %s"
                    " AND subject = %s",
                    (engine.id, rule.value, subject),
                )
            else:
                await cur.execute(
                    "INSERT INTO alert_conditions (building_id, rule, subject, level, pending_dir,"
                    " pending_since) VALUES (%s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (building_id, rule, subject) DO UPDATE SET"
                    " level = excluded.level, pending_dir = excluded.pending_dir,"
                    " pending_since = excluded.pending_since,"
                    " updated_at = now()",
                    (
                        engine.id,
                        rule.value,
                        subject,
                        cond.level.value if cond.level else None,
                        cond.pending_dir,
                        cond.pending_since,
                    ),
                )
        if webhook_urls and events:
            await cur.executemany(
                "INSERT INTO alert_webhook_outbox (building_id, event_id, url, body,"
                " next_attempt_at) VALUES (%s, %s, %s, %s, %s)",
                [
                    (engine.id, ev.event_id, url, event_json(ev), now)
                    for ev in events
                    for url in webhook_urls
                ],
            )
        if command is not None:
            await cur.execute(
                "UPDATE alert_commands SET processed_at = now(), result = %s, detail = %s"
                " WHERE id = %s",
                (command[1].value, command[2], command[0]),
            )
    for alert in touched.values():
        engine.stored(alert)
    return events


async def pending_commands(conn: AConn, buildings: Sequence[str]) -> list[CommandRow]:
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(
        "SELECT c.id, c.alert_id, a.building_id, c.action, c.actor, c.shelve_until"
        " FROM alert_commands c JOIN alerts a ON a.id = c.alert_id"
        " WHERE c.processed_at IS NULL AND a.building_id = ANY(%s) ORDER BY c.id LIMIT 200",
        (list(buildings),),
    )
    return [
        CommandRow(r[0], r[1], r[2], CommandAction(r[3]), r[4], r[5]) for r in await cur.fetchall()
    ]


def event_json(event: AlertEvent) -> bytes:
    return json.dumps(event.model_dump(mode="json"), separators=(",", ":")).encode()
