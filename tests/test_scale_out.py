"""Scale-out: three ingesters share one subscription group; one is killed mid-run.

Mosquitto does not hand a dead group member's unacknowledged QoS 1 messages to the other
members (they stay queued in that member's persistent session; eclipse/mosquitto shared-
subscription redelivery issue). The platform designs around it: every ingester has a fixed
client id and a persistent session, and its supervisor (systemd, compose, the demo launcher)
restarts it, so the broker redelivers to the same session. This test does exactly that and
demands exact counts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties

from core.building_file import load_building
from core.building_store import apply_building
from core.payload import Reading, encode_telemetry
from core.topics import telemetry_topic
from tests.conftest import REF_TOWER, ROOT
from upstairs.embedded import EmbeddedBroker

MESSAGES = 300
PER_MESSAGE = 100


def _ingester(env: dict[str, str], n: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**env, "UPSTAIRS_INGEST_CLIENT_ID": f"scale-ingest-{n}"}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "upstairs", "ingest"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _count(db_url: str) -> tuple[int, int]:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT (sensor_id, ts)) FROM readings"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@pytest.mark.timeout(240)
def test_three_ingesters_one_killed_exact_counts(db_url: str, tmp_path: Path) -> None:
    building = load_building(REF_TOWER)
    with psycopg.connect(db_url) as conn:
        apply_building(conn, building)
    loads = {f.number: [s.id for s in building.sensors_on(f.number) if s.kind == "load"]
             for f in building.floors}  # fmt: skip
    prefix = "scale/"
    with EmbeddedBroker(tmp_path / "broker", prefer="mosquitto") as broker:
        env = {
            **os.environ,
            "UPSTAIRS_DATABASE_URL": db_url,
            "UPSTAIRS_MQTT_URL": broker.url,
            "UPSTAIRS_TOPIC_PREFIX": prefix,
            "UPSTAIRS_INGEST_SHARED_GROUP": "ingest",
            "UPSTAIRS_INGEST_METRICS_PORT": "0",
        }
        log = tmp_path / "ingest.log"
        ingesters = {n: _ingester(env, n, log) for n in (1, 2, 3)}
        publisher = paho.Client(CallbackAPIVersion.VERSION2, "scale-pub", protocol=paho.MQTTv5)
        publisher.connect("127.0.0.1", broker.port, clean_start=True, properties=Properties(1))
        publisher.loop_start()
        try:
            time.sleep(3)  # the three sessions subscribe
            base = datetime.now(UTC) - timedelta(hours=1)
            for i in range(MESSAGES):
                floor = i % 10 + 1
                readings = [
                    Reading(
                        loads[floor][j % 4],
                        base + timedelta(milliseconds=i * PER_MESSAGE + j),
                        200.0 + j % 7,
                    )
                    for j in range(PER_MESSAGE)
                ]
                info = publisher.publish(
                    telemetry_topic(building.id, floor, prefix),
                    encode_telemetry("scale-pub", i, readings),
                    qos=1,
                )
                info.wait_for_publish(10)
                if i == MESSAGES // 3:
                    ingesters[2].send_signal(signal.SIGKILL)
                    ingesters[2].wait()
                if i == MESSAGES // 2:  # its supervisor brings it back under the same id
                    ingesters[2] = _ingester(env, 2, log)
                time.sleep(0.005)
            deadline = time.monotonic() + 90
            rows, distinct = _count(db_url)
            while rows < MESSAGES * PER_MESSAGE and time.monotonic() < deadline:
                time.sleep(0.5)
                rows, distinct = _count(db_url)
            time.sleep(2)  # nothing more may arrive: exactly once in the table
            rows, distinct = _count(db_url)
        finally:
            publisher.loop_stop()
            publisher.disconnect()
            for proc in ingesters.values():
                proc.send_signal(signal.SIGTERM)
            for proc in ingesters.values():
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    assert (rows, distinct) == (MESSAGES * PER_MESSAGE, MESSAGES * PER_MESSAGE), log.read_text()[
        -3000:
    ]
    with psycopg.connect(db_url) as conn:
        dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
    assert dead == (0,)
