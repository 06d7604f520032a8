"""MQTT security: the generated ACLs against a real Mosquitto (see ``tests/mqtt_broker.py``).

No subscriber, not even one allowed to read every topic, receives anything a gateway publishes
outside its own floor, and with the real ingester behind the ACL such a publish stores 0 rows.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from core.building_file import load_building
from tests.mqtt_broker import (
    NOT_AUTHORIZED,
    REF_TOWER,
    B,
    Broker,
    as_user,
    connect,
    settle,
)
from upstairs.mqtt_credentials import (
    gateway_user,
)

pytestmark = pytest.mark.timeout(60)


def test_gateway_publishing_to_another_floor_reaches_no_subscriber(broker: Broker) -> None:
    """The DB-level "stores 0 rows" check needs the ingester; this is the same cut one hop
    earlier: a subscriber that may read every topic of the building, and the ingesters' shared
    subscription, receive nothing the floor-3 gateway publishes outside its own floor."""
    everything = as_user(broker, "upstairs-operator")
    everything.subscribe("#")
    ingest = as_user(broker, "upstairs-ingest")
    ingest.subscribe("$share/ingest/upstairs/v1/+/+/telemetry")
    gateway = as_user(broker, gateway_user(B, 3))
    try:
        forbidden = [
            f"upstairs/v1/{B}/4/telemetry",  # another floor
            f"upstairs/v1/{B}/4/status",
            f"upstairs/v1/{B}/3/state",  # its floor, a channel it does not own
            f"upstairs/v1/{B}/alerts",
            f"upstairs/v1/{B}/commands",
            "upstairs/v1/other-tower/3/telemetry",  # another building
            "upstairs/v2/ref-tower/3/telemetry",
            "somewhere/else",
        ]
        codes = {topic: gateway.publish(topic, b"forged") for topic in forbidden}
        assert codes == dict.fromkeys(forbidden, NOT_AUTHORIZED)
        settle(everything, ingest, expected=0, timeout=0.5)
        assert everything.received() == []
        assert ingest.received() == []

        # The control: its own floor goes through, to both.
        own = f"upstairs/v1/{B}/3/telemetry"
        assert gateway.publish(own, b"real") < 128
        settle(everything, ingest, expected=1)
        assert everything.received() == [(own, b"real")]
        assert ingest.received() == [(own, b"real")]
    finally:
        for s in (everything, ingest, gateway):
            s.close()


# (user, topic, may publish?) for every principal kind; the operator subscriber sees exactly
# the allowed ones.
PUBLISH_MATRIX = [
    (gateway_user(B, 7), f"upstairs/v1/{B}/7/telemetry", True),
    (gateway_user(B, 7), f"upstairs/v1/{B}/7/status", True),
    (gateway_user(B, 7), f"upstairs/v1/{B}/8/telemetry", False),
    ("upstairs-ingest", f"upstairs/v1/{B}/1/telemetry", False),
    ("upstairs-ingest", f"upstairs/v1/{B}/1/state", False),
    ("upstairs-alerts", f"upstairs/v1/{B}/2/state", True),
    ("upstairs-alerts", f"upstairs/v1/{B}/alerts", True),
    ("upstairs-alerts", f"upstairs/v1/{B}/2/telemetry", False),
    ("upstairs-alerts", f"upstairs/v1/{B}/commands", False),
    ("upstairs-api", f"upstairs/v1/{B}/commands", True),
    ("upstairs-api", f"upstairs/v1/{B}/alerts", False),
    ("upstairs-api", f"upstairs/v1/{B}/2/state", False),
    ("upstairs-api", f"upstairs/v1/{B}/2/telemetry", False),
    ("upstairs-operator", f"upstairs/v1/{B}/2/telemetry", False),
    ("upstairs-operator", f"upstairs/v1/{B}/commands", False),
]


def test_each_principal_writes_only_its_topics(broker: Broker) -> None:
    everything = as_user(broker, "upstairs-operator")
    everything.subscribe("upstairs/#")
    try:
        allowed = []
        for user, topic, may in PUBLISH_MATRIX:
            session = as_user(broker, user)
            try:
                code = session.publish(topic, user.encode())
            finally:
                session.close()
            assert (code < 128) if may else (code == NOT_AUTHORIZED), (user, topic, code)
            if may:
                allowed.append((topic, user.encode()))
        settle(everything, expected=len(allowed))
        assert sorted(everything.received()) == sorted(allowed)
    finally:
        everything.close()


def test_each_principal_reads_only_its_topics(broker: Broker) -> None:
    """Everyone subscribes to '#': what each receives is what its ACL lets it read."""
    readers = {
        user: as_user(broker, user)
        for user in ("upstairs-ingest", "upstairs-alerts", "upstairs-api", gateway_user(B, 5))
    }
    writers = {
        user: as_user(broker, user)
        for user in (gateway_user(B, 5), "upstairs-alerts", "upstairs-api")
    }
    try:
        for session in readers.values():
            session.subscribe("upstairs/#")
        sent = {
            "telemetry": (gateway_user(B, 5), f"upstairs/v1/{B}/5/telemetry"),
            "status": (gateway_user(B, 5), f"upstairs/v1/{B}/5/status"),
            "state": ("upstairs-alerts", f"upstairs/v1/{B}/5/state"),
            "alerts": ("upstairs-alerts", f"upstairs/v1/{B}/alerts"),
            "commands": ("upstairs-api", f"upstairs/v1/{B}/commands"),
        }
        for user, topic in sent.values():
            assert writers[user].publish(topic, b"m") < 128
        expect = {
            "upstairs-ingest": {"telemetry"},
            "upstairs-alerts": {"telemetry", "status", "commands"},
            "upstairs-api": {"state", "alerts"},
            gateway_user(B, 5): set(),
        }
        settle(*readers.values(), expected=3, timeout=1.5)
        for user, channels in expect.items():
            got = {topic for topic, _ in readers[user].received()}
            assert got == {sent[c][1] for c in channels}, user
    finally:
        # Clear the retained state this test left behind.
        writers["upstairs-alerts"].publish(f"upstairs/v1/{B}/5/state", b"", retain=True)
        for session in (*readers.values(), *writers.values()):
            session.close()


def test_anonymous_connect_is_refused(broker: Broker) -> None:
    session = connect(broker.port, None, None)
    assert session.connack is not None and session.connack.is_failure
    assert session.connack.value in (134, 135)  # bad user name or password / not authorized


@pytest.mark.parametrize("user", ["upstairs-ingest", gateway_user(B, 1)])
def test_wrong_password_is_refused(broker: Broker, user: str) -> None:
    session = connect(broker.port, user, broker.password(user) + "x")
    assert session.connack is not None and session.connack.is_failure


def test_unknown_user_is_refused(broker: Broker) -> None:
    session = connect(broker.port, "ref-tower-f99-gw", broker.password("upstairs-ingest"))
    assert session.connack is not None and session.connack.is_failure


# -- TLS ------------------------------------------------------------------------------------------


def test_gateway_forging_another_floor_stores_0_rows(
    broker: Broker, db_url: str, tmp_path: Path
) -> None:
    """End to end with the real ingester logged in as ``upstairs-ingest``: the floor-3
    gateway's readings of floor-4 sensors, sent on floor 4's topic, store 0 rows; its own
    floor's readings, sent the same way, are stored."""
    import sys
    from datetime import UTC, datetime, timedelta

    import psycopg

    from core.building_store import apply_building
    from core.payload import Reading, encode_telemetry
    from tests.conftest import ROOT

    building = load_building(REF_TOWER)
    with psycopg.connect(db_url) as conn:
        apply_building(conn, building)
    sensors = {n: [s.id for s in building.sensors_on(n) if s.kind == "load"] for n in (3, 4)}
    password = broker.password("upstairs-ingest")
    env = {
        **os.environ,
        "UPSTAIRS_DATABASE_URL": db_url,
        "UPSTAIRS_MQTT_URL": f"mqtt://upstairs-ingest:{password}@127.0.0.1:{broker.port}",
        "UPSTAIRS_TOPIC_PREFIX": "",
        "UPSTAIRS_INGEST_SHARED_GROUP": "ingest",
        "UPSTAIRS_INGEST_CLIENT_ID": "upstairs-ingest-acl-test",
        "UPSTAIRS_INGEST_METRICS_PORT": "0",
    }
    log = tmp_path / "ingest.log"
    with log.open("wb") as out:
        ingester = subprocess.Popen(
            [sys.executable, "-m", "upstairs", "ingest"], env=env, cwd=ROOT, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    gateway = as_user(broker, gateway_user(B, 3))
    try:
        time.sleep(2)  # the ingester subscribes
        now = datetime.now(UTC) - timedelta(seconds=5)

        def batch(floor: int) -> bytes:
            readings = [Reading(s, now, 250.0) for s in sensors[floor]]
            return encode_telemetry(gateway_user(B, 3), floor, readings)

        assert gateway.publish(f"upstairs/v1/{B}/4/telemetry", batch(4)) == NOT_AUTHORIZED
        assert gateway.publish(f"upstairs/v1/{B}/3/telemetry", batch(3)) < 128
        deadline = time.monotonic() + 20
        stored: dict[int, int] = {}
        while time.monotonic() < deadline:
            with psycopg.connect(db_url) as conn:
                for floor in (3, 4):
                    row = conn.execute(
                        "SELECT count(*) FROM readings WHERE sensor_id = ANY(%s)",
                        (sensors[floor],),
                    ).fetchone()
                    stored[floor] = row[0] if row else -1
            if stored[3] == len(sensors[3]):
                break
            time.sleep(0.3)
        time.sleep(1)
        with psycopg.connect(db_url) as conn:
            forged = conn.execute(
                "SELECT count(*) FROM readings WHERE sensor_id = ANY(%s)", (sensors[4],)
            ).fetchone()
            dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
        assert stored[3] == len(sensors[3]), log.read_text()[-2000:]
        assert forged == (0,)
        assert dead == (0,)
    finally:
        gateway.close()
        ingester.terminate()
        try:
            ingester.wait(15)
        except subprocess.TimeoutExpired:
            ingester.kill()
            ingester.wait()
