"""``upstairs bench ingest``: end-to-end ingest rate against the configured services.

Publishers in separate processes send N readings in messages of K readings at QoS 1 to an
ingester running as its own process; the rate is readings committed per second, from the
first publish to the last commit. Measured in the same run, on the same machine: the ceiling
(one process binary-COPYing the same rows into the same keyed, partitioned ``readings``;
measured before and after the ingest, the higher of the two counts), and
the broker's delivery rate for messages of the same size. Afterwards the database is counted:
``lost`` readings never stored, ``duplicated`` readings stored or rolled up twice.

Everything runs in a schema and topic prefix of its own, dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from core.db import migrate, with_search_path
from core.settings import DatabaseSettings, MqttAddress, MqttSettings, parse_mqtt_url
from ingest.bench_data import (
    FLOORS,
    Plan,
    backend_cpu,
    copy_ceiling,
    cpu_seconds,
    peak_rss_mb,
    per_row_us,
    register,
)
from ingest.bench_mqtt import broker_rate
from ingest.bench_publish import publish_messages

logger = logging.getLogger(__name__)

WINDOW_MESSAGES = 900  # inside even a default Mosquitto's per-client queue (1000)


@dataclass
class Report:
    readings: int
    batch: int
    publishers: int
    seconds: float
    readings_per_s: float
    copy_ceiling_rows_per_s: float  # the higher of two runs: before and after the ingest
    copy_ceiling_runs: list[float]
    ratio: float
    broker_msgs_per_s: float
    broker_readings_per_s: float
    rss_mb: float
    lost: int
    duplicated: int
    rollups_consistent: bool
    rollup_lag_s: float  # after the last commit, until the rollups held every reading
    ingesters: int  # processes sharing the stream ($share/bench/...); rss_mb is the largest
    window_messages: int
    # where the time goes: CPU microseconds per row of the ceiling's process and backend,
    # per reading of the ingester process(es) and their database backends (writers and
    # rollups; None when the database runs on another machine)
    ceiling_cpu_us_per_row: dict[str, float | None]
    ingest_cpu_us_per_reading: dict[str, float | None]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def _start_ingester(
    db_url: str, mqtt_url: str, prefix: str, port: int, index: int, shared: bool
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if shared:  # several ingesters split the stream through a shared subscription
        env["UPSTAIRS_INGEST_SHARED_GROUP"] = "bench"
    env.update(
        UPSTAIRS_DATABASE_URL=db_url,
        UPSTAIRS_MQTT_URL=mqtt_url,
        UPSTAIRS_TOPIC_PREFIX=prefix,
        UPSTAIRS_INGEST_METRICS_PORT=str(port),
        UPSTAIRS_INGEST_CLIENT_ID=f"bench-{prefix.strip('/')}-{index}",
        UPSTAIRS_INGEST_SESSION_EXPIRY_S="120",
    )
    level = os.environ.get("UPSTAIRS_BENCH_INGEST_LOG", "WARNING")
    code = (
        f"import sys; from ingest.service import main; sys.exit(main(['--log-level', {level!r}]))"
    )
    return subprocess.Popen([sys.executable, "-c", code], env=env)


def _wait_rollups(url: str, timeout: float) -> float:
    """Seconds until no rollup mark is left and the minute rollups count every reading."""
    began = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        while time.perf_counter() - began < timeout:
            row = conn.execute(
                "SELECT NOT EXISTS (SELECT 1 FROM rollup_pending) AND (SELECT count(*) FROM"
                " readings) = (SELECT coalesce(sum(count), 0) FROM rollups_1m)"
            ).fetchone()
            if row is not None and row[0]:
                break
            time.sleep(0.05)
    return time.perf_counter() - began


def run(
    db: str,
    mqtt_url: str,
    readings: int,
    batch: int,
    publishers: int,
    sensors: int,
    window: int = WINDOW_MESSAGES,
    ingesters: int = 1,
) -> Report:
    tag = secrets.token_hex(4)
    prefix = f"bench-{tag}/"
    schema, ceiling_schema = f"bench_{tag}", f"bench_{tag}_ceiling"
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=readings // sensors + 120)
    plan = Plan(readings, batch, sensors, base, prefix)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE SCHEMA {ceiling_schema}")
    url, ceiling_url = with_search_path(db, schema), with_search_path(db, ceiling_schema)
    procs_in: list[subprocess.Popen[bytes]] = []
    try:
        migrate(url)
        migrate(ceiling_url)
        register(url, plan)
        logger.info("measuring the COPY ceiling (%d rows)", readings)
        ceiling_before, ceiling_cpu = copy_ceiling(ceiling_url, plan)
        with psycopg.connect(ceiling_url, autocommit=True) as conn:
            conn.execute("TRUNCATE readings")  # nothing left for autovacuum meanwhile
        address = parse_mqtt_url(mqtt_url)
        sample = plan.messages([0])[: max(1, min(20_000, readings // batch // FLOORS))]
        logger.info("measuring the broker (%d messages)", len(sample))
        broker = broker_rate(address, f"{prefix}probe/", sample)
        ports = [_free_port() for _ in range(ingesters)]
        procs_in = [
            _start_ingester(url, mqtt_url, prefix, p, i, ingesters > 1) for i, p in enumerate(ports)
        ]
        deadline = time.monotonic() + 60
        for port, ingester in zip(ports, procs_in, strict=True):
            while _metric(port, "upstairs_ingest_broker_connected") != 1.0:
                if time.monotonic() > deadline or ingester.poll() is not None:
                    raise RuntimeError("the ingester did not come up")
                time.sleep(0.1)
        floors = [[f for f in range(FLOORS) if f % publishers == p] for p in range(publishers)]
        ctx = mp.get_context("spawn")
        ready, go = ctx.Barrier(publishers + 1), ctx.Event()
        # Closed loop: publishers stay at most WINDOW messages ahead of what is committed, so
        # the broker's per-client queue (Mosquitto: max_queued_messages, 1000 by default)
        # never overflows and drops; the rate measured is what the ingester sustains.
        allowed = ctx.Value("q", window * batch, lock=False)
        procs = [
            ctx.Process(target=_publisher, args=(address, plan, fl, ready, go, allowed))
            for fl in floors
        ]
        for proc in procs:
            proc.start()
        ready.wait(timeout=600)
        started = time.perf_counter()
        go.set()
        stored = 0.0
        last_progress, last_stored = time.monotonic(), -1.0
        while stored < readings:
            time.sleep(0.05)
            stored = sum(_metric(p, "upstairs_ingest_readings_stored_total") or 0.0 for p in ports)
            allowed.value = int(stored) + window * batch
            if stored != last_stored:
                last_progress, last_stored = time.monotonic(), stored
            elif time.monotonic() - last_progress > 60:
                logger.error("no progress for 60 s at %d of %d readings", stored, readings)
                break
        seconds = time.perf_counter() - started
        rollup_lag = _wait_rollups(url, timeout=120)
        rss = max(peak_rss_mb(i.pid) for i in procs_in)
        spent = [cpu_seconds(i.pid) for i in procs_in]
        ingest_cpu = {
            "ingester": per_row_us(
                None if None in spent else sum(s for s in spent if s is not None), readings
            ),
            "db_writers": per_row_us(backend_cpu(db, f"upstairs-ingest writer %{tag}-%"), readings),
            "db_rollups": per_row_us(
                backend_cpu(db, f"upstairs-ingest rollups %{tag}-%"), readings
            ),
        }
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():  # stalled (the loop above gave up): the counts say what is lost
                proc.terminate()
                proc.join()
        for ingester in procs_in:
            ingester.send_signal(signal.SIGTERM)
        for ingester in procs_in:
            ingester.wait(timeout=60)
        procs_in = []
        # The ceiling again, now that the ingester is gone: the higher of the two counts, so
        # a busy moment during one of them cannot flatter the ratio.
        logger.info("measuring the COPY ceiling again")
        ceiling_after, cpu_after = copy_ceiling(ceiling_url, plan)
        ceiling = max(ceiling_before, ceiling_after)
        if ceiling_after > ceiling_before:
            ceiling_cpu = cpu_after
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT count(*), count(DISTINCT (sensor_id, ts)),"
                " (SELECT coalesce(sum(count), 0) FROM rollups_1m),"
                " (SELECT coalesce(sum(count), 0) FROM rollups_1h),"
                " (SELECT coalesce(sum(count), 0) FROM rollups_1d) FROM readings"
            ).fetchone()
        assert row is not None
        total, distinct, in_1m, in_1h, in_1d = (int(v) for v in row)
        rate = distinct / seconds
        return Report(
            readings=readings,
            batch=batch,
            publishers=publishers,
            seconds=round(seconds, 3),
            readings_per_s=round(rate),
            copy_ceiling_rows_per_s=round(ceiling),
            copy_ceiling_runs=[round(ceiling_before), round(ceiling_after)],
            ratio=round(rate / ceiling, 3),
            ceiling_cpu_us_per_row=ceiling_cpu,
            ingest_cpu_us_per_reading=ingest_cpu,
            broker_msgs_per_s=round(broker),
            broker_readings_per_s=round(broker * batch),
            rss_mb=round(rss, 1),
            lost=readings - distinct,
            duplicated=total - distinct,
            rollups_consistent=in_1m == total and in_1h == total and in_1d == total,
            rollup_lag_s=round(rollup_lag, 2),
            ingesters=ingesters,
            window_messages=window,
        )
    finally:
        for ingester in procs_in:
            ingester.kill()
            ingester.wait()
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.execute(f"DROP SCHEMA IF EXISTS {ceiling_schema} CASCADE")


def _publisher(address: MqttAddress, plan: Plan, floors: list[int], ready: Any, go: Any,
               allowed: Any) -> None:  # fmt: skip
    messages = plan.messages(floors)
    share = len(floors) / FLOORS  # floors carry equal numbers of readings (within one)
    ready.wait()
    go.wait()

    def may_send(sent_readings: int) -> bool:
        # this publisher's share of the window (publishers may hold unequal floor counts)
        return bool(sent_readings < allowed.value * share + plan.batch)

    publish_messages(address, messages, may_send, plan.batch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="upstairs bench ingest", description=__doc__)
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=100, help="readings per MQTT message")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--sensors", type=int, default=1000, help="sensors (10 floors)")
    parser.add_argument(
        "--window",
        type=int,
        default=WINDOW_MESSAGES,
        help="messages publishers may run ahead of the commits (raise it only on a broker"
        " whose per-client queue holds that many: Mosquitto's max_queued_messages)",
    )
    parser.add_argument(
        "--ingesters", type=int, default=1, help="ingester processes on a shared subscription"
    )
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    db, mqtt = DatabaseSettings().database_url, MqttSettings().mqtt_url
    if not db or not mqtt:
        logger.error("set UPSTAIRS_DATABASE_URL and UPSTAIRS_MQTT_URL (or run via upstairs)")
        return 2
    if args.sensors < FLOORS or args.readings < 1 or args.batch < 1:
        parser.error("need at least 10 sensors, 1 reading and 1 reading per message")
    report = run(
        db,
        mqtt,
        args.readings,
        args.batch,
        args.publishers,
        args.sensors,
        args.window,
        args.ingesters,
    )
    for key, value in asdict(report).items():
        print(f"{key:>24}: {value}")
    if args.json:
        print(json.dumps(asdict(report)))
    return 0 if report.lost == 0 and report.duplicated == 0 else 1
