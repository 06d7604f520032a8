"""Building reload while running, and the MQTT outbox (real broker and database)."""

from __future__ import annotations

import asyncio
import json

from alerts.clock import ManualClock
from tests.alerts_helpers import (
    T0,
    marker,
    mqtt_client,
    ref_tower,
    rows,
    running_engine,
    settings_for,
    store_building,
    wait_for,
)

LOAD = "ref-f03-load-z2"
QUIET = {"staleness": {"intervals": 1000}}


async def test_reapplied_building_is_reloaded_without_losing_state(db_url, mqtt) -> None:
    store_building(db_url, ref_tower(**QUIET, zone_load={"on_delay_s": 0}))
    clock = ManualClock(T0)
    settings = settings_for(db_url, mqtt, building_poll_s=0.1)
    with mqtt_client(mqtt) as m:
        m.subscribe("upstairs/v1/ref-tower/alerts")
        m.subscribe("upstairs/v1/ref-tower/3/state")
        async with running_engine(settings, clock, m):
            m.telemetry(3, [(LOAD, clock.now(), 520)])
            await wait_for(m.events, what="the load alert")
            clock.advance(1)
            m.telemetry(3, [("ref-f03-temp-z1", clock.now(), 35)])  # below the default 40
            await marker(m, clock)
            assert not [e for e in m.events() if e["alert"]["rule"] == "temperature"]
            # re-apply the building file with a lower warning and no on-delay
            store_building(
                db_url,
                ref_tower(
                    **QUIET, zone_load={"on_delay_s": 0},
                    temperature={"warning_c": 30, "on_delay_s": 0},
                ),
            )  # fmt: skip
            await asyncio.sleep(0.5)  # a few polls
            clock.advance(1)
            m.telemetry(3, [("ref-f03-temp-z1", clock.now(), 36)])
            await wait_for(
                lambda: [e for e in m.events() if e["alert"]["rule"] == "temperature"],
                what="the temperature alert under the new rule",
            )
            await wait_for(
                lambda: any(s["zones"][1]["load_kg_m2"] == 520 for s in m.states(3)[-2:]),
                what="a floor state that still knows the load",
            )
    zone = rows(db_url, "SELECT state FROM alerts WHERE rule = 'zone_load'")
    assert zone == [("open",)]  # the load alert survived the reload, not reopened
    kinds = [e["kind"] for e in m.events() if e["alert"]["rule"] == "zone_load"]
    assert kinds == ["opened"]


async def test_events_left_in_the_outbox_are_published_again(db_url, mqtt) -> None:
    store_building(db_url, ref_tower(**QUIET, zone_load={"on_delay_s": 0}))
    clock = ManualClock(T0)
    settings = settings_for(db_url, mqtt)
    with mqtt_client(mqtt) as m:
        m.subscribe("upstairs/v1/ref-tower/alerts")
        async with running_engine(settings, clock, m):
            m.telemetry(3, [(LOAD, clock.now(), 520)])
            m.telemetry(2, [("ref-f02-fire-z1", clock.now(), 1)])
            await wait_for(lambda: len(m.events()) >= 2, what="two events")
            # every event the broker acknowledged leaves the outbox
            await wait_for(
                lambda: rows(db_url, "SELECT count(*) FROM alert_mqtt_outbox") == [(0,)],
                what="an empty outbox",
            )
        first = {e["event_id"]: e for e in m.events()}
        stored = rows(db_url, "SELECT id FROM alert_events ORDER BY id")
        assert sorted(first) == [r[0] for r in stored]  # early (fire) and late ids all stored
        # a crash between commit and publish: the event stayed in the outbox, never published
        fire_event = next(e for e in first.values() if e["alert"]["rule"] == "fire")
        with_outbox = rows(
            db_url,
            "INSERT INTO alert_mqtt_outbox (event_id, building_id, body)"
            " SELECT id, 'ref-tower', %s::bytea FROM alert_events WHERE id = %s RETURNING event_id",
            json.dumps(fire_event).encode(),
            fire_event["event_id"],
        )
        assert with_outbox == [(fire_event["event_id"],)]
        before = len(m.events())
        async with running_engine(settings, clock, m):
            again = await wait_for(
                lambda: [e for e in m.events()[before:] if e["event_id"] == fire_event["event_id"]],
                what="the outbox event published again",
            )
            assert again[0] == fire_event
            await wait_for(
                lambda: rows(db_url, "SELECT count(*) FROM alert_mqtt_outbox") == [(0,)],
                what="the outbox emptied after the PUBACK",
            )
