"""One connection attempt of the alert engine: MQTT in, engines, database, MQTT out.

Incoming messages are taken in batches (whatever is queued, up to ``batch_max``): each is
fed to its building's engine, then every engine that has effects persists them in one
pipelined transaction, then its events are published (QoS 1), then the messages are
acknowledged. A reading that violates nothing costs no database round trip at all.

Published events stay in the ``alert_mqtt_outbox`` table until the broker acknowledged them;
an attempt starts by publishing what is left there (see ``docs/alerts.md``).

Fire events (rules ``fire`` and ``fire_fault``) are published *before* their commit, as soon
as the message that caused them is evaluated, with ids taken from the reserve
(:class:`alerts.persist.Ids`): a fire alarm does not wait for the database. The commit that
follows writes them (and their outbox rows) like any other event, and the triggering message
is acknowledged only after it. Should the engine die in between, the broker redelivers that
message and the restarted engine announces the alarm again, so an alarm is never lost; the
first announcement then names an alert id the database never got (documented for consumers).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

import aiomqtt
import psycopg
from paho.mqtt.client import MQTTMessageInfo
from pydantic import ValidationError

from alerts import persist, store
from alerts.clock import Clock
from alerts.engine import BuildingEngine
from alerts.floor_state import due_floors, floor_state_json
from alerts.intake import feed_telemetry
from alerts.settings import AlertSettings
from alerts.webhooks import WebhookSender
from core.aio import raise_if_cancelling
from core.alert_types import FIRE_RULES, CommandResult
from core.building import Building
from core.payload import GatewayStatus
from core.topics import Channel, TopicError, alerts_topic, parse_topic, state_topic, subscription

logger = logging.getLogger(__name__)


class EngineStateLost(RuntimeError):
    """A batch could not be stored: the in-memory state is no longer the database's."""


async def open_engine(
    conn: psycopg.AsyncConnection[Any], building: Building, started: datetime
) -> BuildingEngine:
    """An engine for ``building`` with its open alerts, conditions and latest values."""
    engine = BuildingEngine(building, started)
    alerts, conditions, opened = await store.load_state(conn, engine, started)
    engine.restore(alerts, conditions)
    engine.restore_opened(opened)
    for sensor_id, ts, value in await store.latest_readings(conn, building.id):
        engine.seed(sensor_id, ts, value, started)
    logger.info(
        "building %s: %d open alerts, %d conditions restored",
        building.id, len(alerts), len(conditions),
    )  # fmt: skip
    return engine


