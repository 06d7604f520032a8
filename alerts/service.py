"""The alert-engine service: MQTT in, rules, database and MQTT out.

One asyncio task group per connection attempt (:class:`alerts.runtime.Runtime`): the MQTT
message loop, the timer tick, the operator-command listener, the building-model watch and the
webhook sender. Every path that changes an engine runs under one lock and persists before it
publishes. A lost broker or database ends the attempt;
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
import socket
import sys
import time
from collections.abc import Awaitable, Callable

import aiomqtt
import psycopg
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from alerts import store
from alerts.clock import Clock, SystemClock
from alerts.runtime import EngineStateLost, Runtime, open_engine
from alerts.settings import AlertSettings
from alerts.webhooks import WebhookSender
from core.aio import run_apart, wait_event
from core.settings import SettingsError, parse_mqtt_url
from core.topics import Channel, subscription

__all__ = ["main", "run_alert_engine"]

logger = logging.getLogger(__name__)

RETRYABLE = (aiomqtt.MqttError, psycopg.OperationalError, OSError, EngineStateLost)


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


def _tune_socket(client: aiomqtt.Client) -> None:
    """No Nagle on our side, and acknowledge every TCP segment from the broker at once.

    paho leaves Nagle's algorithm on; with a stream of small packets each way (telemetry in,
    PUBACKs and events out) it held an alert event back by 20-40 ms. The same algorithm on
    the broker's side (Mosquitto's default, ``set_tcp_nodelay false``) holds a telemetry
    message back until our kernel acknowledges the previous segment, which Linux delays by
    up to 40 ms: TCP_QUICKACK after every read makes it acknowledge at once (Linux only; the
    option does not stick, hence after every read).
    """
    paho = client._client
    sock = paho.socket()
    if not isinstance(sock, socket.socket) or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    quickack = getattr(socket, "TCP_QUICKACK", None)
    if quickack is None:
        return
    read = paho.loop_read

    def loop_read(max_packets: int = 1) -> MQTTErrorCode:
        rc = read(max_packets)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
        return rc

    setattr(paho, "loop_read", loop_read)  # noqa: B010  (aiomqtt's reader calls it)


async def _attempt(settings: AlertSettings, stop: asyncio.Event, clock: Clock) -> None:
    assert settings.database_url is not None
    async with (
        await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn,
        await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as side,
    ):
        versions = await store.building_versions(conn, settings.buildings)
        buildings = await asyncio.to_thread(
            store.load_buildings, settings.database_url, list(versions)
        )
        started = clock.now()
        engines = {b.id: await open_engine(conn, b, started) for b in buildings}
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
            _tune_socket(client)
            for building_id in engines:
                for channel in (Channel.TELEMETRY, Channel.STATUS):
                    await client.subscribe(
                        subscription(channel, settings.topic_prefix, building_id), qos=1
                    )
            rt = Runtime(
                settings, clock=clock, engines=engines, versions=versions, conn=conn, side=side,
                client=client, sender=sender,
            )  # fmt: skip
            async with rt.lock:
                await rt.ids.top_up(conn)
                await rt.replay_outbox()
                for engine in engines.values():
                    rt.publish_states(engine, started, set(engine.floors))
            logger.info("alert engine running for %s", ", ".join(engines) or "no building")
            jobs: list[tuple[str, Callable[[], Awaitable[None]]]] = [
                ("alerts-messages", rt.messages),
                ("alerts-ticks", rt.ticks),
                ("alerts-commands", rt.commands),
                ("alerts-buildings", rt.watch_buildings),
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
            await run_apart(_attempt(settings, stop, clock))  # a cancel stays a cancel
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
            await wait_event(stop, delay)


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
