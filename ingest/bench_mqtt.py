"""The broker's delivery rate: one publisher process to one subscriber, QoS 1."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from typing import Any

import gmqtt  # type: ignore[import-untyped]
from gmqtt.mqtt.constants import MQTTv50  # type: ignore[import-untyped]

from core.settings import MqttAddress
from ingest.bench_publish import publish_messages


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
