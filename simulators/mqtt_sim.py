"""MQTT mode: every floor of a building publishes its sensors straight to the broker.

Each floor with sensors behaves like a floor gateway: one MQTT 5 connection of its own with a
retained ``status`` birth (``online``) and a last will (``offline``), and one contract-v1
telemetry message per publish tick (split past 1,000 readings), at QoS 1, with a ``seq`` that
grows by one per message. One sampler task feeds every floor's outbox; one publisher task per
floor drains it, reconnecting with jittered exponential backoff when the broker goes away.
While a floor is disconnected its messages wait in the outbox (the oldest are dropped past
:data:`OUTBOX_LIMIT`) and are sent, in order, once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import secrets
import ssl
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import aiomqtt

from core.aio import raise_if_cancelling, run_apart, wait_event
from core.building import Building
from core.payload import Reading, encode_telemetry, encode_ts
from core.settings import MqttAddress
from core.topics import status_topic, telemetry_topic
from simulators.clock import SimClock
from simulators.sampling import Sampler
from simulators.scenarios import make_scenario
from simulators.values import DeviceModel

logger = logging.getLogger(__name__)

MAX_READINGS_PER_MESSAGE = 1_000
OUTBOX_LIMIT = 1_000
"""Messages a floor keeps while its broker connection is down; older ones are dropped."""

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
MQTT_TIMEOUT_S = 5.0
"""Longest wait for a PUBACK, CONNACK or DISCONNECT before the connection counts as lost."""
FAREWELL_TIMEOUT_S = 1.0


def source_of(building_id: str, floor: int) -> str:
    """The ``source`` of a floor's telemetry and status messages."""
    return f"{building_id}-f{floor:02d}-sim"


def status_payload(
    source: str,
    state: Literal["online", "offline"],
    at: datetime | None = None,
    detail: str | None = None,
) -> bytes:
    """A contract-v1 status message (``ts`` in simulated time)."""
    body: dict[str, object] = {"v": 1, "source": source, "state": state}
    if at is not None:
        body["ts"] = encode_ts(at)
    if detail is not None:
        body["detail"] = detail
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass(eq=False)
class _Floor:
    """One floor's publisher state: topics, outbox and sequence number."""

    number: int
    source: str
    telemetry: str
    status: str
    outbox: deque[bytes] = field(default_factory=lambda: deque(maxlen=OUTBOX_LIMIT))
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    seq: int = 0
    dropped: int = 0

    def post(self, readings: list[Reading]) -> None:
        """Encode a batch (split past the message limit) into the outbox."""
        for start in range(0, len(readings), MAX_READINGS_PER_MESSAGE):
            if len(self.outbox) == OUTBOX_LIMIT:
                self.dropped += 1
                logger.warning(
                    "%s: outbox full (%d messages), dropping the oldest; %d dropped so far",
                    self.source,
                    OUTBOX_LIMIT,
                    self.dropped,
                )
            chunk = readings[start : start + MAX_READINGS_PER_MESSAGE]
            self.outbox.append(encode_telemetry(self.source, self.seq, chunk))
            self.seq += 1
        self.wake.set()


async def run_mqtt_simulator(
    building: Building,
    mqtt: MqttAddress,
    *,
    prefix: str = "",
    speed: float = 1.0,
    scenario: str = "normal",
    seed: int = 0,
    stop: asyncio.Event | None = None,
    publish_interval_s: float = 1.0,
    start: datetime | None = None,
    catch_up: bool = False,
) -> None:
    """Simulate every sensor of ``building`` over MQTT until ``stop`` is set or cancelled.

    Simulated time starts at ``start`` (default: now) and runs ``speed`` times faster than
    the wall clock (with ``catch_up``, only until it reaches the wall clock); every reading
    carries its simulated timestamp. On a clean stop each floor
    publishes a retained ``offline`` status; if the process dies, the broker publishes the
    floor's last will. Raises ``ValueError`` (:class:`~simulators.scenarios.ScenarioError`)
    for an unknown scenario, a bad speed or interval.
    """
    if not math.isfinite(publish_interval_s) or publish_interval_s <= 0:
        raise ValueError(f"publish_interval_s must be > 0, not {publish_interval_s!r}")
    clock = SimClock(speed, start, catch_up=catch_up)
    model = DeviceModel(building, seed=seed)
    sampler = Sampler(model, make_scenario(scenario, building, seed=seed), clock.now())
    floors = {
        n: _Floor(
            n,
            source_of(building.id, n),
            telemetry_topic(building.id, n, prefix),
            status_topic(building.id, n, prefix),
        )
        for n in sorted({s.floor for s in building.sensors})
    }
    stop = stop if stop is not None else asyncio.Event()
    done = asyncio.Event()
    logger.info(
        "simulating %s from %s: %d sensors on %d floors, scenario %s, speed %gx, seed %d, to %s:%d",
        building.id,
        clock.start.isoformat(timespec="seconds"),
        len(building.sensors),
        len(floors),
        scenario,
        speed,
        seed,
        mqtt.host,
        mqtt.port,
    )
    async with asyncio.TaskGroup() as tasks:
        for floor in floors.values():
            tasks.create_task(_publish_floor(floor, mqtt, clock, done), name=f"sim-{floor.source}")
        tasks.create_task(
            _sample(sampler, floors, clock, stop=stop, done=done, interval_s=publish_interval_s),
            name="sim-sampler",
        )
    logger.info("simulator of %s stopped", building.id)


