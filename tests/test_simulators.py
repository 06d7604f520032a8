"""The building simulators: value model, scenarios and sampling (MQTT: test_simulators_mqtt)."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest

from core.building import Building, SensorKind
from core.building_file import load_building
from core.payload import Reading, parse_envelope
from simulators import SCENARIOS, DeviceModel, Sampler, ScenarioError, make_scenario, profile
from simulators.mqtt_sim import _Floor
from simulators.scenarios import Dropout, Fire, OverContract, Overload, Scenario
from tests.conftest import REF_TOWER
from tests.simulator_helpers import PEAK, of_kind, small_building, week


@pytest.fixture(scope="module")
def small() -> Building:
    return small_building()


@pytest.fixture(scope="module", params=["small", "ref-tower"])
def building(request: pytest.FixtureRequest) -> Building:
    if request.param == "small":
        return small_building()
    return load_building(REF_TOWER)


# -- value model ------------------------------------------------------------------------


def test_values_are_plausible(building: Building) -> None:
    model = DeviceModel(building, seed=7)
    at = PEAK.astimezone(building.tz).replace(hour=10)
    values = model.sample(at)
    assert set(values) == {s.id for s in building.sensors}
    for sensor in building.sensors:
        v = values[sensor.id]
        if sensor.kind is SensorKind.LOAD:
            assert sensor.zone is not None
            limit = building.zone_limit(building.zone(sensor.zone))
            assert 0.35 * limit <= v <= 0.70 * limit, sensor.id
        elif sensor.kind is SensorKind.TEMPERATURE:
            assert 22 <= v <= 30, sensor.id
        elif sensor.kind is SensorKind.FIRE:
            assert v == 0
        elif sensor.kind is SensorKind.ENERGY:
            assert v > 0
        else:
            assert v > 0
    for tenant in building.tenants:
        if model.expected_tenant_power(tenant.id, at) > 0:
            share = model.tenant_power(tenant.id, at) / tenant.contracted_kw
            assert 0.40 <= share <= 0.85, tenant.id
    for floor in building.floors:
        common = [
            s.id
            for s in building.sensors_on(floor.number)
            if s.kind is SensorKind.POWER and model.meter_tenant(s.id) is None
        ]
        common_kw = sum(values[c] for c in common)
        assert common_kw <= 0.1 * floor.power_capacity_kw


def test_values_are_deterministic_for_a_seed(small: Building) -> None:
    a, b, c = DeviceModel(small, seed=1), DeviceModel(small, seed=1), DeviceModel(small, seed=2)
    times = [PEAK + timedelta(seconds=s) for s in (0, 5, 3600, 86_400 * 3)]
    assert [a.sample(t) for t in times] == [b.sample(t) for t in times]
    assert [a.sample(t) for t in times] != [c.sample(t) for t in times]


def test_power_follows_the_shift_schedule(small: Building) -> None:
    model = DeviceModel(small, seed=0)
    meter = "tb-f01-power-acme"
    wednesday_peak = model.expected_power(meter, PEAK)
    assert model.expected_power(meter, PEAK.replace(hour=3)) < 0.3 * wednesday_peak
    assert model.expected_power(meter, PEAK.replace(hour=20)) == pytest.approx(wednesday_peak)
    saturday = model.expected_power(meter, PEAK + timedelta(days=3))
    sunday = model.expected_power(meter, PEAK + timedelta(days=4))
    assert sunday < saturday < 0.7 * wednesday_peak
    # a zone metered without a tenant belongs to its latest lease (acme since June 2026)
    assert model.meter_tenant("tb-f02-power-z2") == "acme"
    assert model.meter_tenant("tb-f01-power-common") is None


@pytest.mark.parametrize(
    "start",
    [datetime(2026, 3, 26, tzinfo=UTC), datetime(2026, 10, 22, tzinfo=UTC)],
    ids=["dst-spring", "dst-autumn"],
)
def test_energy_registers_grow_with_power(small: Building, start: datetime) -> None:
    model = DeviceModel(small, seed=3)
    paired = {
        "tb-f01-energy-acme": "tb-f01-power-acme",
        "tb-f01-energy-common": "tb-f01-power-common",
        "tb-f02-energy-z2": "tb-f02-power-z2",
    }
    times = week(start)
    for energy_id in of_kind(small, SensorKind.ENERGY):
        registers = [model.value(energy_id, t) for t in times]
        assert all(b is not None and a is not None and b >= a for a, b in pairwise(registers))
        if energy_id in paired:  # the register is the integral of its circuit's power
            power_id = paired[energy_id]
            for (t0, e0), (t1, e1) in pairwise(list(zip(times, registers, strict=True))):
                assert e0 is not None and e1 is not None
                mean_kw = (
                    model.expected_power(power_id, t0) + model.expected_power(power_id, t1)
                ) / 2
                assert e1 - e0 == pytest.approx(mean_kw * 0.25, rel=1e-6, abs=2e-3)


def test_energy_registers_continue_across_restarts(small: Building) -> None:
    times = week(datetime(2026, 11, 16, tzinfo=UTC), timedelta(hours=6))
    first = DeviceModel(small, seed=5)
    before = [first.sample(t) for t in times]
    # a new process: nothing cached, and the model asked the latest time first
    profile._CUMULATIVE.clear()
    profile._day.cache_clear()
    second = DeviceModel(small, seed=5)
    after = [second.sample(t) for t in reversed(times)][::-1]
    assert before == after


def test_a_normal_week_stays_in_range(building: Building) -> None:
    """Floors under capacity, loads at 35-70% of their limit, 22-30 degC, tenants peaking at
    40-85% of their contract: every 15 minutes of a week in the ``normal`` scenario."""
    model = DeviceModel(building, seed=11)
    scenario = make_scenario("normal", building, seed=11)
    limits = {
        s.id: building.zone_limit(building.zone(s.zone))
        for s in building.sensors
        if s.kind is SensorKind.LOAD and s.zone
    }
    temperatures = of_kind(building, SensorKind.TEMPERATURE)
    peak_share: dict[str, float] = defaultdict(float)
    for at in week(datetime(2026, 11, 16, tzinfo=UTC)):
        scenario.step(model, at)
        values = model.sample(at)
        for floor in building.floors:
            assert model.floor_power(floor.number, at) < floor.power_capacity_kw
        for sensor_id, limit in limits.items():
            assert 0.35 * limit <= values[sensor_id] <= 0.70 * limit, (sensor_id, at)
        for sensor_id in temperatures:
            assert 22 <= values[sensor_id] <= 30, (sensor_id, at)
        assert all(values[f] == 0 for f in of_kind(building, SensorKind.FIRE))
        for tenant in building.tenants:
            share = model.tenant_power(tenant.id, at) / tenant.contracted_kw
            peak_share[tenant.id] = max(peak_share[tenant.id], share)
    metered = {model.meter_tenant(s) for s in of_kind(building, SensorKind.POWER)}
    for tenant_id in metered - {None}:
        assert tenant_id is not None
        assert 0.40 <= peak_share[tenant_id] <= 0.85, tenant_id


def test_overrides_and_their_checks(small: Building) -> None:
    model = DeviceModel(small, seed=0)
    model.override("tb-f01-load-z1", 123.4)
    assert model.value("tb-f01-load-z1", PEAK) == 123.4
    model.override("tb-f01-load-z1", None)
    assert model.value("tb-f01-load-z1", PEAK) != 123.4
    model.set_fire("tb-f01-fire-z1", 2)
    assert model.value("tb-f01-fire-z1", PEAK) == 2
    model.silence("tb-f01-fire-z1")
    assert model.value("tb-f01-fire-z1", PEAK) is None
    assert "tb-f01-fire-z1" not in model.sample(PEAK)
    before = model.value("tb-f01-power-acme", PEAK)
    model.scale_floor_power(1, 2.0)
    assert model.value("tb-f01-power-acme", PEAK) == pytest.approx(2 * (before or 0), abs=0.02)
    model.reset()
    assert model.value("tb-f01-fire-z1", PEAK) == 0
    assert model.value("tb-f01-power-acme", PEAK) == before
    with pytest.raises(ValueError, match="not a fire detector"):
        model.set_fire("tb-f01-load-z1", 1)
    with pytest.raises(ValueError, match="fire state"):
        model.set_fire("tb-f01-fire-z1", 5)
    with pytest.raises(ValueError, match="scale factor"):
        model.scale_zone_load("f01-z1", -1)
    with pytest.raises(KeyError):
        model.override("nope", 1.0)
    with pytest.raises(ValueError, match="UTC offset"):
        model.value("tb-f01-load-z1", datetime(2026, 1, 1))


# -- scenarios --------------------------------------------------------------------------


def run(scenario: Scenario, model: DeviceModel, start: datetime, seconds: float) -> None:
    for s in range(0, int(seconds) + 1, 5):
        scenario.step(model, start + timedelta(seconds=s))


def test_scenario_registry(small: Building) -> None:
    assert set(SCENARIOS) == {"normal", "overload", "fire", "over-contract", "dropout"}
    for name in SCENARIOS:
        assert make_scenario(name, small, seed=1).name == name
    with pytest.raises(ScenarioError, match="unknown scenario 'rollover'"):
        make_scenario("rollover", small)
    with pytest.raises(ScenarioError, match="no load sensor"):
        Overload(small, zone="f02-z2")


def test_normal_changes_nothing(small: Building) -> None:
    model, fresh = DeviceModel(small, seed=4), DeviceModel(small, seed=4)
    run(make_scenario("normal", small), model, PEAK, 900)
    assert model.sample(PEAK + timedelta(seconds=900)) == fresh.sample(
        PEAK + timedelta(seconds=900)
    )


def test_overload_pushes_one_zone_past_its_limit(small: Building) -> None:
    model = DeviceModel(small, seed=0)
    scenario = Overload(small, seed=0, zone="f01-z1")
    limit = small.zone_limit(small.zone("f01-z1"))
    run(scenario, model, PEAK, 60)
    assert (model.value("tb-f01-load-z1", PEAK + timedelta(seconds=60)) or 0) < 0.7 * limit
    run(scenario, model, PEAK + timedelta(seconds=65), 300)
    at = PEAK + timedelta(seconds=365)
    assert 1.05 * limit <= (model.value("tb-f01-load-z1", at) or 0) <= 1.15 * limit
    other = model.value("tb-f01-load-z2", at) or 0
    assert other < 0.7 * small.zone_limit(small.zone("f01-z2"))


def test_fire_heats_a_floor_then_a_detector_alarms(small: Building) -> None:
    model = DeviceModel(small, seed=0)
    scenario = Fire(small, seed=0, floor=2)
    start = PEAK
    temps: dict[int, float] = {}
    fire: dict[int, float | None] = {}
    for s in range(0, 301, 5):
        at = start + timedelta(seconds=s)
        scenario.step(model, at)
        temps[s] = model.value("tb-f02-temp-z1", at) or 0
        fire[s] = model.value(scenario.detector, at)
    assert scenario.detector == "tb-f02-fire-z2"
    assert 9 <= temps[180] - temps[120] <= 11  # ~10 degC per minute
    assert fire[60] == 0 and fire[200] == 0
    assert fire[300] == 1
    assert (model.value("tb-f01-temp-z1", start + timedelta(seconds=300)) or 0) < 30


def test_over_contract_draws_above_the_contract(small: Building) -> None:
    model = DeviceModel(small, seed=0)
    scenario = OverContract(small, seed=0, tenant="chipco")
    contracted = small.tenant("chipco").contracted_kw
    for hour in (3, 10):  # at night as much as on shift
        start = PEAK.replace(hour=hour)
        run(scenario, model, start, 30)
        assert model.tenant_power("chipco", start + timedelta(seconds=30)) < 0.85 * contracted
        run(scenario, model, start + timedelta(seconds=35), 120)
        assert model.tenant_power("chipco", start + timedelta(seconds=155)) > contracted
        model.reset()
        scenario.started = None


def test_dropout_silences_one_sensor(small: Building) -> None:
    model = DeviceModel(small, seed=0)
    scenario = Dropout(small, seed=0, duration_s=60)
    assert DeviceModel(small).sensor(scenario.sensor).kind is SensorKind.LOAD
    run(scenario, model, PEAK, 20)
    assert model.value(scenario.sensor, PEAK + timedelta(seconds=20)) is not None
    run(scenario, model, PEAK + timedelta(seconds=30), 30)
    assert model.value(scenario.sensor, PEAK + timedelta(seconds=60)) is None
    assert len(model.sample(PEAK + timedelta(seconds=60))) == len(small.sensors) - 1
    run(scenario, model, PEAK + timedelta(seconds=95), 10)
    assert model.value(scenario.sensor, PEAK + timedelta(seconds=105)) is not None


# -- sampling ---------------------------------------------------------------------------


def test_sampler_follows_each_sensor_interval(small: Building) -> None:
    start = datetime(2026, 11, 18, 9, 0, 0, 500_000, tzinfo=UTC)
    sampler = Sampler(DeviceModel(small), make_scenario("normal", small), start)
    seen: dict[str, list[datetime]] = defaultdict(list)
    floors = {s.id: s.floor for s in small.sensors}
    for step in range(1, 13):
        for floor, readings in sampler.advance(start + timedelta(seconds=10 * step)).items():
            for r in readings:
                assert floors[r.sensor] == floor
                seen[r.sensor].append(r.ts)
    assert set(seen) == {s.id for s in small.sensors}
    for sensor in small.sensors:
        stamps = seen[sensor.id]
        gaps = {(b - a).total_seconds() for a, b in pairwise(stamps)}
        assert gaps == {sensor.interval_s}, sensor.id
        assert stamps[0] >= start and stamps[-1] <= start + timedelta(seconds=120)
    # a long stall (or a very high speed) thins the samples evenly instead of piling them up
    stall_end = start + timedelta(seconds=120 + 5 * 3600)
    late = sampler.advance(stall_end)
    assert sampler.skipped > 0
    by_sensor: dict[str, list[datetime]] = defaultdict(list)
    for readings in late.values():
        for r in readings:
            by_sensor[r.sensor].append(r.ts)
    for sensor in small.sensors:
        stamps = by_sensor[sensor.id]
        assert 100 <= len(stamps) <= sampler.max_samples + 1, sensor.id
        assert stamps == sorted(set(stamps))
        assert stamps[0] - start < timedelta(minutes=5) and stall_end - stamps[-1] < timedelta(
            minutes=5
        )
        assert max(b - a for a, b in pairwise(stamps)) <= timedelta(minutes=5)


def test_big_batches_are_split() -> None:
    floor = _Floor(1, "tb-f01-sim", "t/telemetry", "t/status")
    at = datetime(2026, 11, 18, tzinfo=UTC)
    floor.post([Reading(f"s{i}", at, float(i)) for i in range(2500)])
    envelopes = [parse_envelope(p) for p in floor.outbox]
    assert [(e.seq, len(e.readings)) for e in envelopes] == [(0, 1000), (1, 1000), (2, 500)]
