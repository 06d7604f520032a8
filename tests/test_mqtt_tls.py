"""MQTT security: the TLS listener (TLS 1.2 minimum) of the shipped config, against a real
Mosquitto with a throw-away CA (see ``tests/mqtt_broker.py``)."""

from __future__ import annotations

import shutil
import socket
import ssl
import warnings
from pathlib import Path

import pytest

from tests.mqtt_broker import (
    B,
    Broker,
    _start_mosquitto,
    _stop,
    connect,
    deployed_conf,
)
from upstairs.embedded import free_port
from upstairs.mqtt_credentials import (
    gateway_user,
)

pytestmark = pytest.mark.timeout(60)


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
