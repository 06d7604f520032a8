"""The ingester end to end against the real broker and database: good and bad readings."""

from __future__ import annotations

from datetime import timedelta

from core.payload import Reading
from tests.ingest_helpers import (
    Publisher,
    add_sensors,
    message,
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


async def test_stores_readings_and_latest(db_url, mqtt):
    sensors = add_sensors(db_url, standard_sensors())
    t0 = now()
    settings = settings_for(db_url, mqtt.url, mqtt.prefix)
    async with running_ingester(settings):
        with Publisher(mqtt.address.host, mqtt.address.port) as pub:
            for i in range(10):
                for floor in (1, 2, 3):
                    readings = [
                        Reading(s.id, t0 + timedelta(seconds=i), value_for(s.kind, i))
                        for s in sensors
                        if s.floor == floor
                    ]
                    pub.publish(topic(floor, mqtt.prefix), message(readings, i))
        await wait_until(lambda: scalar(db_url, "SELECT count(*) FROM readings") == 120)
        await wait_until(lambda: rollups_settled(db_url))
    assert scalar(db_url, "SELECT count(*) FROM sensor_latest") == 12
    assert (
        scalar(
            db_url, "SELECT count(*) FROM sensor_latest WHERE ts = %s", t0 + timedelta(seconds=9)
        )
        == 12
    )
    assert scalar(db_url, "SELECT max(value) FROM sensor_latest") == 10.0
    assert scalar(db_url, "SELECT count(*) FROM dead_letters") == 0
    assert scalar(db_url, "SELECT sum(count) FROM rollups_1m") == 120
