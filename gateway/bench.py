"""``upstairs bench gateway [--json]``: polling+publishing rate, memory and backlog drain.

Everything runs on this machine, each part in its own process: a bench Modbus server (N units
following the register map), the gateway (``python -m gateway.service``), the broker
(``UPSTAIRS_MQTT_URL``, else a private ``mosquitto`` from PATH) and a subscriber here.

1. *Ceiling* of the machine, measured in the same run: raw Modbus reads/s of one pymodbus
   client against the same server, and raw MQTT QoS 1 publishes/s (one small message each).
2. *Throughput*: the gateway polls ``--sensors`` devices every ``--interval`` s; readings/s is
   what the subscriber receives in ``--duration`` s after a warm-up; RSS is the gateway's peak.
3. *Drain*: the queue is filled as a 10-minute outage at 100 readings/s leaves it (60,000
   readings stamped over the last 10 minutes), the gateway starts with 100 readings/s of live
   polling, and drain_s is the time from its birth message to the last backlog reading received.

With ``--json`` the last line is one JSON object (``readings_per_s``, ``rss_mb``, ``drain_s``...).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import psutil
import yaml
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from core.building import SensorKind
from core.registers import REGISTER_MAP, Point
from core.settings import parse_mqtt_url
from gateway.queue import ReadingQueue

KINDS = (SensorKind.POWER, SensorKind.LOAD, SensorKind.TEMPERATURE, SensorKind.ENERGY)
PREFIX = "bench-gw/"


def bench_building(sensors: int, interval_s: float) -> dict[str, Any]:
    return {
        "id": "bench",
        "name": "Gateway benchmark",
        "timezone": "UTC",
        "floors": [
            {
                "number": 1,
                "area_m2": 2000,
                "height_m": 3.9,
                "load_limit_kg_m2": 500,
                "power_capacity_kw": 5000,
            }
        ],
        "zones": [{"id": "z1", "floor": 1, "area_m2": 2000}],
        "sensors": [
            {
                "id": f"bench-s{i:03d}",
                "kind": KINDS[i % len(KINDS)].value,
                "floor": 1,
                "zone": "z1",
                "interval_s": interval_s,
            }
            for i in range(sensors)
        ],
    }


# -- the bench Modbus server (a child process) -------------------------------------------


async def _answer(
    point: Point, _fc: int, start: int, _a: int, _c: int, regs: list[int], values: object
) -> ExcCodes | None:
    value = 100 + 50 * math.sin(time.time() / 60)
    regs[point.address - start : point.address - start + point.count] = [
        int(w) for w in point.encode(value)
    ]
    return None


async def _serve(port: int, units: int) -> None:
    devices = []
    for i in range(units):
        point = REGISTER_MAP[KINDS[i % len(KINDS)]]
        data = SimData(0, count=point.count, values=0, datatype=SimType.REGISTERS, readonly=True)
        devices.append(
            SimDevice(id=i + 1, simdata=[data], action=functools.partial(_answer, point))
        )
    server = ModbusTcpServer(devices, address=("127.0.0.1", port))
    await server.serve_forever()


# -- measuring ----------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_port(port: int, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def modbus_ceiling(port: int, units: int, seconds: float = 2.0) -> float:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, retries=0)
    await client.connect()
    point = REGISTER_MAP[SensorKind.POWER]
    reads, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        await client.read_input_registers(0, count=point.count, device_id=reads % units + 1)
        reads += 1
    client.close()
    return reads / seconds


async def mqtt_ceiling(host: str, port: int, seconds: float = 2.0) -> float:
    payload = b'{"v":1,"source":"x","seq":0,"readings":[]}' + b" " * 60
    async with aiomqtt.Client(host, port, identifier=f"bench-pub-{os.getpid()}") as client:
        client.pending_calls_threshold = 1000
        sent, end = 0, time.perf_counter() + seconds

        async def one() -> None:
            nonlocal sent
            while time.perf_counter() < end:
                await client.publish(f"{PREFIX}ceiling", payload, qos=1)
                sent += 1

        await asyncio.gather(*(one() for _ in range(20)))
    return sent / seconds


class Subscriber:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.readings = 0
        self.backlog_seen = 0
        self.backlog_before_ms = 0
        self.last_backlog_at = 0.0
        self.birth_at: float | None = None
        self.backlog_expected = 0
        self.drained = asyncio.Event()
        self.ready = asyncio.Event()

    async def run(self) -> None:
        async with aiomqtt.Client(self.host, self.port, identifier=f"bench-sub-{os.getpid()}") as c:
            await c.subscribe(f"{PREFIX}upstairs/#", qos=1)
            self.ready.set()
            async for message in c.messages:
                body = json.loads(bytes(message.payload))
                if str(message.topic).endswith("/status"):
                    if body.get("state") == "online" and not message.retain:
                        self.birth_at = self.birth_at or time.monotonic()
                    continue
                self.readings += len(body["readings"])
                cut = self.backlog_before_ms
                old = sum(1 for r in body["readings"] if _ms(r["ts"]) < cut)
                if old:
                    self.backlog_seen += old
                    self.last_backlog_at = time.monotonic()
                    if self.backlog_expected and self.backlog_seen >= self.backlog_expected:
                        self.drained.set()


def _ms(ts: str) -> int:
    from core.payload import parse_timestamp

    return round(parse_timestamp(ts).timestamp() * 1000)


@contextlib.asynccontextmanager
async def _process(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield proc.pid
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _bench(args: argparse.Namespace, mqtt_url: str, work: Path) -> dict[str, Any]:
    address = parse_mqtt_url(mqtt_url)
    port_base = _free_port() - 1
    units = max(args.sensors, args.live_sensors)
    out: dict[str, Any] = {"sensors": args.sensors, "interval_s": args.interval}
    async with _process("-m", "gateway.bench", "--serve", str(port_base + 1), str(units)):
        await _wait_port(port_base + 1)
        out["modbus_reads_per_s_1conn"] = round(await modbus_ceiling(port_base + 1, units))
        out["mqtt_qos1_publish_per_s"] = round(await mqtt_ceiling(address.host, address.port))
        env = dict(os.environ)
        env.update(
            UPSTAIRS_MQTT_URL=mqtt_url,
            UPSTAIRS_TOPIC_PREFIX=PREFIX,
            UPSTAIRS_GATEWAY_MODBUS_PORT_BASE=str(port_base),
        )
        sub = Subscriber(address.host, address.port)
        listening = asyncio.create_task(sub.run())
        try:
            await sub.ready.wait()
            await _throughput(args, work, env, sub, out)
            await _drain(args, work, env, sub, out)
        finally:
            listening.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await listening
    return out


async def _throughput(
    args: argparse.Namespace, work: Path, env: dict[str, str], sub: Subscriber, out: dict[str, Any]
) -> None:
    building = work / "throughput.yaml"
    building.write_text(yaml.safe_dump(bench_building(args.sensors, args.interval)))
    env = dict(env, UPSTAIRS_GATEWAY_QUEUE_PATH=str(work / "throughput.sqlite"))
    gw_args = ("-m", "gateway.service", "--building", str(building), "--floor", "1")
    async with _process(*gw_args, env=env) as pid:
        gateway = psutil.Process(pid)
        await asyncio.sleep(args.warmup)
        start_n, start_t = sub.readings, time.monotonic()
        gateway.cpu_percent()
        rss = 0
        while time.monotonic() - start_t < args.duration:
            rss = max(rss, gateway.memory_info().rss)
            await asyncio.sleep(0.25)
        elapsed = time.monotonic() - start_t
        out["readings_per_s"] = round((sub.readings - start_n) / elapsed)
        out["offered_per_s"] = round(args.sensors / args.interval)
        out["gateway_cpu_pct"] = round(gateway.cpu_percent())
        out["rss_mb"] = round(rss / 2**20, 1)


async def _drain(
    args: argparse.Namespace, work: Path, env: dict[str, str], sub: Subscriber, out: dict[str, Any]
) -> None:
    building = work / "drain.yaml"
    live = bench_building(args.live_sensors, args.live_sensors / args.live_rate)
    building.write_text(yaml.safe_dump(live))
    queue_path = work / "drain.sqlite"
    now_ms = time.time_ns() // 1_000_000
    ids = [s["id"] for s in live["sensors"]]
    outage_ms = args.outage_s * 1000
    with ReadingQueue(queue_path, max_readings=10**7, max_age_s=86_400) as queue:
        rows = [
            (ids[i % len(ids)], now_ms - outage_ms + i * outage_ms // args.backlog, 1.0 + i % 7)
            for i in range(args.backlog)
        ]
        queue.append(rows, now_ms)
    sub.backlog_before_ms = now_ms
    sub.backlog_seen, sub.birth_at, sub.backlog_expected = 0, None, args.backlog
    env = dict(env, UPSTAIRS_GATEWAY_QUEUE_PATH=str(queue_path))
    gw_args = ("-m", "gateway.service", "--building", str(building), "--floor", "1")
    async with _process(*gw_args, env=env):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sub.drained.wait(), args.drain_timeout)
    out["backlog"] = args.backlog
    out["backlog_received"] = sub.backlog_seen
    if sub.birth_at is None or sub.backlog_seen < args.backlog:
        out["drain_s"] = None
    else:
        out["drain_s"] = round(sub.last_backlog_at - sub.birth_at, 2)


@contextlib.contextmanager
def _broker(work: Path) -> Any:
    url = os.environ.get("UPSTAIRS_MQTT_URL")
    if url:
        yield url
        return
    if not shutil.which("mosquitto"):
        raise SystemExit("set UPSTAIRS_MQTT_URL, or put mosquitto on PATH")
    port = _free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    proc = subprocess.Popen(
        ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(0.3)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _print(result: dict[str, Any]) -> None:
    print(
        f"gateway: {result['readings_per_s']} readings/s received "
        f"(offered {result['offered_per_s']}: {result['sensors']} devices every "
        f"{result['interval_s']} s), peak RSS {result['rss_mb']} MB, "
        f"CPU {result['gateway_cpu_pct']}%"
    )
    print(
        f"drain: {result['backlog_received']}/{result['backlog']} backlog readings in "
        f"{result['drain_s']} s after reconnection, with live polling"
    )
    print(
        f"machine ceiling: {result['modbus_reads_per_s_1conn']} Modbus reads/s (one client), "
        f"{result['mqtt_qos1_publish_per_s']} MQTT QoS 1 publishes/s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="upstairs bench gateway", description=__doc__)
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--sensors", type=int, default=240, help="devices on the floor")
    parser.add_argument("--interval", type=float, default=0.1, help="poll interval (s)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--backlog", type=int, default=60_000, help="readings of the outage")
    parser.add_argument("--outage-s", type=int, default=600, dest="outage_s")
    parser.add_argument("--live-rate", type=float, default=100.0, dest="live_rate")
    parser.add_argument("--live-sensors", type=int, default=50, dest="live_sensors")
    parser.add_argument("--drain-timeout", type=float, default=120.0, dest="drain_timeout")
    parser.add_argument(
        "--serve", nargs=2, type=int, metavar=("PORT", "UNITS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.serve:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(*args.serve))
        return 0
    base = Path(os.environ.get("UPSTAIRS_DATA_DIR", ".upstairs"))
    base.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(dir=base, prefix="bench-gw-") as tmp,
        _broker(Path(tmp)) as url,
    ):
        result = asyncio.run(_bench(args, url, Path(tmp)))
    _print(result)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
