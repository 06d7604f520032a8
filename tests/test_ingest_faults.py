"""Faults while readings flow: the ingester killed, the broker restarted, the database away.

Each test publishes a known set of readings at QoS 1 while the fault happens and then counts
the database: every reading stored exactly once, rollups counting each once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from datetime import timedelta

from core.payload import Reading
from tests.ingest_helpers import (
    PrivateMosquitto,
    Publisher,
    add_sensors,
    ingester_process,
    message,
    metric,
    now,
    rollups_settled,
    running_ingester,
    scalar,
    settings_for,
    standard_sensors,
    topic,
    value_for,
    wait_until,
)
from upstairs.embedded import free_port


def _messages(sensors, prefix: str, total: int, per_message: int = 50) -> list[tuple[str, bytes]]:
    """``total`` readings in messages of ``per_message`` (one floor's sensors per message)."""
    t0 = now() - timedelta(hours=6)
    floors = sorted({s.floor for s in sensors})
    out: list[tuple[str, bytes]] = []
    step = 0
    while sum(len(m[1]) and 1 for m in out) * per_message < total:
        floor = floors[step % len(floors)]
        mine = [s for s in sensors if s.floor == floor]
        readings = [
            Reading(
                mine[i % len(mine)].id,
                t0 + timedelta(seconds=step * per_message + i),
                value_for(mine[i % len(mine)].kind, step),
            )
            for i in range(per_message)
        ]
        out.append((topic(floor, prefix), message(readings, step)))
        step += 1
    return out


def _publish_in_thread(host: str, port: int, messages, pace_s: float) -> threading.Thread:
    def run() -> None:
        with Publisher(host, port, client_id=f"pub-{os.getpid()}-{port}") as pub:
            for topic_name, payload in messages:
                pub.publish(topic_name, payload)
                time.sleep(pace_s)
            pub.wait_all(timeout=120)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _count(db_url: str) -> int:
    return int(scalar(db_url, "SELECT count(*) FROM readings"))  # type: ignore[call-overload]


async def test_kill_9_three_times(db_url, mqtt, service_env):
    sensors = add_sensors(db_url, standard_sensors(per_floor=10))
    messages = _messages(sensors, mqtt.prefix, 20_000)  # 400 messages of 50
    port = free_port()
    client_id = f"ingest-kill-{mqtt.prefix.strip('/')}"
    proc = ingester_process(service_env, client_id, port)
    try:
        await wait_until(lambda: metric(port, "upstairs_ingest_broker_connected") == 1.0, 30)
        publisher = _publish_in_thread(mqtt.address.host, mqtt.address.port, messages, 0.01)
        at_kill: list[int] = []
        for kill in range(3):
            await wait_until(lambda k=kill: _count(db_url) > 4000 * (k + 1), 60, 0.02)
            at_kill.append(_count(db_url))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            proc = ingester_process(service_env, client_id, port)
        await asyncio.to_thread(publisher.join, 120)
        await wait_until(lambda: _count(db_url) >= 20_000, 90)
        await wait_until(lambda: rollups_settled(db_url), 60)
        await asyncio.sleep(0.5)  # redeliveries still in flight would land now
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert max(at_kill) < 20_000, at_kill  # every kill hit a running stream
    assert _count(db_url) == 20_000
    assert scalar(db_url, "SELECT count(DISTINCT (sensor_id, ts)) FROM readings") == 20_000
    assert scalar(db_url, "SELECT sum(count) FROM rollups_1m") == 20_000
    assert scalar(db_url, "SELECT sum(count) FROM rollups_1h") == 20_000
    assert scalar(db_url, "SELECT count(*) FROM dead_letters") == 0


async def test_broker_restart_mid_stream(db_url, mqtt, tmp_session_dir):
    sensors = add_sensors(db_url, standard_sensors(per_floor=10))
    with PrivateMosquitto(tmp_session_dir / f"mosq-{mqtt.prefix.strip('/')}") as broker:
        messages = _messages(sensors, mqtt.prefix, 10_000)
        settings = settings_for(db_url, broker.url, mqtt.prefix, backoff_max_s=0.5)
        async with running_ingester(settings):
            publisher = _publish_in_thread("127.0.0.1", broker.port, messages, 0.02)
            await wait_until(lambda: _count(db_url) > 3000, 60, 0.02)
            at_stop = _count(db_url)
            await asyncio.to_thread(broker.stop)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(broker.start)
            await asyncio.to_thread(publisher.join, 120)
            await wait_until(lambda: _count(db_url) >= 10_000, 60)
            await wait_until(lambda: rollups_settled(db_url), 30)
    assert at_stop < 8000
    assert _count(db_url) == 10_000
    assert scalar(db_url, "SELECT sum(count) FROM rollups_1m") == 10_000


async def test_database_restart_mid_stream(mqtt, tmp_session_dir):
    from core.db import migrate
    from upstairs.embedded import EmbeddedPostgres

    folder = tmp_session_dir / f"pg-{mqtt.prefix.strip('/')}"
    with EmbeddedPostgres(folder) as pg:
        db_url = pg.url
        await asyncio.to_thread(migrate, db_url)
        sensors = add_sensors(db_url, standard_sensors(per_floor=10))
        messages = _messages(sensors, mqtt.prefix, 10_000)
        settings = settings_for(db_url, mqtt.url, mqtt.prefix)
        async with running_ingester(settings):
            publisher = _publish_in_thread(mqtt.address.host, mqtt.address.port, messages, 0.02)
            await wait_until(lambda: _count(db_url) > 2000, 60, 0.02)
            at_stop = _count(db_url)
            await asyncio.to_thread(pg.stop)
            await asyncio.sleep(3)
            await asyncio.to_thread(pg.start)
            back = time.monotonic()
            before = _count(db_url)
            await wait_until(lambda: _count(db_url) > before, 10, 0.05)
            resumed = time.monotonic() - back
            await asyncio.to_thread(publisher.join, 120)
            await wait_until(lambda: _count(db_url) >= 10_000, 60)
            await wait_until(lambda: rollups_settled(db_url), 30)
        assert resumed < 10
        assert at_stop < 8000
        assert _count(db_url) == 10_000
        assert scalar(db_url, "SELECT sum(count) FROM rollups_1h") == 10_000
