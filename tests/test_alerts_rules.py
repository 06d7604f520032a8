"""The pure rule engine: hysteresis, delays, latching, staleness, lifecycle. No I/O."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest

from alerts.conditions import Condition, advance, target_level
from core.alert_types import AlertState, CommandAction, EventKind, Rule, Severity
from tests.alerts_helpers import T0, Driver, ref_tower

LOAD = "ref-f03-load-z2"  # zone f03-z2, limit 500 kg/m2, tenant northbridge
QUIET = {"staleness": {"intervals": 1000}}  # other sensors never go offline in these tests


def opened(d: Driver, rule: str) -> list[str]:
    return [k for k, r, _ in d.kinds(rule) if k == "opened"]


def test_hysteresis_levels() -> None:
    levels = [(Severity.WARNING, 450.0), (Severity.CRITICAL, 500.0)]
    assert target_level(449, levels, 25, None) is None
    assert target_level(451, levels, 25, None) is Severity.WARNING
    assert target_level(480, levels, 25, Severity.CRITICAL) is Severity.CRITICAL
    assert target_level(474, levels, 25, Severity.CRITICAL) is Severity.WARNING
    assert target_level(426, levels, 25, Severity.WARNING) is Severity.WARNING
    assert target_level(424, levels, 25, Severity.WARNING) is None


def test_on_delay_needs_the_condition_to_hold() -> None:
    cond = Condition()
    assert advance(cond, Severity.WARNING, T0, 10, 0) is None
    assert advance(cond, None, T0 + timedelta(seconds=5), 10, 0) is None  # cancelled
    assert advance(cond, Severity.WARNING, T0 + timedelta(seconds=9), 10, 0) is None
    tr = advance(cond, Severity.WARNING, T0 + timedelta(seconds=19), 10, 0)
    assert tr is not None and tr.new is Severity.WARNING


@pytest.mark.parametrize("phase", [0, 1])
def test_load_oscillating_around_the_limit_gives_at_most_one_alert(phase: int) -> None:
    """+/-0.5% around the limit, a reading every 5 s, for 10 simulated minutes."""
    d = Driver(ref_tower(**QUIET))
    for i in range(120):
        d.reading(LOAD, 502.5 if (i + phase) % 2 else 497.5)
        d.advance(5)
    assert len(opened(d, "zone_load")) <= 1
    assert not [k for k in d.kinds("zone_load") if k[0] == "resolved"]


def test_random_noise_around_the_limit_never_flaps() -> None:
    rng = random.Random(7)
    d = Driver(ref_tower(**QUIET))
    for _ in range(600):
        d.reading(LOAD, 500 * (1 + rng.uniform(-0.005, 0.005)))
        d.advance(1)
    assert len(opened(d, "zone_load")) <= 1


def test_condition_returning_after_resolve_raises_a_new_alert() -> None:
    d = Driver(ref_tower(**QUIET))
    for value in [520, 520, 520]:
        d.reading(LOAD, value)
        d.advance(5)
    assert opened(d, "zone_load") == ["opened"]
    d.reading(LOAD, 300)
    d.advance(5)
    assert ("resolved", "zone_load", "critical") in d.kinds("zone_load")
    for value in [520, 520, 520]:
        d.reading(LOAD, value)
        d.advance(5)
    assert len(opened(d, "zone_load")) == 2
    ids = {c.alert.id for c in d.changes if c.alert.rule is Rule.ZONE_LOAD}
    assert len(ids) == 2


def test_worse_severity_updates_the_same_alert() -> None:
    d = Driver(ref_tower(**QUIET))
    for value in [460, 460, 460, 510, 510, 510]:
        d.reading(LOAD, value)
        d.advance(5)
    kinds = d.kinds("zone_load")
    assert kinds == [("opened", "zone_load", "warning"), ("severity", "zone_load", "critical")]
    assert len({c.alert.id for c in d.changes if c.alert.rule is Rule.ZONE_LOAD}) == 1


@pytest.mark.parametrize("trial", range(100))
def test_fire_stays_latched_until_reset(trial: int) -> None:
    rng = random.Random(trial)
    d = Driver(ref_tower(**QUIET))
    floor = rng.randint(1, 10)
    detector = f"ref-f{floor:02d}-fire-z{rng.randint(1, 4)}"
    at = d.now
    d.reading(detector, 1, at)
    for _ in range(rng.randint(0, 3)):  # flicker
        at += timedelta(seconds=rng.uniform(0.01, 5))
        d.reading(detector, rng.choice([0, 1]), at)
    at += timedelta(seconds=rng.uniform(0.01, 5))
    d.reading(detector, 0, at)
    d.advance(rng.uniform(1, 3600))
    fire = [c for c in d.changes if c.alert.rule is Rule.FIRE]
    assert fire[0].kind is EventKind.OPENED and fire[0].snapshot.latched
    alert = fire[0].alert
    assert alert.is_open and not alert.condition_active
    assert len({c.alert.id for c in fire}) == 1
    shelve = d.engine.command(
        alert.id or 0, CommandAction.SHELVE, "op", d.now, d.now + timedelta(hours=1)
    )
    assert not shelve.done and "cannot be shelved" in shelve.detail
    reset = d.engine.command(alert.id or 0, CommandAction.RESET, "op", d.now)
    assert reset.done and alert.state is AlertState.RESOLVED and alert.resolved_by == "op"


def test_fire_reset_refused_while_in_alarm_and_no_delay() -> None:
    d = Driver(ref_tower(**QUIET))
    changes = d.reading("ref-f05-fire-z2", 1)
    assert [c.kind for c in changes] == [EventKind.OPENED]  # no on-delay
    alert = changes[0].alert
    assert alert.severity is Severity.CRITICAL
    refused = d.engine.command(alert.id or 0, CommandAction.RESET, "op", d.now)
    assert not refused.done and "still active" in refused.detail


@pytest.mark.parametrize(
    ("floor", "floors", "tenants"),
    [
        (1, [1, 2], ["cellforge", "voltcab"]),
        (5, [4, 5, 6], ["axisline", "jinqiao-smt", "northbridge", "protoworks"]),
        (10, [9, 10], ["axisline", "lumen-optics"]),
    ],
)
def test_evacuation_names_floors_and_tenants(floor: int, floors: list[int], tenants: list[str]):
    d = Driver(ref_tower(**QUIET))
    change = d.reading(f"ref-f{floor:02d}-fire-z1", 1)[0]
    evac = change.snapshot.evacuation
    assert evac is not None and evac.floors == floors
    assert [t.id for t in evac.tenants] == tenants
    assert list(change.snapshot.tenants) == tenants
    assert all(t.name for t in evac.tenants)


def test_detector_fault_is_trouble() -> None:
    d = Driver(ref_tower(**QUIET))
    d.reading("ref-f02-fire-z1", 2)
    assert d.kinds() == [("opened", "fire_fault", "trouble")]
    d.reading("ref-f02-fire-z1", 0, d.now + timedelta(seconds=1))
    assert d.kinds()[-1] == ("resolved", "fire_fault", "trouble")


def test_silenced_sensor_becomes_unknown_and_its_alert_stays() -> None:
    d = Driver(ref_tower())
    for _ in range(4):
        d.reading(LOAD, 530)
        d.advance(5)
    assert opened(d, "zone_load") == ["opened"]
    d.advance(11)  # more than 3 intervals (15 s) after the last reading
    offline = [c for c in d.changes if c.alert.rule is Rule.SENSOR_OFFLINE]
    assert [c.alert.subject for c in offline if c.kind is EventKind.OPENED].count(
        f"sensor:{LOAD}"
    ) == 1
    assert d.engine.live.zone_load("f03-z2").value is None
    d.advance(3600)
    assert [k for k, _, _ in d.kinds("zone_load")].count("resolved") == 0
    d.reading(LOAD, 100)  # data returns, below the limit: now it may resolve
    assert any(
        c.kind is EventKind.RESOLVED and c.alert.subject == f"sensor:{LOAD}" for c in d.changes
    )
    assert ("resolved", "zone_load", "critical") in d.kinds("zone_load")


def test_partial_sum_can_raise_but_never_clear() -> None:
    d = Driver(ref_tower(floor_power={"on_delay_s": 0}))
    # Floor 1: voltcab meter + common meter, capacity 2600 kW.
    d.reading("ref-f01-power-voltcab", 2700)
    d.reading("ref-f01-power-common", 10)
    assert d.kinds("floor_power") == [("opened", "floor_power", "critical")]
    for _ in range(4):
        d.advance(5)
        d.reading("ref-f01-power-common", 10)
    # the voltcab meter is stale now: the sum without it is low, but it must not clear
    assert d.engine.live.floor_power(1).complete is False
    assert d.kinds("floor_power") == [("opened", "floor_power", "critical")]


def test_gateway_offline_is_one_floor_alert() -> None:
    d = Driver(ref_tower())
    d.engine.on_gateway(4, False, d.now)
    d._collect()
    d.advance(120)
    floor4 = [c for c in d.changes if c.alert.floor == 4]
    assert [(c.kind.value, c.alert.rule.value) for c in floor4] == [("opened", "floor_offline")]


def test_escalation_and_shelving_expiry() -> None:
    d = Driver(ref_tower(**QUIET, escalation={"critical_unacked_s": 60}))
    alert = d.reading("ref-f03-temp-z1", 80)  # on-delay 10 s
    assert alert == []
    d.advance(10)
    d.reading("ref-f03-temp-z1", 80)
    temp = [c for c in d.changes if c.alert.rule is Rule.TEMPERATURE]
    assert temp[0].kind is EventKind.OPENED
    d.advance(61)
    assert d.kinds()[-1][0] == "escalated"
    a = temp[0].alert
    assert d.engine.command(a.id or 0, CommandAction.ACK, "op", d.now).done
    d.advance(600)
    assert [k for k, _, _ in d.kinds()].count("escalated") == 1
    shelve = d.engine.command(
        a.id or 0, CommandAction.SHELVE, "op", d.now, d.now + timedelta(seconds=30)
    )
    assert shelve.done
    d.advance(31)
    assert d.kinds()[-1][0] == "unshelved"


def test_temperature_rise_is_critical() -> None:
    d = Driver(ref_tower(**QUIET))
    for i in range(4):
        d.reading("ref-f06-temp-z2", 25 + 1.5 * i)  # 9 degC/min
        d.advance(10)
    assert ("opened", "temperature_rise", "critical") in d.kinds("temperature_rise")


def test_tenant_demand_over_contract() -> None:
    # lumen-optics: 450 kW contracted; its meters are on floors 8 and 9.
    d = Driver(ref_tower(**QUIET, tenant_demand={"window_s": 300}))
    for _ in range(40):
        d.reading("ref-f08-power-lumen-optics", 300)
        d.reading("ref-f09-power-lumen-optics", 200)
        d.advance(5)
    assert ("opened", "tenant_demand", "critical") in d.kinds("tenant_demand")


def test_flood_raises_one_flood_alert() -> None:
    d = Driver(ref_tower(**QUIET))
    for floor in range(1, 10):
        d.reading(f"ref-f{floor:02d}-fire-z1", 2)
        d.reading(f"ref-f{floor:02d}-fire-z2", 2)
    assert opened(d, "flood") == ["opened"]
    d.advance(601)
    assert ("resolved", "flood", "warning") in d.kinds("flood")


def test_floor_state_payload_is_a_valid_floor_state() -> None:
    from alerts.floor_state import floor_state, floor_state_json
    from core.alert_types import FloorState

    d = Driver(ref_tower(**QUIET))
    d.reading(LOAD, 470)
    d.reading("ref-f03-fire-z1", 1)
    d.advance(1)
    for floor in (2, 3, 4):
        state = FloorState.model_validate_json(floor_state_json(d.engine, floor, d.now))
        assert state.model_dump(mode="json") == FloorState.model_validate(
            floor_state(d.engine, floor, d.now)
        ).model_dump(mode="json")
        assert state.evacuation and state.evacuation_from == [3]
    state = FloorState.model_validate_json(floor_state_json(d.engine, 3, d.now))
    assert state.fire_state == "alarm" and state.fire_latched
    assert state.zones[1].load_kg_m2 == 470 and state.zones[1].quality == "good"
    assert state.open_alerts == {Severity.CRITICAL: 1}


def _without_sensor(building: Any, sensor_id: str) -> Any:
    data = building.model_dump(by_alias=True)
    data["sensors"] = [s for s in data["sensors"] if s["id"] != sensor_id]
    return type(building).model_validate(data)


def test_reloaded_building_keeps_state_and_settles_removed_subjects() -> None:
    d = Driver(ref_tower(**QUIET, zone_load={"on_delay_s": 0}, temperature={"on_delay_s": 30}))
    d.reading(LOAD, 520)  # open zone_load alert
    d.reading("ref-f02-fire-z1", 1)  # latched fire
    d.reading("ref-f04-fire-z1", 2)  # fault on a detector that will be removed
    d.reading("ref-f06-temp-z1", 70)  # pending on-delay
    load = next(c.alert for c in d.changes if c.alert.rule is Rule.ZONE_LOAD)
    fire = next(c.alert for c in d.changes if c.alert.rule is Rule.FIRE)
    old = d.engine
    changed = ref_tower(**QUIET, zone_load={"on_delay_s": 0}, temperature={"warning_c": 30})
    for gone in ("ref-f02-fire-z1", "ref-f04-fire-z1"):
        changed = _without_sensor(changed, gone)
    d.engine = old.reloaded(changed, d.now)
    d._collect()
    assert d.engine.alerts[load.key] is load and d.engine.by_id[load.id or 0] is load
    assert d.engine.live.zone_load("f03-z2").value == 520
    fault = [c for c in d.changes if c.alert.rule is Rule.FIRE_FAULT]
    assert [c.kind for c in fault] == [EventKind.OPENED, EventKind.RESOLVED]
    # the latched fire alarm of the removed detector waits for its reset
    assert fire.is_open and not fire.condition_active and d.kinds("fire")[-1][0] == "cleared"
    assert d.engine.command(fire.id or 0, CommandAction.RESET, "op", d.now).done
    # new rule parameters apply; the pending on-delay started before the reload completes
    d.advance(10)
    d.reading("ref-f06-temp-z1", 70)
    assert d.kinds("temperature") == [("opened", "temperature", "critical")]
    d.reading("ref-f07-temp-z1", 35)  # above the new warning (30), below the old one (40)
    assert d.engine.conditions[(Rule.TEMPERATURE, "sensor:ref-f07-temp-z1")].pending_dir == 1
    d.reading(LOAD, 530)
    assert opened(d, "zone_load") == ["opened"]  # no duplicate after the reload


def test_intake_takes_exactly_what_the_contract_accepts() -> None:
    import json

    from alerts.intake import feed_telemetry

    d = Driver(ref_tower(**QUIET))
    ts = "2026-11-22T08:00:00.000Z"

    def body(*readings: object) -> bytes:
        return json.dumps({"v": 1, "source": "gw", "seq": 1, "readings": list(readings)}).encode()

    good = {"sensor": LOAD, "ts": ts, "value": 100}
    refused = [
        {"sensor": LOAD, "ts": ts, "value": True},  # a boolean is not a number
        {"sensor": LOAD, "ts": ts, "value": "1"},
        {"sensor": LOAD, "ts": "2026-11-22T08:00:00", "value": 1.0},  # naive
        {"sensor": LOAD, "ts": "yesterday", "value": 1.0},
        {"sensor": LOAD, "ts": ts, "value": 1.0, "unit": "kg"},  # unknown key
        {"sensor": LOAD, "value": 1.0},
        {"sensor": "ref-f04-load-z1", "ts": ts, "value": 1.0},  # registered on floor 4
        {"sensor": "nobody", "ts": ts, "value": 1.0},
        [LOAD, ts, 1.0],
    ]
    assert feed_telemetry(d.engine, 3, body(*refused), d.now) == 0
    assert feed_telemetry(d.engine, 3, b"{not json", d.now) == 0
    assert (
        feed_telemetry(d.engine, 3, b'{"v": 2, "source": "gw", "seq": 1, "readings": []}', d.now)
        == 0
    )
    nan = b'{"v":1,"source":"gw","seq":1,"readings":[{"sensor":"%s","ts":"%s","value":NaN}]}'
    assert feed_telemetry(d.engine, 3, nan % (LOAD.encode(), ts.encode()), d.now) == 0
    assert feed_telemetry(d.engine, 3, body(*refused, good), d.now) == 1
    assert d.engine.live.sensors[LOAD].value == 100.0
    later = {"sensor": LOAD, "ts": "2026-11-22T16:00:01+08:00", "value": 200.5}
    assert feed_telemetry(d.engine, 3, body(later, good), d.now) == 1  # older one ignored
    assert d.engine.live.sensors[LOAD].value == 200.5
