"""Helpers of the ingest tests: a registry in SQL, a QoS 1 publisher, an in-process ingester."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

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
from upstairs.embedded import free_port

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


def settings_for(db_url: str, mqtt_url: str, prefix: str, **overrides: object) -> IngestSettings:
    values: dict[str, object] = {
        "client_id": f"ingest-{prefix.strip('/')}",
        "metrics_port": 0,
        "batch_age_s": 0.05,
        "rollup_interval_s": 0.2,
        "session_expiry_s": 60,  # do not leave week-long sessions on the shared broker
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
        # While the broker is away paho keeps a QoS 1 message and sends it on reconnect.
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
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


def rollups_settled(db_url: str) -> bool:
    """No rollup partials pending and every stored reading counted in both rollup levels."""
    return bool(
        scalar(
            db_url,
            "SELECT NOT EXISTS (SELECT 1 FROM rollup_pending)"
            " AND (SELECT count(*) FROM readings)"
            " = (SELECT coalesce(sum(count), 0) FROM rollups_1m)"
            " AND (SELECT count(*) FROM readings)"
            " = (SELECT coalesce(sum(count), 0) FROM rollups_1h)",
        )
    )


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


class PrivateMosquitto:
    """A Mosquitto of the test's own (persistence on, big queues) that can be restarted."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {folder}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 1000000\n"
            "max_inflight_messages 0\n"
            "log_type error\n"
        )

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(self.folder / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("private mosquitto did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        """Graceful stop (SIGTERM): Mosquitto writes its persistence file."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def __enter__(self) -> PrivateMosquitto:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


def ingester_process(env: dict[str, str], client_id: str, metrics_port: int):
    """The ingester as a process of its own (``upstairs ingest``), to be killed for real."""
    env = dict(env)
    env.update(
        UPSTAIRS_INGEST_CLIENT_ID=client_id,
        UPSTAIRS_INGEST_METRICS_PORT=str(metrics_port),
        UPSTAIRS_INGEST_BATCH_AGE_S="0.05",
        UPSTAIRS_INGEST_ROLLUP_INTERVAL_S="0.2",
        UPSTAIRS_INGEST_SESSION_EXPIRY_S="60",  # do not leave week-long sessions behind
    )
    level = os.environ.get("UPSTAIRS_TEST_INGEST_LOG", "WARNING")
    code = (
        "import sys; "
        + f"from ingest.service import main; sys.exit(main(['--log-level', {level!r}]))"
    )
    return subprocess.Popen([sys.executable, "-c", code], env=env)


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def metric(port: int, name: str) -> float | None:
    """A sample's value from /metrics (``name`` may carry labels), None when absent."""
    try:
        text = metrics_text(port)
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def refresher_process(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``python -m ingest.refresh`` (the rollup refresher alone), stderr captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "ingest.refresh", "--log-level", "WARNING"],
        env={**env, "UPSTAIRS_INGEST_ROLLUP_INTERVAL_S": "0.2"},
        stderr=subprocess.PIPE,
    )
