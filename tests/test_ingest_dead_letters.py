"""Every reason a reading or message is refused ends in a dead-letter row; good ones are stored."""

from __future__ import annotations

import json
from datetime import timedelta

import psycopg

from tests.ingest_helpers import (
    Publisher,
    SensorRow,
    add_sensors,
    now,
    raw_message,
    rollups_settled,
    running_ingester,
    scalar,
    settings_for,
    topic,
    wait_until,
)


def _reasons(db_url: str) -> dict[str, int]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT reason, count(*) FROM dead_letters GROUP BY 1").fetchall()
    return {str(r): int(n) for r, n in rows}


async def test_every_reason(db_url, mqtt):
    add_sensors(
        db_url,
        [
            SensorRow("p1", "power", 1),
            SensorRow("t1", "temperature", 1),
            SensorRow("fire1", "fire", 1),
            SensorRow("e1", "energy", 1),
            SensorRow("other-b", "power", 1, building="b2"),
        ],
    )
    t0 = now()
    ts = (t0).isoformat().replace("+00:00", "Z")
    good = {"sensor": "p1", "ts": ts, "value": 5.0}

    def reading(**kw):
        return {**good, **kw}

    cases: list[tuple[str, str, bytes]] = [
        ("not_json", topic(1, mqtt.prefix), b"{not json"),
        ("bad_shape", topic(1, mqtt.prefix), b'{"v":1,"source":"g","seq":1,"readings":[NaN]}'),
        (
            "non_finite_value",
            topic(1, mqtt.prefix),
            raw_message([reading(value=float("nan"))]),
        ),
        ("bad_shape", topic(1, mqtt.prefix), b"[1, 2]"),
        ("bad_shape", topic(1, mqtt.prefix), json.dumps({"v": 1, "source": "g"}).encode()),
        ("bad_version", topic(1, mqtt.prefix), json.dumps({"v": 2}).encode()),
        ("bad_topic", f"{mqtt.prefix}upstairs/v1/b1/x/telemetry", raw_message([good])),
        ("bad_shape", topic(1, mqtt.prefix), raw_message([reading(extra=1)])),
        ("unknown_sensor", topic(1, mqtt.prefix), raw_message([reading(sensor="nope")])),
        ("wrong_floor", topic(2, mqtt.prefix), raw_message([good])),
        ("wrong_building", topic(1, mqtt.prefix), raw_message([reading(sensor="other-b")])),
        (
            "naive_timestamp",
            topic(1, mqtt.prefix),
            raw_message([reading(ts="2026-11-21T10:00:00")]),
        ),
        ("bad_timestamp", topic(1, mqtt.prefix), raw_message([reading(ts="yesterday")])),
        (
            "future_timestamp",
            topic(1, mqtt.prefix),
            raw_message([reading(ts=(t0 + timedelta(hours=1)).isoformat())]),
        ),
        ("non_finite_value", topic(1, mqtt.prefix), raw_message([reading(value=1e999)])),
        ("out_of_range", topic(1, mqtt.prefix), raw_message([reading(value=-1.0)])),
        ("out_of_range", topic(1, mqtt.prefix), raw_message([reading(sensor="t1", value=2000.0)])),
        ("out_of_range", topic(1, mqtt.prefix), raw_message([reading(sensor="fire1", value=3)])),
    ]
    register = raw_message(
        [
            reading(sensor="e1", value=1000.0),
            reading(sensor="e1", ts=(t0 + timedelta(seconds=1)).isoformat(), value=500.0),
            reading(sensor="e1", ts=(t0 + timedelta(seconds=2)).isoformat(), value=3.0),
        ]
    )
    settings = settings_for(db_url, mqtt.url, mqtt.prefix)
    async with running_ingester(settings):
        with Publisher(mqtt.address.host, mqtt.address.port) as pub:
            for _, name, payload in cases:
                pub.publish(name, payload)
            pub.publish(topic(1, mqtt.prefix), register)
            pub.publish(topic(1, mqtt.prefix), raw_message([good]))
        await wait_until(lambda: scalar(db_url, "SELECT count(*) FROM dead_letters") >= 18)
        await wait_until(lambda: scalar(db_url, "SELECT count(*) FROM readings") >= 3)
    expected: dict[str, int] = {}
    for reason, _, _ in cases:
        expected[reason] = expected.get(reason, 0) + 1
    expected["register_backwards"] = 1
    assert _reasons(db_url) == expected
    # the register reading that reset to 3 kWh is a reset, stored; 500 after 1000 is refused
    assert scalar(
        db_url, "SELECT array_agg(value ORDER BY ts) FROM readings WHERE sensor_id='e1'"
    ) == [
        1000.0,
        3.0,
    ]
    assert scalar(db_url, "SELECT count(*) FROM readings WHERE sensor_id = 'p1'") == 1
    detail = scalar(db_url, "SELECT detail FROM dead_letters WHERE reason = 'wrong_floor'")
    assert "floor 1" in detail and "says 2" in detail
    big = scalar(db_url, "SELECT max(length(payload)) FROM dead_letters")
    assert big <= 64 * 1024


async def test_one_malformed_in_a_hundred(db_url, mqtt):
    sensors = add_sensors(db_url, [SensorRow(f"s{i}", "power", 1) for i in range(10)])
    t0 = now() - timedelta(minutes=30)
    bad = [b"garbage", b'{"v": 3}', b'{"v": 1, "seq": 1}', b"[]"]
    bad_reason = ["not_json", "bad_version", "bad_shape", "bad_shape"]
    expected_dead: dict[str, int] = {}
    good_readings = 0
    settings = settings_for(db_url, mqtt.url, mqtt.prefix)
    async with running_ingester(settings):
        with Publisher(mqtt.address.host, mqtt.address.port) as pub:
            for m in range(1000):
                if m % 100 == 99:
                    k = (m // 100) % len(bad)
                    pub.publish(topic(1, mqtt.prefix), bad[k])
                    expected_dead[bad_reason[k]] = expected_dead.get(bad_reason[k], 0) + 1
                    continue
                ts = (t0 + timedelta(seconds=m)).isoformat()
                readings = [{"sensor": s.id, "ts": ts, "value": float(m)} for s in sensors]
                pub.publish(topic(1, mqtt.prefix), raw_message(readings, m))
                good_readings += len(readings)
        await wait_until(lambda: scalar(db_url, "SELECT count(*) FROM readings") == good_readings)
        await wait_until(lambda: scalar(db_url, "SELECT count(*) FROM dead_letters") == 10)
        await wait_until(lambda: rollups_settled(db_url))
    assert _reasons(db_url) == expected_dead
    assert scalar(db_url, "SELECT sum(count) FROM rollups_1m") == good_readings