async def _sample(
    sampler: Sampler,
    floors: dict[int, _Floor],
    clock: SimClock,
    *,
    stop: asyncio.Event,
    done: asyncio.Event,
    interval_s: float,
) -> None:
    """Every tick, move the sampler to the simulated now and post what is due."""
    loop = asyncio.get_running_loop()
    next_tick = loop.time()
    while not stop.is_set():
        for number, readings in sampler.advance(clock.now()).items():
            floors[number].post(readings)
        next_tick += interval_s
        delay = next_tick - loop.time()
        if delay < 0:  # fell behind: carry on from now rather than burst
            next_tick, delay = loop.time(), 0.0
        await wait_event(stop, delay)
    done.set()  # a clean stop: publishers flush, say offline and leave
    for floor in floors.values():
        floor.wake.set()


def _client(floor: _Floor, address: MqttAddress) -> aiomqtt.Client:
    will = aiomqtt.Will(
        floor.status,
        status_payload(floor.source, "offline", detail="connection lost"),
        qos=1,
        retain=True,
    )
    return aiomqtt.Client(
        address.host,
        address.port,
        username=address.username,
        password=address.password,
        identifier=f"{floor.source}-{secrets.token_hex(4)}",
        protocol=aiomqtt.ProtocolVersion.V5,
        will=will,
        clean_start=True,
        keepalive=30,
        timeout=MQTT_TIMEOUT_S,
        tls_context=ssl.create_default_context() if address.tls else None,
    )


async def _publish_floor(
    floor: _Floor, address: MqttAddress, clock: SimClock, done: asyncio.Event
) -> None:
    """Connect, send the birth, drain the outbox until done; reconnect when the link fails."""
    backoff = BACKOFF_MIN_S
    while True:
        client = _client(floor, address)
        connected = asyncio.Event()
        try:  # a session apart: a cancel is never taken for a lost link (core.aio.run_apart)
            await run_apart(_session(client, floor, address, clock, done, connected))
            return
        except aiomqtt.MqttError as exc:
            if connected.is_set():
                backoff = BACKOFF_MIN_S
            _consume_disconnect_reason(client)
            if done.is_set():
                logger.warning("%s stopped without a broker connection: %s", floor.source, exc)
                return
            delay = random.uniform(backoff / 2, backoff)
            logger.warning(
                "%s: MQTT connection failed or lost (%s); retrying in %.1f s",
                floor.source,
                exc,
                delay,
            )
            backoff = min(backoff * 2, BACKOFF_MAX_S)
            await wait_event(done, delay)


async def _session(
    client: aiomqtt.Client,
    floor: _Floor,
    address: MqttAddress,
    clock: SimClock,
    done: asyncio.Event,
    connected: asyncio.Event,
) -> None:
    """One connection: the birth, the outbox until done, then the retained "offline"."""
    async with client:
        logger.info("%s connected to %s:%d", floor.source, address.host, address.port)
        connected.set()
        try:
            online = status_payload(floor.source, "online", clock.now())
            await client.publish(floor.status, online, qos=1, retain=True)
            await _drain(client, floor, done)
        except asyncio.CancelledError:
            await _farewell(client, floor, clock)
            raise
        offline = status_payload(floor.source, "offline", clock.now(), "stopped")
        await client.publish(floor.status, offline, qos=1, retain=True, timeout=FAREWELL_TIMEOUT_S)


def _consume_disconnect_reason(client: aiomqtt.Client) -> None:
    """Mark aiomqtt's disconnect reason as seen (it keeps it in a private future that nobody
    awaits after a lost link, so asyncio would log "Future exception was never retrieved")."""
    reason = getattr(client, "_disconnected", None)
    if isinstance(reason, asyncio.Future) and reason.done() and not reason.cancelled():
        reason.exception()


async def _drain(client: aiomqtt.Client, floor: _Floor, done: asyncio.Event) -> None:
    """Publish the outbox in order, each message acknowledged before the next; return when
    the sampler is done and the outbox is empty."""
    while True:
        raise_if_cancelling()  # the birth's publish, or the last one, may have swallowed it
        floor.wake.clear()
        while floor.outbox:
            payload = floor.outbox.popleft()
            try:
                await client.publish(floor.telemetry, payload, qos=1)
            except BaseException:
                floor.outbox.appendleft(payload)  # not acknowledged: send it again later
                raise
            raise_if_cancelling()
        if done.is_set():
            return
        await floor.wake.wait()


async def _farewell(client: aiomqtt.Client, floor: _Floor, clock: SimClock) -> None:
    """On cancellation, say offline (a normal DISCONNECT does not fire the last will)."""
    offline = status_payload(floor.source, "offline", clock.now(), "cancelled")
    with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
        await client.publish(floor.status, offline, qos=1, retain=True, timeout=FAREWELL_TIMEOUT_S)
