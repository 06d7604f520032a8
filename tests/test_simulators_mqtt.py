"""The MQTT simulator: every sensor published, reconnects, last will; the catch-up clock."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime

import aiomqtt
import pytest

from core.building import Building
from core.payload import parse_envelope, parse_reading
from core.settings import MqttAddress
from core.topics import parse_topic, status_topic
from simulators.mqtt_sim import run_mqtt_simulator
from tests.conftest import MqttTarget
from tests.simulator_helpers import small_building


@pytest.fixture(scope="module")
def small() -> Building:
    return small_building()


# -- MQTT -------------------------------------------------------------------------------


class Inbox:
    """What a subscriber received, with a way to wait for a condition on it."""

    def __init__(self) -> None:
        self.messages: list[aiomqtt.Message] = []
        self._arrived = asyncio.Event()

    async def collect(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self.messages.append(message)
            self._arrived.set()

    async def until(
        self, predicate: Callable[[list[aiomqtt.Message]], bool], within_s: float
    ) -> None:
        async with asyncio.timeout(within_s):
            while not predicate(self.messages):
                self._arrived.clear()
                await self._arrived.wait()


def subscriber(mqtt: MqttTarget) -> aiomqtt.Client:
    return aiomqtt.Client(mqtt.address.host, mqtt.address.port, protocol=aiomqtt.ProtocolVersion.V5)


async def clear_retained(mqtt: MqttTarget, building: Building) -> None:
    async with subscriber(mqtt) as client:
        for floor in building.floors:
            await client.publish(status_topic(building.id, floor.number, mqtt.prefix), b"", 1, True)


def statuses(messages: list[aiomqtt.Message]) -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = defaultdict(list)
    for m in messages:
        if str(m.topic).endswith("/status") and m.payload:
            assert isinstance(m.payload, bytes)
            body = json.loads(m.payload)
            out[body["source"]].append(body)
    return out


def check_telemetry(
    messages: list[aiomqtt.Message], building: Building, prefix: str
) -> dict[str, list[int]]:
    """Contract checks on every telemetry message; returns the seqs seen per source."""
    floors = {s.id: s.floor for s in building.sensors}
    last_ts: dict[str, datetime] = {}
    seqs: dict[str, list[int]] = defaultdict(list)
    seen: set[tuple[str, int]] = set()
    for message in messages:
        topic = parse_topic(str(message.topic), prefix)
        if topic.channel != "telemetry":
            continue
        assert message.qos == 1
        assert isinstance(message.payload, bytes)
        envelope = parse_envelope(message.payload)
        assert envelope.source == f"tb-f{topic.floor:02d}-sim"
        assert 0 < len(envelope.readings) <= 1000
        seqs[envelope.source].append(envelope.seq)
        if (envelope.source, envelope.seq) in seen:
            continue  # redelivered after a lost PUBACK: the same message again
        seen.add((envelope.source, envelope.seq))
        for raw in envelope.readings:
            reading = parse_reading(raw)
            assert floors[reading.sensor] == topic.floor
            assert reading.ts > last_ts.get(reading.sensor, datetime.min.replace(tzinfo=UTC))
            last_ts[reading.sensor] = reading.ts
    assert set(last_ts) == set(floors), "every sensor published"
    return seqs


async def retained_status(mqtt: MqttTarget, floors: int) -> dict[str, list[dict[str, object]]]:
    """What a subscriber that arrives now gets on the status topics (retained only)."""
    inbox = Inbox()
    async with subscriber(mqtt) as client:
        await client.subscribe(f"{mqtt.prefix}upstairs/v1/tb/+/status", qos=1)
        reader = asyncio.create_task(inbox.collect(client))
        try:
            await inbox.until(lambda ms: len(ms) >= floors, 5)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
    assert all(m.retain for m in inbox.messages)
    return statuses(inbox.messages)


async def test_mqtt_simulator_publishes_every_sensor(small: Building, mqtt: MqttTarget) -> None:
    inbox = Inbox()
    stop = asyncio.Event()
    wall_start = datetime.now(UTC)
    try:
        async with subscriber(mqtt) as sub:
            await sub.subscribe(f"{mqtt.prefix}upstairs/v1/tb/+/telemetry", qos=1)
            reader = asyncio.create_task(inbox.collect(sub))
            sim = asyncio.create_task(
                run_mqtt_simulator(
                    small,
                    mqtt.address,
                    prefix=mqtt.prefix,
                    speed=60,
                    stop=stop,
                    publish_interval_s=0.5,
                    seed=1,
                )
            )
            await asyncio.sleep(1.5)
            births = await retained_status(mqtt, 2)  # the retained birth reaches latecomers
            assert set(births) == {"tb-f01-sim", "tb-f02-sim"}
            assert all(b[0]["state"] == "online" and b[0]["v"] == 1 for b in births.values())
            await asyncio.sleep(1.5)
            stop.set()
            async with asyncio.timeout(10):
                await sim
            await asyncio.sleep(0.2)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        seqs = check_telemetry(inbox.messages, small, mqtt.prefix)
        for source, seen in seqs.items():
            assert seen == list(range(len(seen))), source  # +1 per message, from 0
            assert len(seen) >= 4
        # simulated time starts now: a sensor's first sample is at the first multiple
        # of its interval after the start (the start is wall time, taken after wall_start)
        first_ts = min(
            parse_reading(r).ts
            for m in inbox.messages
            if isinstance(m.payload, bytes)
            for r in parse_envelope(m.payload).readings
        )
        shortest = min(s.interval_s for s in small.sensors)
        assert -0.01 <= (first_ts - wall_start).total_seconds() < shortest + 2
        # a clean stop leaves "offline" retained for every floor
        after = await retained_status(mqtt, 2)
        assert {b[0]["state"] for b in after.values()} == {"offline"}
    finally:
        await clear_retained(mqtt, small)


class Proxy:
    """A TCP proxy to the broker that can go away (connections cut, port closed) and return."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.links: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self.handlers: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Proxy:
        await self.restore()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cut()
        await asyncio.gather(*self.handlers, return_exceptions=True)

    async def restore(self) -> None:
        self.server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for client, upstream in self.links:
            client.transport.abort()
            upstream.transport.abort()
        self.links.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self.links.append((writer, up_writer))
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self.handlers.discard(task)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


