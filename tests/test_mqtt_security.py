"""MQTT security: generated credentials and ACLs, and the TLS listener, against a real Mosquitto.

The broker is a private ``mosquitto`` started here on free ports with the shipped
``deploy/mosquitto/mosquitto.conf`` (listener ports and file paths rewritten, nothing else) and
the files ``upstairs mqtt credentials`` writes for the reference building. The TLS certificates
come from a throw-away CA made here with the ``openssl`` command line.

What the ingester would do with a refused publish ("stores 0 rows") needs the ingester; here the
same property is checked one step earlier: no subscriber, not even one allowed to read every
topic, receives anything a gateway publishes outside its own floor.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading
import time
import warnings
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
    CredentialsError,
    Principal,
    Role,
    check_name,
    gateway_user,
    hash_password,
    principals,
    register,
    verify_password,
    write_credentials,
)

ROOT = Path(__file__).resolve().parent.parent
REF_TOWER = ROOT / "deploy" / "buildings" / "ref-tower.yaml"
CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
B = "ref-tower"
NOT_AUTHORIZED = 135  # MQTT 5 PUBACK reason codes: < 128 success, 16 = "no matching subscribers"

pytestmark = pytest.mark.timeout(60)


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


def _client_context(broker: Broker) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(broker.ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def test_tls_connection_with_the_test_ca_succeeds(broker: Broker) -> None:
    user = gateway_user(B, 2)
    session = connect(broker.tls_port, user, broker.password(user), tls=_client_context(broker))
    try:
        assert session.connected, session.connack
        sock = session.client.socket()
        assert isinstance(sock, ssl.SSLSocket)
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        assert session.publish(f"upstairs/v1/{B}/2/telemetry") < 128
    finally:
        session.close()


def test_tls_1_2_exactly_is_accepted(broker: Broker) -> None:
    ctx = _client_context(broker)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection(("127.0.0.1", broker.tls_port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() == "TLSv1.2"


def test_tls_needs_credentials_too(broker: Broker) -> None:
    session = connect(broker.tls_port, None, None, tls=_client_context(broker))
    assert session.connack is not None and session.connack.is_failure


def test_a_client_not_trusting_the_ca_refuses_the_broker(broker: Broker) -> None:
    ctx = ssl.create_default_context()  # the system trust store does not hold the test CA
    with (
        socket.create_connection(("127.0.0.1", broker.tls_port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ctx.wrap_socket(raw, server_hostname="127.0.0.1")


# An MQTT 5 CONNECT, no credentials: what a plaintext client sends first.
_CONNECT = bytes([0x10, 13, 0, 4]) + b"MQTT" + bytes([5, 0x02, 0, 30, 0, 0, 0])


def _plaintext_answer(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(_CONNECT)
        try:
            return sock.recv(64)
        except (ConnectionResetError, TimeoutError):
            return b""


def test_plaintext_on_the_tls_port_fails(broker: Broker) -> None:
    answer = _plaintext_answer(broker.tls_port)
    assert not answer.startswith(b"\x20"), f"a CONNACK came back in plaintext: {answer!r}"
    # The control: the same bytes on the plain port do get a CONNACK (refusing anonymous).
    assert _plaintext_answer(broker.port)[:1] == b"\x20"


def _tls11_context() -> ssl.SSLContext:
    """A client that offers TLS 1.1 and nothing newer (Python deprecates the very idea)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    return ctx


def test_tls_1_1_is_refused(broker: Broker) -> None:
    with (
        socket.create_connection(("127.0.0.1", broker.tls_port), timeout=5) as raw,
        pytest.raises((ssl.SSLError, ConnectionResetError)),
    ):
        _tls11_context().wrap_socket(raw)


@pytest.mark.parametrize(("tls_version", "accepted"), [("tlsv1.2", False), ("tlsv1.1", True)])
def test_the_tls_version_line_is_what_refuses_tls_1_1(
    tmp_path: Path, broker: Broker, tls_version: str, accepted: bool
) -> None:
    """The control for the test above. This machine's OpenSSL policy refuses TLS 1.1 by itself,
    so the broker is made permissive here (``ciphers DEFAULT:@SECLEVEL=0`` on the TLS listener):
    then ``tls_version tlsv1.2`` (shipped) still refuses a TLS 1.1 client and ``tlsv1.1``
    accepts it. A host with a laxer OpenSSL is still protected by our line."""
    for name in ("cred", "certs"):
        shutil.copytree(broker.folder / name, tmp_path / name)
    (tmp_path / "data").mkdir()
    port, tls_port = free_port(), free_port()
    conf = deployed_conf(tmp_path, port, tls_port, tls_version=tls_version)
    conf = conf.replace(
        f"tls_version {tls_version}\n", f"tls_version {tls_version}\nciphers DEFAULT:@SECLEVEL=0\n"
    )
    proc = _start_mosquitto(tmp_path, conf, port, tls_port)
    try:
        with socket.create_connection(("127.0.0.1", tls_port), timeout=5) as raw:
            if accepted:
                with _tls11_context().wrap_socket(raw) as tls:
                    assert tls.version() == "TLSv1.1"
            else:
                with pytest.raises((ssl.SSLError, ConnectionResetError)):
                    _tls11_context().wrap_socket(raw)
    finally:
        _stop(proc)


