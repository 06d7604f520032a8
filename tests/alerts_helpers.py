"""Helpers of the alert-engine tests: buildings, a pure-engine driver, MQTT and DB plumbing."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from alerts.clock import ManualClock
from alerts.engine import BuildingEngine
from alerts.lifecycle import Change
from alerts.settings import AlertSettings
from core.alert_config import AlertConfig
from core.building import Building
from core.building_file import load_building
from core.building_store import apply_building
from core.payload import Reading, encode_telemetry
from core.topics import telemetry_topic
from tests.conftest import REF_TOWER, MqttTarget

T0 = datetime(2026, 11, 22, 8, 0, 0, tzinfo=UTC)


@functools.cache
def _ref_tower() -> Building:
    return load_building(REF_TOWER)


def ref_tower(**rules: Any) -> Building:
    """The reference building with some alert parameters replaced."""
    building = _ref_tower()
    cfg = AlertConfig.model_validate({**building.alerts.model_dump(), **rules})
    return building.model_copy(update={"alerts": cfg})


class Driver:
    """Feeds a pure BuildingEngine a timeline and keeps every change it made."""

    def __init__(self, building: Building, start: datetime = T0) -> None:
        self.now = start
        self.engine = BuildingEngine(building, start)
        self.changes: list[Change] = []
        self._next_id = 1

    def _collect(self) -> list[Change]:
        fx = self.engine.drain()
        for change in fx.changes:
            if change.alert.id is None:
                change.alert.id = self._next_id
                self._next_id += 1
                self.engine.stored(change.alert)
            change.snapshot.id = change.alert.id
        self.changes.extend(fx.changes)
        return fx.changes

    def reading(self, sensor: str, value: float, at: datetime | None = None) -> list[Change]:
        self.engine.on_reading(sensor, at or self.now, value, self.now)
        return self._collect()

    def advance(self, seconds: float) -> list[Change]:
        self.now += timedelta(seconds=seconds)
        self.engine.tick(self.now)
        return self._collect()

    def kinds(self, rule: str | None = None) -> list[tuple[str, str, str]]:
        return [
            (c.kind.value, c.alert.rule.value, c.snapshot.severity.value)
            for c in self.changes
            if rule is None or c.alert.rule.value == rule
        ]


# ----- real services ----------------------------------------------------------------------


def store_building(db_url: str, building: Building) -> None:
    with psycopg.connect(db_url) as conn:
        apply_building(conn, building)
        conn.execute(
            "UPDATE buildings SET alert_config = %s WHERE id = %s",
            (json.dumps(building.alerts.model_dump()), building.id),
        )
        conn.commit()


def settings_for(db_url: str, mqtt: MqttTarget, **extra: Any) -> AlertSettings:
    values: dict[str, Any] = {
        "database_url": db_url,
        "mqtt_url": mqtt.url,
        "topic_prefix": mqtt.prefix,
        "tick_s": 0.05,
        "command_poll_s": 0.5,
        "session_expiry_s": 60,
    }
    values.update(extra)
    return AlertSettings.model_validate(values)


class Mqtt:
    """A paho client that publishes telemetry and records what arrives on its subscriptions."""

    def __init__(self, target: MqttTarget, building: str = "ref-tower") -> None:
        self.target, self.building = target, building
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect(target.address.host, target.address.port)
        self.client.loop_start()
        self.seq = 0

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        self.messages.append((msg.topic, json.loads(msg.payload)))

    def subscribe(self, topic: str) -> None:
        info = self.client.subscribe(self.target.prefix + topic, qos=1)
        assert info[0] == 0
        time.sleep(0.05)

    def telemetry(self, floor: int, readings: list[tuple[str, datetime, float]]) -> None:
        self.seq += 1
        body = encode_telemetry("test-gw", self.seq, [Reading(s, ts, v) for s, ts, v in readings])
        topic = telemetry_topic(self.building, floor, self.target.prefix)
        self.client.publish(topic, body, qos=1).wait_for_publish(5)

    def publish(self, topic: str, body: dict[str, Any], retain: bool = False) -> None:
        self.client.publish(self.target.prefix + topic, json.dumps(body), qos=1, retain=retain)

    def events(self) -> list[dict[str, Any]]:
        return [m for t, m in self.messages if t.endswith("/alerts")]

    def states(self, floor: int) -> list[dict[str, Any]]:
        return [m for t, m in self.messages if t.endswith(f"/{floor}/state")]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@contextlib.contextmanager
def mqtt_client(target: MqttTarget) -> Iterator[Mqtt]:
    client = Mqtt(target)
    try:
        yield client
    finally:
        client.close()


@contextlib.asynccontextmanager
async def running_engine(
    settings: AlertSettings, clock: ManualClock, m: Mqtt | None = None
) -> AsyncIterator[None]:
    """Run the engine in this loop; with ``m``, wait until it has subscribed."""
    from alerts.service import run_alert_engine

    stop = asyncio.Event()
    if m is not None:
        m.subscribe("upstairs/v1/ref-tower/1/state")
        before = len(m.messages)
    task = asyncio.create_task(run_alert_engine(settings, stop=stop, clock=clock))
    try:
        if m is not None:
            await wait_for(
                lambda: any(t.endswith("/1/state") for t, _ in m.messages[before:]),
                what="the engine to start",
            )
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def wait_for(predicate: Callable[[], Any], limit_s: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + limit_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.02)


def rows(db_url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(query, params).fetchall()


MARKER_DETECTOR = "ref-f07-fire-z4"


async def marker(m: Mqtt, clock: ManualClock, value: float = 2) -> None:
    """Publish a detector fault and wait for its event: everything sent before is processed."""
    before = len(m.events())
    clock.advance(0.001)
    m.telemetry(7, [(MARKER_DETECTOR, clock.now(), value)])
    await wait_for(
        lambda: any(e["alert"]["sensor"] == MARKER_DETECTOR for e in m.events()[before:]),
        what="the marker event",
    )


def command(db_url: str, alert_id: int, action: str, actor: str = "op", **extra: Any) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "INSERT INTO alert_commands (alert_id, action, actor, shelve_until)"
            " VALUES (%s, %s, %s, %s) RETURNING id",
            (alert_id, action, actor, extra.get("shelve_until")),
        ).fetchone()
        conn.commit()
    assert row is not None
    return int(row[0])


async def command_result(db_url: str, command_id: int, limit_s: float = 5.0) -> tuple[str, str]:
    def done() -> tuple[str, str] | None:
        found = rows(
            db_url,
            "SELECT result, detail FROM alert_commands WHERE id = %s AND processed_at IS NOT NULL",
            command_id,
        )
        return (found[0][0], found[0][1]) if found else None

    result: tuple[str, str] = await wait_for(done, limit_s, f"command {command_id}")
    return result
