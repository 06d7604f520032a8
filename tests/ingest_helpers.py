"""Helpers of the ingest tests: a registry in SQL, a QoS 1 publisher, an in-process ingester."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from core.payload import Reading, encode_telemetry
from core.settings import DatabaseSettings, MqttSettings
from core.topics import telemetry_topic
from ingest.service import run_ingester
from ingest.settings import IngestSettings

BUILDING = "b1"


@dataclass(frozen=True)
class SensorRow:
    id: str
    kind: str
    floor: int
    building: str = BUILDING


def add_sensors(db_url: str, sensors: Iterable[SensorRow], floors: Sequence[int] = (1, 2, 3)):
    """Insert buildings, floors and sensors straight into the tables (no building file)."""
    sensors = list(sensors)
    with psycopg.connect(db_url, autocommit=True) as conn:
        for building in sorted({s.building for s in sensors} | {BUILDING}):
            conn.execute(
                "INSERT INTO buildings (id, name, timezone) VALUES (%s, %s, 'UTC')"
                " ON CONFLICT DO NOTHING",
                (building, building),
            )
            for floor in floors:
                conn.execute(
                    "INSERT INTO floors (building_id, number, area_m2, height_m,"
                    " load_limit_kg_m2, power_capacity_kw) VALUES (%s, %s, 2000, 3.9, 500, 800)"
                    " ON CONFLICT DO NOTHING",
                    (building, floor),
                )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO sensors (id, building_id, kind, unit, floor, interval_s)"
                " VALUES (%s, %s, %s, %s, %s, 1)",
                [(s.id, s.building, s.kind, "u", s.floor) for s in sensors],
            )
    return sensors


def standard_sensors(per_floor: int = 4, floors: Sequence[int] = (1, 2, 3)) -> list[SensorRow]:
    kinds = ["power", "load", "temperature", "fire"]
    return [
        SensorRow(f"f{f}-{kinds[i % len(kinds)]}-{i}", kinds[i % len(kinds)], f)
        for f in floors
        for i in range(per_floor)
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings_for(db_url: str, mqtt_url: str, prefix: str, **overrides: object) -> IngestSettings:
    values: dict[str, object] = {
        "client_id": f"ingest-{prefix.strip('/')}",
        "metrics_port": 0,
        "batch_age_s": 0.05,
    }
    values.update(overrides)
    return IngestSettings(
        db=DatabaseSettings(database_url=db_url),
        mqtt=MqttSettings(mqtt_url=mqtt_url, topic_prefix=prefix),
        **values,  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def running_ingester(settings: IngestSettings) -> AsyncIterator[asyncio.Task[None]]:
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_ingester(settings, stop=stop, ready=ready))
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        waiter.cancel()
        task.result()
    if waiter not in done:
        waiter.cancel()
        stop.set()
        await task
        raise TimeoutError("ingester did not subscribe")
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


class Publisher:
    """A paho QoS 1 publisher with a bounded number of unacknowledged messages."""

    def __init__(self, host: str, port: int, client_id: str = "", inflight: int = 200) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        self.client.max_inflight_messages_set(inflight)
        self.client.max_queued_messages_set(0)
        self._slots = threading.Semaphore(inflight)
        self.client.on_publish = lambda *_args: self._slots.release()
        self.client.connect(host, port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self._slots.acquire()
        info = self.client.publish(topic, payload, qos=qos)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"publish failed: {info.rc}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.wait_all()
        self.close()

    def wait_all(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        inflight = self.client._max_inflight_messages
        got = 0
        while got < inflight:
            if not self._slots.acquire(timeout=max(0.01, deadline - time.monotonic())):
                raise TimeoutError("publisher: PUBACKs missing")
            got += 1
        for _ in range(got):
            self._slots.release()


def topic(floor: int, prefix: str, building: str = BUILDING) -> str:
    return telemetry_topic(building, floor, prefix)


def message(readings: list[Reading], seq: int = 0) -> bytes:
    return encode_telemetry("test-gw", seq, readings)


def raw_message(readings: list[dict[str, object]], seq: int = 0) -> bytes:
    return json.dumps({"v": 1, "source": "test-gw", "seq": seq, "readings": readings}).encode()


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)


def scalar(db_url: str, query: str, *params: object) -> object:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
        assert row is not None
        return row[0]


async def wait_until(predicate: Callable[[], bool], within: float = 30, every: float = 0.1):
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(every)


def session_expiry(seconds: int) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = seconds
    return props


def value_for(kind: str, i: int) -> float:
    """A plausible value of a ``kind`` sensor (fire states cycle 0, 1, 2)."""
    if kind == "fire":
        return float(i % 3)
    if kind == "energy":
        return 1000.0 + i * 0.5
    return 1.0 + i


class TcpProxy:
    """A TCP proxy in the test's event loop; ``cut()`` drops every link and refuses new ones."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._links.update({writer, up_writer})
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            dst.transport.abort()


def via_proxy(db_url: str, port: int) -> str:
    return psycopg.conninfo.make_conninfo(db_url, host="127.0.0.1", port=str(port))


def db_target(db_url: str) -> tuple[str, int]:
    info = psycopg.conninfo.conninfo_to_dict(db_url)
    return str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432)
