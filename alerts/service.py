"""The alert-engine service: MQTT in, rules, database and MQTT out.

One asyncio task group per connection attempt: the MQTT message loop, the timer tick, the
operator-command listener and the webhook sender. Every path that changes an engine runs
under one lock and persists before it publishes. A lost broker or database ends the attempt;
the outer loop backs off (jittered, exponential) and starts again from the database state,
and the persistent MQTT session with manual acknowledgement redelivers what was not done.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import aiomqtt
import psycopg
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from alerts import store
from alerts.clock import Clock, SystemClock
from alerts.engine import BuildingEngine
from alerts.floor_state import due_floor_states
from alerts.settings import AlertSettings
from alerts.webhooks import WebhookSender
from core.alert_types import CommandResult
from core.payload import GatewayStatus, PayloadError, parse_envelope, parse_reading
from core.settings import SettingsError, parse_mqtt_url
from core.topics import Channel, TopicError, alerts_topic, parse_topic, state_topic, subscription

__all__ = ["main", "run_alert_engine"]

logger = logging.getLogger(__name__)

RETRYABLE = (aiomqtt.MqttError, psycopg.OperationalError, OSError)


class _Runtime:
    def __init__(
        self,
        settings: AlertSettings,
        *,
        clock: Clock,
        engines: dict[str, BuildingEngine],
        conn: psycopg.AsyncConnection[Any],
        client: aiomqtt.Client,
        sender: WebhookSender | None,
    ) -> None:
        self.s, self.clock, self.engines = settings, clock, engines
        self.conn, self.client, self.sender = conn, client, sender
        self.lock = asyncio.Lock()
        self.prefix = settings.topic_prefix

    async def commit(
        self,
        engine: BuildingEngine,
        now: datetime,
        command: tuple[int, CommandResult, str] | None = None,
    ) -> None:
        """Persist what ``engine`` decided, then publish events and urgent floor states."""
        fx = engine.drain()
        if fx or command is not None:
            events = await store.persist(
                self.conn, engine, fx, webhook_urls=self.s.webhook_urls, now=now, command=command
            )
            if events and self.sender is not None:
                self.sender.wake.set()
            topic = alerts_topic(engine.id, self.prefix)
            for event in events:
                self._publish(topic, store.event_json(event), retain=False)
        if fx.urgent_floors:
            await self.publish_states(engine, now, fx.urgent_floors)

    async def publish_states(self, engine: BuildingEngine, now: datetime, urgent: set[int]) -> None:
        states = due_floor_states(
            engine, now, urgent, self.s.state_min_interval_s, self.s.state_max_interval_s
        )
        for state in states:
            topic = state_topic(engine.id, state.floor, self.prefix)
            self._publish(topic, state.model_dump_json().encode(), retain=True)

    def _publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        """QoS 1 without waiting for the PUBACK: paho keeps it in flight and resends it.

        aiomqtt's ``publish`` waits for each PUBACK, a broker round trip per message on the
        path of a fire alarm; paho's own publish queues it (we run on paho's loop thread).
        """
        info = self.client._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != 0:
            raise aiomqtt.MqttError(f"publish to {topic} failed (rc {info.rc})")

    async def handle(self, message: aiomqtt.Message) -> None:
        try:
            topic = parse_topic(str(message.topic), self.prefix)
        except TopicError:
            logger.debug("ignored message on %s", message.topic)
            return
        engine = self.engines.get(topic.building)
        if engine is None or topic.floor is None:
            return
        payload = message.payload if isinstance(message.payload, bytes) else b""
        async with self.lock:
            now = self.clock.now()
            if topic.channel is Channel.TELEMETRY:
                self._telemetry(engine, topic.floor, payload, now)
            elif topic.channel is Channel.STATUS:
                try:
                    status = GatewayStatus.model_validate_json(payload)
                except ValidationError:
                    logger.info("bad gateway status on %s: %.200r", message.topic, payload)
                    return
                engine.on_gateway(topic.floor, status.state == "online", status.ts or now)
            await self.commit(engine, now)

    def _telemetry(self, engine: BuildingEngine, floor: int, payload: bytes, now: datetime) -> None:
        try:
            envelope = parse_envelope(payload)
        except PayloadError as exc:
            logger.debug("refused telemetry (%s): %.200r", exc, payload)
            return
        sensors = engine.live.sensors
        for raw in envelope.readings:
            try:
                reading = parse_reading(raw)
            except PayloadError:
                continue  # the ingester records it as a dead letter
            live = sensors.get(reading.sensor)
            if live is None or live.sensor.floor != floor:
                continue
            engine.on_reading(reading.sensor, reading.ts, reading.value, now)

    async def messages(self) -> None:
        paho = self.client._client
        async for message in self.client.messages:
            try:
                await self.handle(message)
            except RETRYABLE:
                raise
            except Exception:  # a bug for one message must not stop the building's alarms
                logger.exception("failed to process a message on %s", message.topic)
            if message.qos > 0:
                paho.ack(message.mid, message.qos)

    async def ticks(self) -> None:
        while True:
            async with self.lock:
                now = self.clock.now()
                for engine in self.engines.values():
                    engine.tick(now)
                    await self.commit(engine, now)
                    await self.publish_states(engine, now, set())
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
        async with self.lock:
            for row in await store.pending_commands(self.conn, list(self.engines)):
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


def _mqtt_client(settings: AlertSettings) -> aiomqtt.Client:
    assert settings.mqtt_url is not None
    address = parse_mqtt_url(settings.mqtt_url)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = settings.session_expiry_s
    client = aiomqtt.Client(
        address.host,
        address.port,
        username=address.username,
        password=address.password,
        identifier=settings.session_client_id(),
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=props,
        tls_params=aiomqtt.TLSParameters() if address.tls else None,
        max_inflight_messages=1000,
    )
    client._client.manual_ack_set(True)  # acknowledge only after the effects are stored
    return client


async def _attempt(settings: AlertSettings, stop: asyncio.Event, clock: Clock) -> None:
    assert settings.database_url is not None
    buildings = await asyncio.to_thread(
        store.load_buildings, settings.database_url, settings.buildings
    )
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True
    ) as conn:
        started = clock.now()
        engines: dict[str, BuildingEngine] = {}
        for building in buildings:
            engine = BuildingEngine(building, started)
            alerts, conditions, opened = await store.load_state(conn, engine, started)
            engine.restore(alerts, conditions)
            engine.restore_opened(opened)
            for sensor_id, ts, value in await store.latest_readings(conn, building.id):
                engine.seed(sensor_id, ts, value, started)
            engines[building.id] = engine
            logger.info(
                "building %s: %d open alerts, %d conditions restored",
                building.id, len(alerts), len(conditions),
            )  # fmt: skip
        sender = None
        if settings.webhook_urls:
            sender = WebhookSender(
                settings.database_url,
                list(engines),
                settings.webhook_secret.get_secret_value().encode(),
                clock,
                timeout_s=settings.webhook_timeout_s,
                initial_s=settings.webhook_backoff_initial_s,
                max_s=settings.webhook_backoff_max_s,
                poll_s=settings.webhook_poll_s,
            )
        async with _mqtt_client(settings) as client:
            for building_id in engines:
                for channel in (Channel.TELEMETRY, Channel.STATUS):
                    await client.subscribe(
                        subscription(channel, settings.topic_prefix, building_id), qos=1
                    )
            rt = _Runtime(
                settings, clock=clock, engines=engines, conn=conn, client=client, sender=sender
            )
            async with rt.lock:
                for engine in engines.values():
                    await rt.publish_states(engine, started, set(engine.floors))
            logger.info("alert engine running for %s", ", ".join(engines) or "no building")
            jobs: list[tuple[str, Callable[[], Awaitable[None]]]] = [
                ("alerts-messages", rt.messages),
                ("alerts-ticks", rt.ticks),
                ("alerts-commands", rt.commands),
            ]
            if sender is not None:
                jobs.append(("alerts-webhooks", sender.run))
            await _run_until(stop, jobs)


async def _run_until(
    stop: asyncio.Event, jobs: list[tuple[str, Callable[[], Awaitable[None]]]]
) -> None:
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(_as_coro(job), name=name) for name, job in jobs]
        stopper = tg.create_task(stop.wait(), name="alerts-stop")
        await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        for task in [*tasks, stopper]:
            task.cancel()


async def _as_coro(job: Callable[[], Awaitable[None]]) -> None:
    await job()


async def run_alert_engine(
    settings: AlertSettings, *, stop: asyncio.Event | None = None, clock: Clock | None = None
) -> None:
    """Run until ``stop`` is set; reconnect with backoff when the broker or database goes."""
    if not settings.database_url or not settings.mqtt_url:
        raise SettingsError("UPSTAIRS_DATABASE_URL and UPSTAIRS_MQTT_URL must be set")
    stop = stop or asyncio.Event()
    clock = clock or SystemClock()
    failures = 0
    while not stop.is_set():
        began = time.monotonic()
        try:
            await _attempt(settings, stop, clock)
            return
        except* RETRYABLE as group:
            if time.monotonic() - began > 60:
                failures = 0
            failures += 1
            delay = min(30.0, 0.5 * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)
            logger.warning(
                "alert engine lost its broker or database (%s); retrying in %.1f s",
                "; ".join(str(e) for e in group.exceptions), delay,
            )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="upstairs alerts", description="the alert engine")
    parser.add_argument("--building", action="append", default=None, help="own only this id")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = AlertSettings()
        if args.building:
            settings = settings.model_copy(update={"buildings": args.building})
        if not settings.database_url or not settings.mqtt_url:
            raise SettingsError("UPSTAIRS_DATABASE_URL and UPSTAIRS_MQTT_URL must be set")
    except (ValidationError, SettingsError) as exc:
        print(f"upstairs alerts: {exc}", file=sys.stderr)
        return 2
    from core.db import migrate

    migrate(settings.database_url)

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_alert_engine(settings, stop=stop)

    asyncio.run(_main())
    logger.info("alert engine stopped")
    return 0
