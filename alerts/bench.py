"""``upstairs bench alerts``: publish-to-alert-event latency under background telemetry.

Runs the real engine (``python -m alerts``) against the configured PostgreSQL and broker in a
schema and topic prefix of its own, a background publisher process at the requested
readings/s, and measures, for violating readings published one at a time, the time from
publish to the alert event arriving at an MQTT subscriber (load rule with on-delay 0, fire).
It also measures the machine's ceiling in the same run: a bare publish -> receive round trip
of a telemetry message of the same size through the same broker.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from core.building import Building
from core.building_store import apply_building
from core.db import migrate, with_search_path
from core.payload import Reading, encode_telemetry
from core.settings import parse_mqtt_url
from core.topics import alerts_topic, state_topic, telemetry_topic

BUILDING = "bench-tower"
FLOORS, ZONES, TEMPS = 50, 20, 40  # zones and temperature sensors per floor


def _building() -> Building:
    floors, zones, sensors = [], [], []
    for f in range(1, FLOORS + 1):
        floors.append({"number": f, "area_m2": 2000, "height_m": 3.9,
                       "load_limit_kg_m2": 500, "power_capacity_kw": 2000})  # fmt: skip
        for z in range(ZONES):
            zid = f"b{f:02d}-z{z:03d}"
            zones.append({"id": zid, "floor": f, "area_m2": 100})
            sensors.append({"id": f"{zid}-load", "kind": "load", "floor": f, "zone": zid,
                            "interval_s": 86_400})  # fmt: skip
            sensors.append({"id": f"{zid}-fire", "kind": "fire", "floor": f, "zone": zid,
                            "interval_s": 86_400})  # fmt: skip
        for t in range(TEMPS):
            sensors.append({"id": f"b{f:02d}-temp{t:03d}", "kind": "temperature", "floor": f,
                            "interval_s": 86_400})  # fmt: skip
    return Building.model_validate({
        "id": BUILDING, "name": "Alert bench", "timezone": "UTC", "floors": floors,
        "zones": zones, "sensors": sensors,
        "alerts": {"zone_load": {"on_delay_s": 0}, "floor_load": {"on_delay_s": 0},
                   "flood": {"max_new_alerts": 1_000_000}},
    })  # fmt: skip


def _no_delay(_c: Any, _u: Any, sock: Any) -> None:
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _client(url: str, nagle: bool = False) -> paho.Client:
    address = parse_mqtt_url(url)
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    if address.username:
        client.username_pw_set(address.username, address.password)
    if not nagle:  # measure the engine, not Nagle's algorithm in the measuring client
        client.on_socket_open = _no_delay
    client.connect(address.host, address.port)
    client.loop_start()
    return client


def _background(url: str, prefix: str, rate: int, stop: Any, count: Any) -> None:
    client = _client(url)
    batch = TEMPS  # one message per floor of all its temperature sensors
    seq, sent, started = 0, 0, time.monotonic()
    while not stop.is_set():
        for f in range(1, FLOORS + 1):
            now = datetime.now(UTC)
            readings = [Reading(f"b{f:02d}-temp{t:03d}", now, 22.0 + (seq % 7) * 0.01)
                        for t in range(batch)]  # fmt: skip
            seq += 1
            client.publish(telemetry_topic(BUILDING, f, prefix),
                           encode_telemetry(f"bench-f{f}", seq, readings), qos=1)  # fmt: skip
            sent += batch
            if f % 10:
                continue
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        count.value = sent
    count.value = sent
    client.loop_stop()
    client.disconnect()


class _Latency:
    def __init__(self) -> None:
        self.sent: dict[str, float] = {}
        self.got: dict[str, float] = {}
        self.cond = threading.Condition()

    def on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        t = time.perf_counter()
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        alert = body.get("alert")
        if alert is not None:
            key = alert["sensor"] or (f"{alert['zone']}-load" if alert["zone"] else None)
        else:
            key = body.get("k")
        if body.get("kind", "opened") != "opened" or key is None:
            return
        with self.cond:
            self.got.setdefault(key, t)
            self.cond.notify_all()


def _echo(key: str, pad: int) -> bytes:
    return json.dumps({"k": key, "pad": "x" * pad}).encode()


def _violation(seq: int, sensor: str, value: float) -> bytes:
    return encode_telemetry("bench", seq, [Reading(sensor, datetime.now(UTC), value)])


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def _measure(
    client: paho.Client,
    lat: _Latency,
    items: Sequence[tuple[str, str, Callable[[], bytes]]],
    per_s: float,
) -> list[float]:
    """Publish one item at a time (payload made just before: a reading stamped "now")."""
    for key, topic, make in items:
        payload = make()
        lat.sent[key] = time.perf_counter()
        client.publish(topic, payload, qos=1)
        time.sleep(1.0 / per_s)
    deadline = time.monotonic() + 30
    with lat.cond:
        while not all(k in lat.got for k, _, _ in items) and time.monotonic() < deadline:
            lat.cond.wait(0.5)
    return [(lat.got[k] - lat.sent[k]) * 1000 for k, _, _ in items if k in lat.got]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="upstairs bench alerts", description=__doc__)
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--violations", type=int, default=1000, help="per rule (max 1000)")
    parser.add_argument("--background", type=int, default=10_000, help="readings/s")
    parser.add_argument("--pace", type=float, default=100.0, help="violations per second")
    parser.add_argument(
        "--nagle",
        action="store_true",
        help="leave Nagle's algorithm on in the measuring client (adds 20-40 ms per message)",
    )
    args = parser.parse_args(argv)
    db, mqtt_url = os.environ.get("UPSTAIRS_DATABASE_URL"), os.environ.get("UPSTAIRS_MQTT_URL")
    if not db or not mqtt_url:
        print("bench alerts: set UPSTAIRS_DATABASE_URL and UPSTAIRS_MQTT_URL", file=sys.stderr)
        return 2
    n = max(1, min(args.violations, FLOORS * ZONES))
    schema, prefix = f"bench_{secrets.token_hex(4)}", f"bench-{secrets.token_hex(4)}/"
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    url = with_search_path(db, schema)
    engine: subprocess.Popen[bytes] | None = None
    stop, count = mp.Event(), mp.Value("q", 0)
    bg = mp.Process(target=_background, args=(mqtt_url, prefix, args.background, stop, count))
    client = _client(mqtt_url, nagle=args.nagle)
    try:
        migrate(url)
        building = _building()
        with psycopg.connect(url) as conn:
            apply_building(conn, building)
            conn.execute("UPDATE buildings SET alert_config = %s WHERE id = %s",
                         (building.alerts.model_dump_json(), BUILDING))  # fmt: skip
        lat = _Latency()
        client.on_message = lat.on_message
        client.subscribe(alerts_topic(BUILDING, prefix), qos=1)
        client.subscribe(f"{prefix}bench/echo", qos=1)
        ready = threading.Event()
        client.message_callback_add(state_topic(BUILDING, 1, prefix), lambda *_: ready.set())
        client.subscribe(state_topic(BUILDING, 1, prefix), qos=1)
        env = {**os.environ, "UPSTAIRS_DATABASE_URL": url, "UPSTAIRS_TOPIC_PREFIX": prefix,
               "UPSTAIRS_ALERTS_BUILDINGS": json.dumps([BUILDING]),
               "UPSTAIRS_ALERTS_SESSION_EXPIRY_S": "0"}  # fmt: skip
        engine = subprocess.Popen([sys.executable, "-m", "alerts"], env=env,
                                  stderr=subprocess.DEVNULL)  # fmt: skip
        if not ready.wait(60):
            print("bench alerts: the engine did not start", file=sys.stderr)
            return 1
        bg.start()
        time.sleep(2.0)  # background at full rate before measuring
        t_bg = time.monotonic()
        c0 = count.value
        zones = [f"b{f:02d}-z{z:03d}" for z in range(ZONES) for f in range(1, FLOORS + 1)][:n]
        sample = encode_telemetry(
            "bench", 0, [Reading(f"{zones[0]}-load", datetime.now(UTC), 600.0)]
        )
        echo = [(f"e{i}", f"{prefix}bench/echo",
                 partial(_echo, f"e{i}", max(0, len(sample) - 20))) for i in range(n)]  # fmt: skip
        rtt = _measure(client, lat, echo, args.pace)
        load = _measure(client, lat, [
            (f"{z}-load", telemetry_topic(BUILDING, int(z[1:3]), prefix),
             partial(_violation, i, f"{z}-load", 600.0))
            for i, z in enumerate(zones)], args.pace)  # fmt: skip
        fire = _measure(client, lat, [
            (f"{z}-fire", telemetry_topic(BUILDING, int(z[1:3]), prefix),
             partial(_violation, i, f"{z}-fire", 1.0))
            for i, z in enumerate(zones)], args.pace)  # fmt: skip
        bg_rate = (count.value - c0) / (time.monotonic() - t_bg)
    finally:
        stop.set()
        if bg.is_alive() or bg.pid is not None:
            bg.join(10)
        if engine is not None:
            engine.send_signal(signal.SIGTERM)
            try:
                engine.wait(15)
            except subprocess.TimeoutExpired:
                engine.kill()
                engine.wait()
        for f in range(1, FLOORS + 1):  # clear the retained states of the bench
            client.publish(state_topic(BUILDING, f, prefix), b"", qos=1, retain=True)
        time.sleep(0.2)
        client.loop_stop()
        client.disconnect()
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
    result = {
        "load_p50_ms": round(_pct(load, 50), 2) if load else None,
        "load_p99_ms": round(_pct(load, 99), 2) if load else None,
        "fire_p50_ms": round(_pct(fire, 50), 2) if fire else None,
        "fire_p99_ms": round(_pct(fire, 99), 2) if fire else None,
        "broker_rtt_p50_ms": round(_pct(rtt, 50), 2) if rtt else None,
        "broker_rtt_p99_ms": round(_pct(rtt, 99), 2) if rtt else None,
        "background_readings_per_s": round(bg_rate),
        "violations_per_rule": n,
        "load_events": len(load),
        "fire_events": len(fire),
        "cpus": os.cpu_count(),
    }
    print(f"alert bench: {n} violating readings per rule at {args.pace:g}/s, background "
          f"{result['background_readings_per_s']} readings/s ({os.cpu_count()} CPUs)")  # fmt: skip
    for name, values in (("load", load), ("fire", fire), ("bare broker rtt", rtt)):
        if values:
            print(f"  {name:16s} p50 {_pct(values, 50):7.2f} ms  p99 {_pct(values, 99):7.2f} ms"
                  f"  max {max(values):7.2f} ms  ({len(values)} of {n})")  # fmt: skip
    if args.json:
        print(json.dumps(result))
    ok = len(load) == n and len(fire) == n
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
