"""Operations: /metrics, the registry reload, a batch the database refuses, __all__."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import timedelta

import psycopg

from core.payload import Reading
from ingest.rollups import REFRESH
from tests.ingest_helpers import (
    Publisher,
    SensorRow,
    add_sensors,
    message,
    metrics_text,
    now,
    raw_message,
    refresher_process,
    rollups_settled,
    running_ingester,
    scalar,
    settings_for,
    topic,
    wait_until,
)
from upstairs.embedded import free_port


def _sample(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def _metrics(port: int) -> str:
    # the server runs in this event loop: fetch from a thread
    return await asyncio.to_thread(metrics_text, port)


async def _wait_metric(port: int, name: str, want: float, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while _sample(await _metrics(port), name) != want:
        assert time.monotonic() < deadline, f"{name} never reached {want}"
        await asyncio.sleep(0.1)


async def test_metrics(db_url, mqtt):
    add_sensors(db_url, [SensorRow(f"p{i}", "power", 1) for i in range(5)])
    port = free_port()
    t0 = now()
    settings = settings_for(db_url, mqtt.url, mqtt.prefix, metrics_port=port)
    async with running_ingester(settings):
        await _wait_metric(port, "upstairs_ingest_broker_connected", 1.0)
        with Publisher(mqtt.address.host, mqtt.address.port) as pub:
            for i in range(20):
                readings = [Reading(f"p{k}", t0 + timedelta(seconds=i), 1.0 + k) for k in range(5)]
                pub.publish(topic(1, mqtt.prefix), message(readings, i))
            pub.publish(topic(1, mqtt.prefix), b"not json")
            pub.publish(topic(1, mqtt.prefix), message([Reading("ghost", t0, 1.0)]))
        await _wait_metric(port, "upstairs_ingest_readings_stored_total", 100.0)
        await wait_until(lambda: rollups_settled(db_url))
        await asyncio.sleep(0.5)
        text = await _metrics(port)
    assert (_sample(text, "upstairs_ingest_rollup_partials_total") or 0) > 0
    assert _sample(text, "upstairs_ingest_messages_total") == 22.0
    assert _sample(text, 'upstairs_ingest_dead_letters_total{reason="not_json"}') == 1.0
    assert _sample(text, 'upstairs_ingest_dead_letters_total{reason="unknown_sensor"}') == 1.0
    assert _sample(text, 'upstairs_ingest_dead_letters_total{reason="out_of_range"}') == 0.0
    assert _sample(text, "upstairs_ingest_database_connected") == 1.0
    assert _sample(text, "upstairs_ingest_queue_readings") == 0.0
    assert (_sample(text, 'upstairs_ingest_batches_total{path="copy"}') or 0) >= 1.0
    assert _sample(text, "upstairs_ingest_registry_sensors") == 5.0
    assert (_sample(text, "upstairs_ingest_commit_seconds_count") or 0) >= 1.0
    assert "upstairs_ingest_batch_rows_bucket" in text
    assert "upstairs_ingest_rollup_refresh_seconds_bucket" in text


async def test_registry_reload_picks_up_new_sensor(db_url, mqtt):
    add_sensors(db_url, [SensorRow("p1", "power", 1)])
    t0 = now()
    settings = settings_for(db_url, mqtt.url, mqtt.prefix, registry_min_reload_s=0.2)
    async with running_ingester(settings):
        with Publisher(mqtt.address.host, mqtt.address.port) as pub:
            pub.publish(topic(1, mqtt.prefix), message([Reading("late-add", t0, 1.0)], 1))
        await wait_until(lambda: scalar(db_url, "SELECT count(*) FROM dead_letters") == 1)
        add_sensors(db_url, [SensorRow("late-add", "power", 1)])
        with Publisher(mqtt.address.host, mqtt.address.port) as pub:
            msg = message([Reading("late-add", t0 + timedelta(seconds=1), 2.0)], 2)
            pub.publish(topic(1, mqtt.prefix), msg)
        await wait_until(lambda: scalar(db_url, "SELECT count(*) FROM readings") == 1)
    assert scalar(db_url, "SELECT reason FROM dead_letters") == "unknown_sensor"
    assert scalar(db_url, "SELECT sensor_id FROM readings") == "late-add"


async def test_refused_batch_is_split_and_poison_dead_lettered(db_url, mqtt):
    add_sensors(db_url, [SensorRow(f"p{i}", "power", 1) for i in range(4)])
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE readings ADD CONSTRAINT no_666 CHECK (value <> 666)")
    t0 = now()
    settings = settings_for(db_url, mqtt.url, mqtt.prefix, batch_age_s=0.3)
    async with running_ingester(settings):
        with Publisher(mqtt.address.host, mqtt.address.port) as pub:
            for i in range(30):
                ts = (t0 + timedelta(seconds=i)).isoformat()
                readings = [
                    {"sensor": f"p{k}", "ts": ts, "value": 666.0 if (i, k) == (7, 2) else 1.0}
                    for k in range(4)
                ]
                pub.publish(topic(1, mqtt.prefix), raw_message(readings, i))
        await wait_until(lambda: scalar(db_url, "SELECT count(*) FROM readings") == 119)
        await wait_until(lambda: scalar(db_url, "SELECT count(*) FROM dead_letters") == 1)
        # intake goes on after the poison
        with Publisher(mqtt.address.host, mqtt.address.port) as pub:
            ts = (t0 + timedelta(seconds=60)).isoformat()
            pub.publish(
                topic(1, mqtt.prefix), raw_message([{"sensor": "p0", "ts": ts, "value": 5.0}])
            )
        await wait_until(lambda: scalar(db_url, "SELECT count(*) FROM readings") == 120)
        await wait_until(lambda: rollups_settled(db_url))
    row = scalar(db_url, "SELECT row(reason, sensor_id, detail)::text FROM dead_letters")
    assert "rejected_by_database" in row and "p2" in row and "no_666" in row
    assert scalar(db_url, "SELECT count(*) FROM readings WHERE value = 666") == 0


def test_public_surface():
    import ingest

    assert set(ingest.__all__) >= {"IngestSettings", "run_ingester", "main"}
    for name in ingest.__all__:
        assert getattr(ingest, name) is not None


async def test_standalone_refresher(db_url, mqtt, service_env):
    add_sensors(db_url, [SensorRow(f"p{i}", "power", 1) for i in range(3)])
    t0 = now()
    settings = settings_for(db_url, mqtt.url, mqtt.prefix, rollup_interval_s=0)
    async with running_ingester(settings):
        with Publisher(mqtt.address.host, mqtt.address.port) as pub:
            for i in range(10):
                readings = [Reading(f"p{k}", t0 + timedelta(seconds=i), 1.0) for k in range(3)]
                pub.publish(topic(1, mqtt.prefix), message(readings, i))
        await wait_until(lambda: scalar(db_url, "SELECT count(*) FROM readings") == 30)
    assert scalar(db_url, "SELECT count(*) FROM rollups_1m") == 0  # nobody refreshed
    assert scalar(db_url, "SELECT count(*) FROM rollup_refresher") == 0  # no heartbeat
    proc = refresher_process(service_env)
    try:
        await wait_until(lambda: rollups_settled(db_url), 30)
        beat = "SELECT extract(epoch FROM clock_timestamp() - refreshed_at) FROM rollup_refresher"
        await wait_until(lambda: scalar(db_url, beat) is not None)
        assert scalar(db_url, beat) < 5  # the running refresher stamps its heartbeat
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert b"Warning" not in err and b"Traceback" not in err, err


def test_a_refresh_that_waits_for_another_refresher_stamps_nothing(db_url):
    """-1 from refresh_rollups: another refresher holds the lock (and stamps its own beat)."""
    with psycopg.connect(db_url, autocommit=True) as other, psycopg.connect(db_url) as conn:
        other.execute("SELECT pg_advisory_lock(1431326546, 1)")
        assert conn.execute(REFRESH, (1000,)).fetchone() == (-1,)
        conn.commit()
        assert scalar(db_url, "SELECT count(*) FROM rollup_refresher") == 0
        other.execute("SELECT pg_advisory_unlock(1431326546, 1)")
        assert conn.execute(REFRESH, (1000,)).fetchone() == (0,)
        conn.commit()
    assert scalar(db_url, "SELECT count(*) FROM rollup_refresher") == 1


async def test_schema_error_stalls_instead_of_dead_lettering(db_url, mqtt):
    add_sensors(db_url, [SensorRow("p1", "power", 1)])
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE rollup_pending RENAME TO rollup_pending_away")
    t0 = now()
    async with running_ingester(settings_for(db_url, mqtt.url, mqtt.prefix)):
        with Publisher(mqtt.address.host, mqtt.address.port) as pub:
            for i in range(5):
                pub.publish(
                    topic(1, mqtt.prefix),
                    message([Reading("p1", t0 + timedelta(seconds=i), 1.0)], i),
                )
        await asyncio.sleep(1.5)
        assert scalar(db_url, "SELECT count(*) FROM readings") == 0
        assert scalar(db_url, "SELECT count(*) FROM dead_letters") == 0
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE rollup_pending_away RENAME TO rollup_pending")
        await wait_until(lambda: scalar(db_url, "SELECT count(*) FROM readings") == 5, 15)
        await wait_until(lambda: rollups_settled(db_url))
    assert scalar(db_url, "SELECT count(*) FROM dead_letters") == 0
