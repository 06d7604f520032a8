"""Writes of the alert engine: one pipelined transaction per batch of effects.

Everything an engine decided in a batch (alerts, events, the conditions with their pending
delays, the MQTT and webhook outboxes, a processed command) is written in one transaction
before anything is published, so a restart resumes exactly where the database says and a
published event always exists in the database.

Alert and event ids are reserved ahead from their sequences (:class:`IdPool`), so that no
statement waits for the answer of another: the whole batch is sent in pipeline mode and
costs one round trip plus the commit. Reserved ids are increasing, so ``event_id`` still
grows with time per building; an id reserved by an engine that stopped is never used (a gap).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from alerts.engine import BuildingEngine, Effects
from alerts.lifecycle import Alert, Change
from core.alert_types import AlertEvent, CommandResult

AConn = psycopg.AsyncConnection[Any]

__all__ = ["IdPool", "Ids", "event_json", "persist"]


class IdPool:
    """Ids reserved from the sequence of ``table.id``, handed out in increasing order."""

    def __init__(self, table: str, block: int = 256) -> None:
        self.table, self.block = table, block
        self.ids: deque[int] = deque()

    async def reserve(self, conn: AConn, n: int) -> None:
        if len(self.ids) >= n:
            return
        cur = conn.cursor(row_factory=tuple_row)
        await cur.execute(
            sql.SQL("SELECT nextval(pg_get_serial_sequence({}, 'id')) FROM generate_series(1, %s)")
            .format(sql.Literal(self.table)),
            (max(n, self.block),),
        )  # fmt: skip
        self.ids.extend(sorted(int(r[0]) for r in await cur.fetchall()))

    def take(self) -> int:
        return self.ids.popleft()

    def __len__(self) -> int:
        return len(self.ids)


class Ids:
    def __init__(self) -> None:
        self.alerts = IdPool("alerts")
        self.events = IdPool("alert_events")

    async def top_up(self, conn: AConn, n: int = 64) -> None:
        """Keep ``n`` ids of each at hand, so that an early publish never waits for one."""
        await self.alerts.reserve(conn, n)
        await self.events.reserve(conn, n)

    def assign(self, change: Change) -> bool:
        """Give ``change`` (and its alert, if new) ids from the reserve; False if too few."""
        alert = change.alert
        if change.event_id is not None:
            return True
        if len(self.events) < 1 or (alert.id is None and len(self.alerts) < 1):
            return False
        if alert.id is None:
            alert.id = self.alerts.take()
        change.event_id = self.events.take()
        change.snapshot.id = alert.id
        return True


def build_event(change: Change) -> tuple[AlertEvent, bytes]:
    """The wire event of a change that has its ids (built once)."""
    assert change.event_id is not None
    if change.wire is not None:
        return change.wire
    event = AlertEvent(
        event_id=change.event_id,
        kind=change.kind,
        at=change.at,
        actor=change.actor,
        detail=change.detail,
        alert=change.snapshot.view(),
    )
    change.wire = (event, event_json(event))
    return change.wire


def event_json(event: AlertEvent) -> bytes:
    return event.model_dump_json().encode()


def _alert_params(a: Alert) -> dict[str, Any]:
    return {
        "id": a.id, "building": a.building, "rule": a.rule.value, "subject": a.subject,
        "floor": a.floor, "zone": a.zone, "sensor": a.sensor, "tenants": list(a.tenants),
        "severity": a.severity.value, "state": a.state.value, "latched": a.latched,
        "active": a.condition_active, "shelved": a.shelved_until, "message": a.message,
        "value": a.value, "limit": a.limit, "unit": a.unit, "opened": a.opened_at,
        "acked_at": a.acknowledged_at, "acked_by": a.acknowledged_by,
        "resolved_at": a.resolved_at, "resolved_by": a.resolved_by,
        "escalated": a.escalated_at,
        "evac": a.evacuation.floors if a.evacuation is not None else [],
    }  # fmt: skip


_INSERT_ALERT = """
INSERT INTO alerts (id, building_id, rule, subject, floor, zone_id, sensor_id, tenant_ids,
    severity, state, latched, condition_active, shelved_until, message, value, limit_value,
    unit, opened_at, acknowledged_at, acknowledged_by, resolved_at, resolved_by, escalated_at,
    evacuation_floors)
VALUES (%(id)s, %(building)s, %(rule)s, %(subject)s, %(floor)s, %(zone)s, %(sensor)s,
    %(tenants)s, %(severity)s, %(state)s, %(latched)s, %(active)s, %(shelved)s, %(message)s,
    %(value)s, %(limit)s, %(unit)s, %(opened)s, %(acked_at)s, %(acked_by)s, %(resolved_at)s,
    %(resolved_by)s, %(escalated)s, %(evac)s)
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

