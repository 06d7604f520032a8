"""Database reads of the alert engine: buildings, state at start, commands, the MQTT outbox.

Writes (one transaction per batch) are in :mod:`alerts.persist`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from alerts.conditions import Condition
from alerts.engine import BuildingEngine, Key
from alerts.lifecycle import Alert
from core.alert_config import AlertConfig
from core.alert_types import (
    AlertState,
    CommandAction,
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
            r[20], r[21], id=r[0], stored=True,
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


@dataclass(frozen=True, slots=True)
class CommandRow:
    id: int
    alert_id: int
    building_id: str
    action: CommandAction
    actor: str
    shelve_until: datetime | None


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


async def building_versions(conn: AConn, buildings: Sequence[str]) -> dict[str, str]:
    """A token per building that changes whenever its file is re-applied (or its rules)."""
    cur = conn.cursor(row_factory=tuple_row)
    if buildings:
        await cur.execute(_VERSIONS + " WHERE id = ANY(%s)", (list(buildings),))
    else:
        await cur.execute(_VERSIONS)
    return {r[0]: r[1] for r in await cur.fetchall()}


_VERSIONS = "SELECT id, updated_at::text || ':' || md5(alert_config::text) FROM buildings"


async def mqtt_outbox(conn: AConn, buildings: Sequence[str]) -> list[tuple[int, str, bytes]]:
    """Events committed but not yet acknowledged by the broker: (event id, building, body)."""
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(
        "SELECT event_id, building_id, body FROM alert_mqtt_outbox"
        " WHERE building_id = ANY(%s) ORDER BY event_id",
        (list(buildings),),
    )
    return [(int(r[0]), r[1], bytes(r[2])) for r in await cur.fetchall()]
