"""The benchmark's QoS 1 publisher: pre-encoded MQTT 5 packets over one plain socket.

A general-purpose client spends tens of microseconds of Python on every publish (a lock, a
callback, a packet id map); with one reading per message that capped the benchmark's two
publisher processes at about 7,000 messages/s, below the rate the ingester was to be measured
at. Here every PUBLISH is encoded before the clock starts, sent in runs of up to the broker's
Receive Maximum, and PUBACKs are counted in bulk as they come back: the packets on the wire
are the same QoS 1 packets any client sends, and nothing is sent past the broker's flow
control window. Only what the benchmark needs: no TLS, no reconnect, no QoS 2.
"""

from __future__ import annotations

import secrets
import socket
import struct
import time
from collections.abc import Callable, Iterator

from core.settings import MqttAddress

MAX_INFLIGHT = 1000  # at most this many unacknowledged messages, even if the broker allows more
_PUBLISH_QOS1 = 0x32
_PUBACK = 0x40
_CONNACK = 0x20


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack(">H", len(raw)) + raw


def connect_packet(client_id: str, username: str | None, password: str | None) -> bytes:
    flags = 0x02  # clean start
    payload = _string(client_id)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
        if password is not None:
            flags |= 0x40
            payload += _string(password)
    # protocol name, level 5, flags, keepalive 60 s, no properties
    variable = _string("MQTT") + bytes([5, flags]) + struct.pack(">H", 60) + b"\x00"
    body = variable + payload
    return bytes([0x10]) + _varint(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, packet_id: int) -> bytes:
    body_len = 2 + len(topic) + 2 + 1 + len(payload)  # topic, packet id, no properties
    return b"".join(
        (
            bytes([_PUBLISH_QOS1]),
            _varint(body_len),
            struct.pack(">H", len(topic)),
            topic,
            struct.pack(">H", packet_id),
            b"\x00",
            payload,
        )
    )


def _read_varint(data: bytes | bytearray, i: int) -> tuple[int, int] | None:
    """The MQTT variable byte integer at ``data[i:]`` and the index after it (None: cut off)."""
    value, shift = 0, 0
    while i < len(data):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        shift += 7
        i += 1
        if not byte & 0x80:
            return value, i
    return None


def _packets(data: bytearray) -> Iterator[tuple[int, bytes]]:
    """Complete packets at the front of ``data`` (consumed from it): (type, body)."""
    pos = 0
    while len(data) - pos >= 2:
        header = _read_varint(data, pos + 1)
        if header is None:
            break
        length, i = header
        if len(data) - i < length:
            break
        yield data[pos] & 0xF0, bytes(data[i : i + length])
        pos = i + length
    del data[:pos]


def _receive_maximum(connack: bytes) -> int:
    """The broker's Receive Maximum from a CONNACK body (65,535 when not given)."""
    if len(connack) < 2 or connack[1] != 0:
        raise ConnectionRefusedError(f"broker refused the connection (reason {connack[1:2]!r})")
    props = _read_varint(connack, 2)
    if props is None:
        return 65535
    props_len, i = props
    end = i + props_len
    while i < end:
        prop = connack[i]
        i += 1
        if prop == 0x21:  # Receive Maximum
            return int(struct.unpack(">H", connack[i : i + 2])[0])
        if prop in (0x24, 0x25, 0x28, 0x29, 0x2A):  # byte properties
            i += 1
        elif prop in (0x13, 0x22):  # two-byte integers
            i += 2
        elif prop in (0x11, 0x27):  # four-byte integers
            i += 4
        elif prop in (0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F):  # strings / binary data
            i += 2 + int(struct.unpack(">H", connack[i : i + 2])[0])
        elif prop == 0x26:  # user property: a string pair
            for _ in range(2):
                i += 2 + int(struct.unpack(">H", connack[i : i + 2])[0])
        else:
            break
    return 65535


def publish_messages(
    address: MqttAddress,
    messages: list[tuple[str, bytes]],
    may_send: Callable[[int], bool] | None = None,
    readings_per_message: int = 1,
) -> None:
    """Publish at QoS 1 and return when every message is acknowledged.

    ``may_send(readings_sent_so_far)`` paces the publisher (closed loop) when given.
    """
    if address.tls:
        raise ValueError("the benchmark publisher speaks plain TCP only")
    packets = [
        publish_packet(topic.encode(), payload, i % 65535 + 1)
        for i, (topic, payload) in enumerate(messages)
    ]
    sock = socket.create_connection((address.host, address.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.sendall(
            connect_packet(f"bench-pub-{secrets.token_hex(4)}", address.username, address.password)
        )
        data = bytearray()
        window = 0
        while not window:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("broker closed the connection during CONNECT")
            data += chunk
            for kind, body in _packets(data):
                if kind == _CONNACK:
                    window = min(MAX_INFLIGHT, _receive_maximum(body))
        sent = acked = 0
        total = len(packets)
        while acked < total:
            limit = min(total, acked + window)
            start = sent
            while sent < limit and (may_send is None or may_send(sent * readings_per_message)):
                sent += 1
            if sent > start:
                sock.sendall(b"".join(packets[start:sent]))
            if acked == sent:  # nothing in flight: the pacing holds us back
                time.sleep(0.002)
                continue
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("broker closed the connection")
            data += chunk
            for kind, body in _packets(data):
                if kind == _PUBACK:
                    if len(body) > 2 and body[2] >= 0x80:
                        raise ConnectionError(f"broker refused a publish (reason {body[2]:#x})")
                    acked += 1
        sock.sendall(b"\xe0\x00")  # DISCONNECT
    finally:
        sock.close()