class Runtime:
    def __init__(
        self,
        settings: AlertSettings,
        *,
        clock: Clock,
        engines: dict[str, BuildingEngine],
        versions: dict[str, str],
        conn: psycopg.AsyncConnection[Any],
        side: psycopg.AsyncConnection[Any],
        client: aiomqtt.Client,
        sender: WebhookSender | None,
    ) -> None:
        self.s, self.clock, self.engines, self.versions = settings, clock, engines, versions
        # ``conn`` carries the batches and is used under ``lock`` only (a transaction may be
        # open on it); ``side`` runs single statements off the lock: polls, outbox cleanup.
        self.conn, self.side, self.client, self.sender = conn, side, client, sender
        self.lock = asyncio.Lock()
        self.prefix = settings.topic_prefix
        self.ids = persist.Ids()
        self.unacked: list[tuple[int, MQTTMessageInfo]] = []
        self.early: set[int] = set()  # event ids published before their commit

    # ----- output -------------------------------------------------------------------------
    async def commit(
        self,
        engine: BuildingEngine,
        now: datetime,
        command: tuple[int, CommandResult, str] | None = None,
    ) -> None:
        """Persist what ``engine`` decided, then publish events and urgent floor states."""
        fx = engine.drain()
        if fx or command is not None:
            try:
                events = await persist.persist(
                    self.conn, self.ids, engine, fx,
                    webhook_urls=self.s.webhook_urls, now=now, command=command,
                )  # fmt: skip
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                raise EngineStateLost(f"building {engine.id}: batch not stored: {exc}") from exc
            topic = alerts_topic(engine.id, self.prefix)
            late = [(ev, body) for ev, body in events if ev.event_id not in self.early]
            self.early.difference_update(ev.event_id for ev, _ in events)
            for event, body in late:
                self.unacked.append((event.event_id, self._publish(topic, body, retain=False)))
            if late:
                self.client._client.loop_write()  # out now, before the floor states
            if events and self.sender is not None:
                self.sender.wake.set()
        if fx.urgent_floors:
            self.publish_states(engine, now, fx.urgent_floors)

    def publish_early(self, engine: BuildingEngine) -> None:
        """Publish the fire events of ``engine`` that are not out yet, before the commit."""
        sent = False
        topic = alerts_topic(engine.id, self.prefix)
        for change in engine.pending_changes():
            if change.event_id is not None or change.alert.rule not in FIRE_RULES:
                continue
            if not self.ids.assign(change):
                break  # no ids at hand: this one goes out after the commit
            event, body = persist.build_event(change)
            self.unacked.append((event.event_id, self._publish(topic, body, retain=False)))
            self.early.add(event.event_id)
            sent = True
        if sent:
            self.client._client.loop_write()

    def publish_states(self, engine: BuildingEngine, now: datetime, urgent: set[int]) -> None:
        for floor in self._due(engine, now, urgent):
            self._publish_state(engine, floor, now)

    def _due(self, engine: BuildingEngine, now: datetime, urgent: set[int]) -> list[int]:
        s = self.s
        return due_floors(engine, now, urgent, s.state_min_interval_s, s.state_max_interval_s)

    def _publish_state(self, engine: BuildingEngine, floor: int, now: datetime) -> None:
        payload = floor_state_json(engine, floor, now)
        self._publish(state_topic(engine.id, floor, self.prefix), payload, retain=True)

    async def publish_periodic_states(self, now: datetime) -> None:
        """The floor states due by age, one floor at a time: a message that arrives
        meanwhile is handled between two floors, not after all of them."""
        for engine in list(self.engines.values()):
            for floor in self._due(engine, now, set()):
                self._publish_state(engine, floor, now)
                await asyncio.sleep(0)

    def _publish(self, topic: str, payload: bytes, *, retain: bool) -> MQTTMessageInfo:
        """QoS 1 without waiting for the PUBACK: paho keeps it in flight and resends it.

        aiomqtt's ``publish`` waits for each PUBACK, a broker round trip per message on the
        path of a fire alarm; paho's own publish queues it (we run on paho's loop thread).
        """
        info = self.client._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != 0:
            raise aiomqtt.MqttError(f"publish to {topic} failed (rc {info.rc})")
        return info

    async def replay_outbox(self) -> None:
        """Publish the events a previous run committed but never saw acknowledged."""
        rows = await store.mqtt_outbox(self.conn, list(self.engines))
        for event_id, building, body in rows:
            info = self._publish(alerts_topic(building, self.prefix), body, retain=False)
            self.unacked.append((event_id, info))
        if rows:
            logger.info("published %d events again from the MQTT outbox", len(rows))

    async def flush_outbox(self) -> None:
        """Events the broker acknowledged leave the outbox (off the lock, every tick).

        An event published early is deleted only after its own commit put it there.
        """
        if not self.unacked:
            return
        done = [e for e, info in self.unacked if e not in self.early and info.is_published()]
        if done:
            gone = set(done)
            self.unacked = [(e, info) for e, info in self.unacked if e not in gone]
            await persist.outbox_done(self.side, done)

    # ----- input --------------------------------------------------------------------------
    async def messages(self) -> None:
        queue = self.client.messages
        async for first in queue:
            batch = [first]
            while len(queue) and len(batch) < self.s.batch_max:
                batch.append(await anext(queue))
            await self.handle(batch)

    async def handle(self, batch: list[aiomqtt.Message]) -> None:
        """Feed ``batch``, commit its effects, then acknowledge it.

        The messages before the first one that changed anything to be stored are
        acknowledged at once: the broker sends a client only a few unacknowledged messages
        (Mosquitto: 20), and plain telemetry must not wait for a commit to make room.
        """
        acked = 0
        async with self.lock:
            now = self.clock.now()
            touched: dict[str, BuildingEngine] = {}
            for i, message in enumerate(batch):
                try:
                    engine = self._feed(message, now)
                except Exception:  # a bug for one message must not stop the building's alarms
                    logger.exception("failed to process a message on %s", message.topic)
                    engine = None
                if engine is not None:
                    touched[engine.id] = engine
                    self.publish_early(engine)
                if acked == i and not any(e.has_effects() for e in touched.values()):
                    self._ack(message)
                    acked = i + 1
            for engine in touched.values():
                await self.commit(engine, now)
        for message in batch[acked:]:
            self._ack(message)

    def _ack(self, message: aiomqtt.Message) -> None:
        if message.qos > 0:
            self.client._client.ack(message.mid, message.qos)

    def _feed(self, message: aiomqtt.Message, now: datetime) -> BuildingEngine | None:
        try:
            topic = parse_topic(str(message.topic), self.prefix)
        except TopicError:
            logger.debug("ignored message on %s", message.topic)
            return None
        engine = self.engines.get(topic.building)
        if engine is None or topic.floor is None:
            return None
        payload = message.payload if isinstance(message.payload, bytes) else b""
        if topic.channel is Channel.TELEMETRY:
            feed_telemetry(engine, topic.floor, payload, now)
        elif topic.channel is Channel.STATUS:
            try:
                status = GatewayStatus.model_validate_json(payload)
            except ValidationError:
                logger.info("bad gateway status on %s: %.200r", message.topic, payload)
                return None
            engine.on_gateway(topic.floor, status.state == "online", status.ts or now)
        return engine

    async def ticks(self) -> None:
        while True:
            async with self.lock:
                now = self.clock.now()
                for engine in self.engines.values():
                    engine.tick(now)
                    await self.commit(engine, now)
            await self.publish_periodic_states(now)
            await self.flush_outbox()
            await self.ids.top_up(self.side)
            await asyncio.sleep(self.s.tick_s)

    async def commands(self) -> None:
        assert self.s.database_url is not None
        async with await psycopg.AsyncConnection.connect(
            self.s.database_url, autocommit=True
        ) as listener:
            await listener.execute("LISTEN alert_commands")
            while True:
                await self.process_commands()
                async for _ in listener.notifies(timeout=self.s.command_poll_s, stop_after=1):
                    pass

    async def process_commands(self) -> None:
        rows = await store.pending_commands(self.side, list(self.engines))
        if not rows:
            return
        async with self.lock:
            for row in rows:
                engine = self.engines[row.building_id]
                now = self.clock.now()
                decision = engine.command(
                    row.alert_id, row.action, row.actor, now, row.shelve_until
                )
                result = CommandResult.DONE if decision.done else CommandResult.REFUSED
                logger.info(
                    "command %d %s on alert %d by %s: %s (%s)",
                    row.id, row.action, row.alert_id, row.actor, result, decision.detail,
                )  # fmt: skip
                await self.commit(engine, now, (row.id, result, decision.detail))

    # ----- building model -----------------------------------------------------------------
    async def watch_buildings(self) -> None:
        """Reload a building whose file was re-applied; take on new ones when owning all."""
        assert self.s.database_url is not None
        while True:
            raise_if_cancelling()  # aiomqtt's subscribe in _swap may have swallowed it (core.aio)
            await asyncio.sleep(self.s.building_poll_s)
            versions = await store.building_versions(self.side, self.s.buildings)
            changed = [b for b, v in versions.items() if self.versions.get(b) != v]
            if not changed:
                continue
            for building_id in changed:
                try:
                    found = await asyncio.to_thread(
                        store.load_buildings, self.s.database_url, [building_id]
                    )
                    await self._swap(found[0], versions[building_id])
                except (psycopg.OperationalError, aiomqtt.MqttError, EngineStateLost):
                    raise
                except Exception:  # keep the model we have; try again on the next change
                    logger.exception("building %s: the re-applied model is not used", building_id)
                    self.versions[building_id] = versions[building_id]

    async def _swap(self, building: Building, version: str) -> None:
        async with self.lock:
            now = self.clock.now()
            old = self.engines.get(building.id)
            if old is None:
                engine = await open_engine(self.conn, building, now)
                for channel in (Channel.TELEMETRY, Channel.STATUS):
                    topic = subscription(channel, self.prefix, building.id)
                    await self.client.subscribe(topic, qos=1)
                if self.sender is not None:
                    self.sender.buildings.append(building.id)
                logger.info("building %s: taken on", building.id)
            else:
                engine = old.reloaded(building, now)
                logger.info("building %s: model reloaded", building.id)
            self.engines[building.id] = engine
            self.versions[building.id] = version
            await self.commit(engine, now)
            self.publish_states(engine, now, set(engine.floors))