async def test_mqtt_simulator_reconnects_and_says_offline_when_cancelled(
    small: Building, mqtt: MqttTarget
) -> None:
    inbox = Inbox()

    def last_seq(messages: list[aiomqtt.Message]) -> list[int]:
        seqs: dict[str, int] = {"tb-f01-sim": -1, "tb-f02-sim": -1}
        for m in messages:
            if str(m.topic).endswith("/telemetry"):
                assert isinstance(m.payload, bytes)
                envelope = parse_envelope(m.payload)
                seqs[envelope.source] = max(seqs[envelope.source], envelope.seq)
        return [seqs["tb-f01-sim"], seqs["tb-f02-sim"]]

    def sensors_seen(messages: list[aiomqtt.Message]) -> set[str]:
        return {
            r["sensor"]
            for m in messages
            if str(m.topic).endswith("/telemetry") and isinstance(m.payload, bytes)
            for r in parse_envelope(m.payload).readings
        }

    def births(messages: list[aiomqtt.Message]) -> list[int]:
        states = statuses(messages)
        return [[h["state"] for h in states[f"tb-f0{n}-sim"]].count("online") for n in (1, 2)]

    def farewells(messages: list[aiomqtt.Message]) -> list[object]:
        return [h[-1].get("detail") for h in statuses(messages).values()]

    try:
        async with Proxy(mqtt.address.host, mqtt.address.port) as proxy, subscriber(mqtt) as sub:
            await sub.subscribe(f"{mqtt.prefix}upstairs/v1/tb/+/#", qos=1)
            reader = asyncio.create_task(inbox.collect(sub))
            address = MqttAddress(host="127.0.0.1", port=proxy.port)
            sim = asyncio.create_task(
                run_mqtt_simulator(
                    small, address, prefix=mqtt.prefix, speed=60, publish_interval_s=0.25
                )
            )
            await inbox.until(lambda ms: min(last_seq(ms)) >= 2, 5)
            await proxy.cut()  # the broker "goes away" for a second
            await asyncio.sleep(1.0)
            cut_at = last_seq(inbox.messages)
            await proxy.restore()
            everything = {s.id for s in small.sensors}
            await inbox.until(
                lambda ms: (
                    births(ms) == [2, 2]
                    and all(a >= b + 4 for a, b in zip(last_seq(ms), cut_at, strict=True))
                    and sensors_seen(ms) == everything
                ),
                10,
            )
            sim.cancel()
            await asyncio.gather(sim, return_exceptions=True)
            assert sim.cancelled()
            await inbox.until(lambda ms: farewells(ms) == ["cancelled", "cancelled"], 5)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        seqs = check_telemetry(inbox.messages, small, mqtt.prefix)
        for source, seen in seqs.items():  # nothing lost across the cut
            assert sorted(set(seen)) == list(range(max(seen) + 1)), source
        for source, history in statuses(inbox.messages).items():
            states = [h["state"] for h in history]
            assert states[0] == "online" and states.count("online") >= 2, (source, states)
            assert history[-1]["state"] == "offline"
    finally:
        await clear_retained(mqtt, small)


def test_catch_up_clock_backfills_then_runs_in_real_time() -> None:
    """`demo --speed 60 --backfill-hours H`: fast through the past, never into the future."""
    import time as _time
    from datetime import UTC as _UTC
    from datetime import datetime as _dt
    from datetime import timedelta as _td

    from simulators import SimClock

    start = _dt.now(_UTC) - _td(seconds=30)
    clock = SimClock(speed=1000.0, start=start, catch_up=True)
    _time.sleep(0.1)  # 100 simulated seconds would pass, but only 30 lie in the past
    caught_up = clock.now()
    assert abs((caught_up - _dt.now(_UTC)).total_seconds()) < 0.5
    _time.sleep(0.2)
    assert 0.1 < (clock.now() - caught_up).total_seconds() < 0.5  # now real time
    free = SimClock(speed=1000.0, start=start)
    _time.sleep(0.1)
    assert free.now() > _dt.now(_UTC) + _td(seconds=30)  # without catch-up it runs ahead
