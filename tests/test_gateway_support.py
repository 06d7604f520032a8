"""Helpers of the gateway and Modbus tests (no tests here): a small building, free ports,
a private Mosquitto that can be stopped and restarted, and an MQTT collector that survives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import yaml

from core.aio import run_apart
from core.building import Building
from core.payload import parse_envelope, parse_reading
from core.settings import MqttSettings
from gateway.settings import GatewaySettings
from upstairs.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent

KINDS = ("load", "power", "energy", "temperature", "fire")


def building_dict(per_kind: int = 2, interval_s: float = 0.2, floors: int = 1) -> dict[str, Any]:
    """A building of ``floors`` floors, each with ``per_kind`` sensors of every kind."""
    out: dict[str, Any] = {
        "id": "gwtest",
        "name": "Gateway test building",
        "timezone": "Asia/Shanghai",
        "floors": [],
        "zones": [],
        "sensors": [],
    }
    for floor in range(1, floors + 1):
        out["floors"].append(
            {
                "number": floor,
                "area_m2": 2000,
                "height_m": 3.9,
                "load_limit_kg_m2": 500,
                "power_capacity_kw": 2000,
            }
        )
        for z in range(1, per_kind + 1):
            out["zones"].append({"id": f"f{floor}-z{z}", "floor": floor, "area_m2": 500})
        for kind in KINDS:
            for n in range(1, per_kind + 1):
                sensor: dict[str, Any] = {
                    "id": f"gw-f{floor}-{kind}-{n}",
                    "kind": kind,
                    "floor": floor,
                    "interval_s": interval_s,
                }
                if kind in ("load", "temperature", "fire"):
                    sensor["zone"] = f"f{floor}-z{n}"
                out["sensors"].append(sensor)
    return out


def make_building(**kwargs: Any) -> Building:
    return Building.model_validate(building_dict(**kwargs))


def write_building(path: Path, **kwargs: Any) -> Path:
    path.write_text(yaml.safe_dump(building_dict(**kwargs)))
    return path


def free_ports(n: int) -> int:
    """The first of ``n`` consecutive ports that were all free a moment ago (a simulator of
    several floors listens on port_base + 1, + 2, ...; ``free_port`` vouches for one)."""
    for _ in range(100):
        first = free_port()
        with contextlib.ExitStack() as held:
            try:
                for port in range(first, first + n):
                    s = held.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return first
    raise RuntimeError(f"no {n} consecutive free ports")


def settings_for(
    mqtt_url: str, prefix: str, port_base: int, queue: Path, **kwargs: Any
) -> GatewaySettings:
    values: dict[str, Any] = {
        "publish_interval_s": 0.2,
        "modbus_port_base": port_base,
        "queue_path": queue,
        "modbus_timeout_s": 0.5,
        "backoff_max_s": 1.0,
    }
    values.update(kwargs)
    return GatewaySettings(mqtt=MqttSettings(mqtt_url=mqtt_url, topic_prefix=prefix), **values)


async def start_gateway(building_file: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    """``python -m gateway.service`` for floor 1, as the CLI would run it."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.service",
        "--building",
        str(building_file),
        "--floor",
        "1",
        cwd=ROOT,
        env=env,
        stderr=(building_file.parent / "gateway.log").open("ab"),
    )


def gateway_env(
    mqtt_url: str, prefix: str, port_base: int, queue: Path, **extra: str
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        UPSTAIRS_MQTT_URL=mqtt_url,
        UPSTAIRS_TOPIC_PREFIX=prefix,
        UPSTAIRS_GATEWAY_MODBUS_PORT_BASE=str(port_base),
        UPSTAIRS_GATEWAY_QUEUE_PATH=str(queue),
        UPSTAIRS_GATEWAY_PUBLISH_INTERVAL_S="0.2",
        UPSTAIRS_GATEWAY_MODBUS_TIMEOUT_S="0.5",
        UPSTAIRS_GATEWAY_BACKOFF_MAX_S="1",
    )
    env.update(extra)
    return env


async def wait_until(cond: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.05)


class PrivateBroker:
    """A Mosquitto of the test's own, with persistence, that can be stopped and restarted."""

    def __init__(self, directory: Path) -> None:
        assert shutil.which("mosquitto"), "mosquitto must be on PATH"
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.dir}/\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 100\n" + ("user root\n" if os.geteuid() == 0 else "")
            # As root, Mosquitto drops to user 'mosquitto', who cannot write the persistence
            # file here: sessions (the collector's subscription) would not survive a restart.
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.proc is None
        log = (self.dir / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@dataclass
class Collector:
    """Subscribes to a prefix with a persistent session and keeps every message it gets."""

    host: str
    port: int
    prefix: str
    client_id: str
    readings: list[tuple[str, str, float]] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    statuses: list[tuple[dict[str, Any], bool]] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while True:
            try:
                await run_apart(self._session())  # a cancel stays a cancel
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)

    async def _session(self) -> None:
        async with aiomqtt.Client(
            self.host, self.port, identifier=self.client_id, clean_session=False
        ) as client:
            await client.subscribe(f"{self.prefix}#", qos=1)
            self.ready.set()
            async for message in client.messages:
                self._handle(str(message.topic), bytes(message.payload), message.retain)

    def _handle(self, topic: str, payload: bytes, retain: bool) -> None:
        if topic.endswith("/telemetry"):
            envelope = parse_envelope(payload)
            self.seqs.append(envelope.seq)
            for raw in envelope.readings:
                reading = parse_reading(raw)
                self.readings.append((reading.sensor, raw["ts"], reading.value))
        elif topic.endswith("/status"):
            self.statuses.append((json.loads(payload), retain))

    def received(self) -> set[tuple[str, str]]:
        return {(sensor, ts) for sensor, ts, _ in self.readings}

    def gaps(self) -> list[dict[str, Any]]:
        return [s for s, _ in self.statuses if (s.get("detail") or "").startswith("gap ")]
