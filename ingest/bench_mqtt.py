"""MQTT pieces of the benchmark: a QoS 1 publisher and the broker's delivery rate."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from typing import Any

import gmqtt  # type: ignore[import-untyped]
import paho.mqtt.client as paho
from gmqtt.mqtt.constants import MQTTv50  # type: ignore[import-untyped]
from paho.mqtt.enums import CallbackAPIVersion

from core.settings import MqttAddress

INFLIGHT = 1000


def publish_messages(
    address: MqttAddress,
    messages: list[tuple[str, bytes]],
    may_send: Callable[[int], bool] | None = None,
) -> None:
    """Publish at QoS 1 with at most ``INFLIGHT`` unacknowledged messages; wait for all.

    ``may_send(readings_sent_so_far)`` paces the publisher (closed loop) when given.
    """
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    if address.username:
        client.username_pw_set(address.username, address.password)
    client.max_inflight_messages_set(INFLIGHT)
    client.max_queued_messages_set(0)
    slots = threading.Semaphore(INFLIGHT)
    client.on_publish = lambda *_args: slots.release()
    client.connect(address.host, address.port, keepalive=60)
    client.loop_start()
    try:
        sent = 0
        per_message = max(1, payload_readings(messages[0][1])) if messages else 1
        for topic, payload in messages:
            while may_send is not None and not may_send(sent):
                time.sleep(0.002)
            sent += per_message
            slots.acquire()
            info = client.publish(topic, payload, qos=1)
            if info.rc != paho.MQTT_ERR_SUCCESS:
                raise RuntimeError(f"publish failed with {info.rc}")
        for _ in range(INFLIGHT):
            if not slots.acquire(timeout=120):
                raise TimeoutError("PUBACKs missing")
    finally:
        client.loop_stop()
        client.disconnect()


def payload_readings(payload: bytes) -> int:
    return payload.count(b'"sensor"')


def broker_rate(address: MqttAddress, prefix: str, messages: list[tuple[str, bytes]]) -> float:
    """Messages/s the broker delivers at QoS 1 from one publisher process to one subscriber."""
    probe = [(f"{prefix}m", payload) for _, payload in messages]
    return asyncio.run(_measure(address, prefix, probe))


async def _measure(address: MqttAddress, prefix: str, messages: list[tuple[str, bytes]]) -> float:
    expected = len(messages)
    seen = 0
    first = last = 0.0
    done = asyncio.Event()

    def on_message(_c: Any, _t: str, _p: bytes, _q: int, _props: Any) -> int:
        nonlocal seen, first, last
        now = time.perf_counter()
        if seen == 0:
            first = now
        seen += 1
        last = now
        if seen >= expected:
            done.set()
        return 0

    client = gmqtt.Client(f"probe-{prefix.strip('/')}", receive_maximum=65535)
    if address.username:
        client.set_auth_credentials(address.username, address.password)
    client.on_message = on_message
    await client.connect(address.host, address.port, version=MQTTv50)
    client.subscribe(f"{prefix}#", qos=1)
    await asyncio.sleep(0.3)
    proc = mp.get_context("spawn").Process(target=publish_messages, args=(address, messages))
    proc.start()
    try:
        await asyncio.wait_for(done.wait(), 300)
    finally:
        await asyncio.to_thread(proc.join, 120)
        await client.disconnect()
    return (seen - 1) / (last - first) if last > first else float("nan")