_INSERT_EVENT = (
    "INSERT INTO alert_events (id, alert_id, at, kind, actor, severity, detail)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
_UPSERT_CONDITION = (
    "INSERT INTO alert_conditions (building_id, rule, subject, level, pending_dir,"
    " pending_since) VALUES (%s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (building_id, rule, subject) DO UPDATE SET level = excluded.level,"
    " pending_dir = excluded.pending_dir, pending_since = excluded.pending_since,"
    " updated_at = now()"
)
_DELETE_CONDITION = (
    "DELETE FROM alert_conditions WHERE building_id = %s AND rule = %s AND subject = %s"
)
_MQTT_OUTBOX = "INSERT INTO alert_mqtt_outbox (event_id, building_id, body) VALUES (%s, %s, %s)"
_WEBHOOK_OUTBOX = (
    "INSERT INTO alert_webhook_outbox (building_id, event_id, url, body, next_attempt_at)"
    " VALUES (%s, %s, %s, %s, %s)"
)


async def persist(
    conn: AConn,
    ids: Ids,
    engine: BuildingEngine,
    fx: Effects,
    *,
    webhook_urls: Sequence[str],
    now: datetime,
    command: tuple[int, CommandResult, str] | None = None,
) -> list[tuple[AlertEvent, bytes]]:
    """Write ``fx`` (and a command's outcome) in one transaction; return the events.

    A change that already has its ids (published early, see :mod:`alerts.runtime`) keeps
    them. On an error the alerts that got a new id here have it taken back: the caller must
    give up this engine state (the service restarts from the database).
    """
    touched: dict[int, Alert] = {}
    for change in fx.changes:
        touched.setdefault(id(change.alert), change.alert)
    new = [a for a in touched.values() if not a.stored]
    fresh = [a for a in new if a.id is None]
    await ids.alerts.reserve(conn, len(fresh))
    await ids.events.reserve(conn, sum(1 for c in fx.changes if c.event_id is None))
    for change in fx.changes:
        assigned = ids.assign(change)
        assert assigned
    events: list[tuple[AlertEvent, bytes]] = []
    event_rows = []
    for change in fx.changes:
        event, body = build_event(change)
        events.append((event, body))
        event_rows.append((
            event.event_id, change.alert.id, change.at, change.kind.value, change.actor,
            change.snapshot.severity.value, change.detail,
        ))  # fmt: skip
    upserts, deletes = [], []
    for (rule, subject), cond in fx.conditions.items():
        if cond is None:
            deletes.append((engine.id, rule.value, subject))
        else:
            level = cond.level.value if cond.level else None
            upserts.append(
                (engine.id, rule.value, subject, level, cond.pending_dir, cond.pending_since)
            )
    new_ids = {id(a) for a in new}
    try:
        async with conn.pipeline(), conn.transaction():
            cur = conn.cursor()
            if new:
                await cur.executemany(_INSERT_ALERT, [_alert_params(a) for a in new])
            old = [_alert_params(a) for a in touched.values() if id(a) not in new_ids]
            if old:
                await cur.executemany(_UPDATE_ALERT, old)
            if event_rows:
                await cur.executemany(_INSERT_EVENT, event_rows)
                await cur.executemany(
                    _MQTT_OUTBOX, [(ev.event_id, engine.id, body) for ev, body in events]
                )
            if deletes:
                await cur.executemany(_DELETE_CONDITION, deletes)
            if upserts:
                await cur.executemany(_UPSERT_CONDITION, upserts)
            if webhook_urls and events:
                await cur.executemany(
                    _WEBHOOK_OUTBOX,
                    [(engine.id, ev.event_id, url, body, now) for ev, body in events
                     for url in webhook_urls],
                )  # fmt: skip
            if command is not None:
                await cur.execute(
                    "UPDATE alert_commands SET processed_at = now(), result = %s, detail = %s"
                    " WHERE id = %s",
                    (command[1].value, command[2], command[0]),
                )
    except BaseException:
        for alert in fresh:
            alert.id = None
        raise
    for alert in new:
        alert.stored = True
    for alert in touched.values():
        engine.stored(alert)
    return events


async def outbox_done(conn: AConn, event_ids: Sequence[int]) -> None:
    """The broker acknowledged these events: they leave the MQTT outbox."""
    if event_ids:
        await conn.execute(
            "DELETE FROM alert_mqtt_outbox WHERE event_id = ANY(%s)", (list(event_ids),)
        )
