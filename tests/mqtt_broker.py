"""A private Mosquitto for the MQTT security tests, with the shipped config and generated files.

The broker is a private ``mosquitto`` started on free ports with the shipped
``deploy/mosquitto/mosquitto.conf`` (listener ports and file paths rewritten, nothing else) and
the files ``upstairs mqtt credentials`` writes for the reference building. The TLS certificates
come from a throw-away CA made here with the ``openssl`` command line. The ``broker`` fixture
(module scope) is offered to every test through ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from core.building_file import load_building
from upstairs.embedded import _die_with_parent, free_port, port_accepts
from upstairs.mqtt_credentials import (
    Credentials,
    write_credentials,
)

ROOT = Path(__file__).resolve().parent.parent
REF_TOWER = ROOT / "deploy" / "buildings" / "ref-tower.yaml"
CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
B = "ref-tower"
NOT_AUTHORIZED = 135  # MQTT 5 PUBACK reason codes: < 128 success, 16 = "no matching subscribers"


# -- the private broker ----------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_test_ca(folder: Path) -> None:
    """ca.crt, server.crt (for 127.0.0.1 / localhost), server.key: EC P-256, valid one day."""
    folder.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
             "-subj", "/CN=Upstairs test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)  # fmt: skip
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=localhost", cwd=folder)  # fmt: skip
    (folder / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
    )
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "1",
             "-extfile", "server.ext", cwd=folder)  # fmt: skip


def deployed_conf(folder: Path, port: int, tls_port: int, tls_version: str | None = None) -> str:
    """The shipped mosquitto.conf with its ports and paths pointed at ``folder``."""
    text = CONF.read_text()
    assert "\nlistener 1883\n" in text and "\nlistener 8883\n" in text
    text = text.replace("\nlistener 1883\n", f"\nlistener {port} 127.0.0.1\n")
    text = text.replace("\nlistener 8883\n", f"\nlistener {tls_port} 127.0.0.1\n")
    for container, local in (
        ("/mosquitto/config/", folder / "cred"),
        ("/mosquitto/certs/", folder / "certs"),
        ("/mosquitto/data/", folder / "data"),
    ):
        text = text.replace(container, f"{local}/")
    if tls_version is not None:
        text = text.replace("tls_version tlsv1.2", f"tls_version {tls_version}")
    if os.geteuid() == 0:
        text += "\nuser root\n"  # else it drops to 'mosquitto', who cannot read our 0640 files
    settings = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in settings if "/mosquitto/" in line]
    return text


@dataclass
class Broker:
    port: int
    tls_port: int
    folder: Path
    creds: Credentials

    def password(self, user: str) -> str:
        return self.creds.passwords[user]

    @property
    def ca(self) -> Path:
        return self.folder / "certs" / "ca.crt"


def _start_mosquitto(
    folder: Path, conf_text: str, port: int, tls_port: int
) -> subprocess.Popen[bytes]:
    conf = folder / f"mosquitto-{port}.conf"
    conf.write_text(conf_text)
    log = (folder / f"mosquitto-{port}.log").open("wb")
    proc = subprocess.Popen(
        ["mosquitto", "-c", str(conf)],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent(),  # noqa: PLW1509
    )
    log.close()
    deadline = time.monotonic() + 10
    while not (port_accepts(port) and port_accepts(tls_port)):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise RuntimeError(
                f"mosquitto did not start: {(folder / f'mosquitto-{port}.log').read_text()}"
            )
        time.sleep(0.05)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    assert shutil.which("mosquitto"), "mosquitto must be on PATH"
    folder = tmp_path_factory.mktemp("mqtt-security")
    creds = write_credentials([load_building(REF_TOWER)], folder / "cred")
    make_test_ca(folder / "certs")
    (folder / "data").mkdir()
    port, tls_port = free_port(), free_port()
    proc = _start_mosquitto(folder, deployed_conf(folder, port, tls_port), port, tls_port)
    try:
        yield Broker(port, tls_port, folder, creds)
    finally:
        _stop(proc)


# -- MQTT 5 clients (paho-mqtt 2.x) --------------------------------------------------------------


@dataclass
class Session:
    client: mqtt.Client
    connack: ReasonCode | None
    messages: list[tuple[str, bytes]]
    lock: threading.Lock

    @property
    def connected(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def received(self) -> list[tuple[str, bytes]]:
        with self.lock:
            return list(self.messages)

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        codes: list[ReasonCode] = []

        def on_subscribe(_c, _u, _mid, reason_codes, _p) -> None:
            codes.extend(reason_codes)
            done.set()

        self.client.on_subscribe = on_subscribe
        self.client.subscribe(topic, qos=1)
        assert done.wait(5), f"no SUBACK for {topic}"
        assert not codes[0].is_failure, f"subscribe {topic}: {codes[0]}"

    def publish(self, topic: str, payload: bytes = b"x", retain: bool = False) -> int:
        """Publish at QoS 1; return the PUBACK reason code (MQTT 5: 135 = not authorized)."""
        done = threading.Event()
        result: list[int] = []

        def on_publish(_c, _u, _mid, reason_code, _p) -> None:
            result.append(reason_code.value)
            done.set()

        self.client.on_publish = on_publish
        self.client.publish(topic, payload, qos=1, retain=retain)
        assert done.wait(5), f"no PUBACK for {topic}"
        return result[0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connect(
    port: int,
    user: str | None,
    password: str | None,
    *,
    tls: ssl.SSLContext | None = None,
    wait_s: float = 5.0,
) -> Session:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"sec-{user or 'anon'}-{time.monotonic_ns()}",
        protocol=mqtt.MQTTv5,
    )
    client.reconnect_delay_set(30, 60)  # no retry while the test looks at the first CONNACK
    if user is not None:
        client.username_pw_set(user, password)
    if tls is not None:
        client.tls_set_context(tls)
    session = Session(client, None, [], threading.Lock())
    answered = threading.Event()

    def on_connect(_c, _u, _flags, reason_code, _p) -> None:
        if session.connack is None:
            session.connack = reason_code
        answered.set()

    def on_message(_c, _u, message) -> None:
        with session.lock:
            session.messages.append((message.topic, message.payload))

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    answered.wait(wait_s)
    if not session.connected:
        session.close()
    return session


def as_user(broker: Broker, user: str) -> Session:
    session = connect(broker.port, user, broker.password(user))
    assert session.connected, f"{user}: {session.connack}"
    return session


def settle(*sessions: Session, expected: int, timeout: float = 3.0) -> None:
    """Wait until every session has ``expected`` messages, then a little longer for strays."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(len(s.received()) < expected for s in sessions):
        time.sleep(0.02)
    time.sleep(0.3)


# -- credentials and ACLs, against the broker -----------------------------------------------------