# -- the generator, without a broker ------------------------------------------------------------


def test_hashes_are_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    """Both ways: our verifier accepts mosquitto_passwd's hash, and mosquitto_passwd keeps
    (and the broker above accepts) ours."""
    salt = bytes(range(12))
    ours = hash_password("s3cret", salt=salt)
    assert ours.startswith("$7$101$AAECAwQFBgcICQoL$")
    assert verify_password("s3cret", ours) and not verify_password("s3cret!", ours)
    passwd = tmp_path / "passwd"
    passwd.write_text(f"ours:{ours}\n")
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "theirs", "hunter2"], check=True,
                   capture_output=True, timeout=10)  # fmt: skip
    lines = dict(line.split(":", 1) for line in passwd.read_text().splitlines())
    assert lines["ours"] == ours  # mosquitto_passwd parsed our line and kept it as it was
    assert lines["theirs"].startswith("$7$")
    assert verify_password("hunter2", lines["theirs"])


def test_files_and_modes(tmp_path: Path) -> None:
    creds = write_credentials([load_building(REF_TOWER)], tmp_path / "out")
    assert stat.S_IMODE(creds.secrets_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(creds.password_file.stat().st_mode) == 0o640
    assert stat.S_IMODE(creds.acl_file.stat().st_mode) == 0o640
    users = [p.name for p in creds.principals]
    assert users[:4] == ["upstairs-ingest", "upstairs-alerts", "upstairs-api", "upstairs-operator"]
    assert users[4:] == [f"ref-tower-f{n:02d}-gw" for n in range(1, 11)]
    hashes = dict(line.split(":", 1) for line in creds.password_file.read_text().splitlines())
    secrets_env = dict(
        line.split("=", 1)
        for line in creds.secrets_file.read_text().splitlines()
        if not line.startswith("#")
    )
    assert len(set(creds.passwords.values())) == len(users)  # one random password each
    for p in creds.principals:
        assert verify_password(secrets_env[p.env_var], hashes[p.name])
        assert len(creds.passwords[p.name]) >= 40
    assert "ref-tower-f03-gw\ntopic write upstairs/v1/ref-tower/3/telemetry\n" in (
        creds.acl_file.read_text()
    )


def test_rerun_keeps_passwords_and_rotate_replaces_them(tmp_path: Path) -> None:
    building = load_building(REF_TOWER)
    first = write_credentials([building], tmp_path)
    again = write_credentials([building], tmp_path)
    assert again.passwords == first.passwords and again.reused == len(first.principals)
    rotated = write_credentials([building], tmp_path, rotate=True)
    assert rotated.reused == 0
    assert not set(rotated.passwords.values()) & set(first.passwords.values())


def test_topic_prefix_is_respected(tmp_path: Path) -> None:
    creds = write_credentials([load_building(REF_TOWER)], tmp_path, "site-a/")
    topics = [r.topic for p in creds.principals for r in p.rules if r.topic != "$SYS/#"]
    assert topics and all(t.startswith("site-a/upstairs/v1/ref-tower/") for t in topics)


@pytest.mark.parametrize("name", ["a+b", "a#", "a/b", "+", "#", "a:b", "a b", "", "x\n"])
def test_names_with_wildcards_or_separators_are_refused(name: str) -> None:
    with pytest.raises(CredentialsError):
        check_name(name)
    with pytest.raises(CredentialsError):
        Principal(name, Role.OPERATOR, ())


@pytest.mark.parametrize("bad_id", ["ref/tower", "ref+tower", "ref#"])
def test_a_building_id_with_wildcards_is_refused(bad_id: str) -> None:
    """load_building refuses such ids already; the generator does not rely on it."""
    fake = load_building(REF_TOWER).model_copy(update={"id": bad_id})
    with pytest.raises((CredentialsError, ValueError)):
        principals([fake])


@pytest.mark.parametrize("prefix", ["site+a/", "#/", "no-slash", "site a/"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(CredentialsError):
        principals([load_building(REF_TOWER)], prefix)


def test_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``register`` adds ``mqtt credentials``; the prefix defaults to UPSTAIRS_TOPIC_PREFIX."""
    parser = argparse.ArgumentParser(prog="upstairs")
    register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "creds"
    argv = ["mqtt", "credentials", "--building", str(REF_TOWER), "--out", str(out)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UPSTAIRS_TOPIC_PREFIX", "site-b/")
        args = parser.parse_args(argv)
        assert args.func(args) == 0
    assert "14 MQTT users (10 floor gateways)" in capsys.readouterr().out
    assert "topic write site-b/upstairs/v1/ref-tower/1/status" in (out / "acl").read_text()
    args = parser.parse_args([*argv, "--topic-prefix", "bad+/"])
    assert args.func(args) == 2
    assert "bad+/" in capsys.readouterr().err


def test_gateway_forging_another_floor_stores_0_rows(
    broker: Broker, db_url: str, tmp_path: Path
) -> None:
    """End to end with the real ingester logged in as ``upstairs-ingest``: the floor-3
    gateway's readings of floor-4 sensors, sent on floor 4's topic, store 0 rows; its own
    floor's readings, sent the same way, are stored."""
    import os
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
