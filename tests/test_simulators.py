"""The building simulators: value model, scenarios, sampling and the MQTT publisher."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import aiomqtt
import pytest

from core.building import Building, SensorKind
from core.building_file import load_building, parse_building
from core.payload import Reading, parse_envelope, parse_reading
from core.settings import MqttAddress
from core.topics import parse_topic, status_topic
from simulators import SCENARIOS, DeviceModel, Sampler, ScenarioError, make_scenario, profile
from simulators.mqtt_sim import _Floor, run_mqtt_simulator
from simulators.scenarios import Dropout, Fire, OverContract, Overload, Scenario
from tests.conftest import REF_TOWER, MqttTarget

SMALL = """
id: tb
name: Test Building
timezone: Europe/Berlin
tariffs:
  - id: tou
    periods:
      - {name: day, price_per_kwh: 1.0, windows: ["08:00-22:00"]}
      - {name: night, price_per_kwh: 0.4, windows: ["22:00-08:00"]}
tenants:
  - {id: acme, name: Acme Servers, contracted_kw: 400, tariff: tou}
  - {id: chipco, name: ChipCo, contracted_kw: 250, tariff: tou}
floors:
  - {number: 1, area_m2: 2000, height_m: 3.9, load_limit_kg_m2: 500, power_capacity_kw: 900}
  - {number: 2, area_m2: 2000, height_m: 3.9, load_limit_kg_m2: 500, power_capacity_kw: 600}
zones:
  - {id: f01-z1, floor: 1, area_m2: 1000, load_limit_kg_m2: 800}
  - {id: f01-z2, floor: 1, area_m2: 1000}
  - {id: f02-z1, floor: 2, area_m2: 1000}
  - {id: f02-z2, floor: 2, area_m2: 1000}
leases:
  - {tenant: acme, zone: f01-z1, from: 2025-01-01}
  - {tenant: acme, zone: f02-z1, from: 2025-01-01}
  - {tenant: chipco, zone: f02-z2, from: 2025-01-01, to: 2026-06-01}
  - {tenant: acme, zone: f02-z2, from: 2026-06-01}
sensors:
  - {id: tb-f01-load-z1, kind: load, floor: 1, zone: f01-z1, interval_s: 5}
  - {id: tb-f01-load-z2, kind: load, floor: 1, zone: f01-z2, interval_s: 5}
  - {id: tb-f01-temp-z1, kind: temperature, floor: 1, zone: f01-z1, interval_s: 10}
  - {id: tb-f01-fire-z1, kind: fire, floor: 1, zone: f01-z1, interval_s: 5}
  - {id: tb-f01-power-acme, kind: power, floor: 1, tenant: acme, interval_s: 5}
  - {id: tb-f01-energy-acme, kind: energy, floor: 1, tenant: acme, interval_s: 15}
  - {id: tb-f01-power-common, kind: power, floor: 1, interval_s: 5}
  - {id: tb-f01-energy-common, kind: energy, floor: 1, interval_s: 30}
  - {id: tb-f02-load-z1, kind: load, floor: 2, zone: f02-z1, interval_s: 5}
  - {id: tb-f02-temp-z1, kind: temperature, floor: 2, zone: f02-z1, interval_s: 10}
  - {id: tb-f02-temp-z2, kind: temperature, floor: 2, zone: f02-z2, interval_s: 60}
  - {id: tb-f02-fire-z2, kind: fire, floor: 2, zone: f02-z2, interval_s: 5}
  - {id: tb-f02-power-acme, kind: power, floor: 2, tenant: acme, interval_s: 5}
  - {id: tb-f02-power-chipco, kind: power, floor: 2, tenant: chipco, interval_s: 5}
  - {id: tb-f02-energy-chipco, kind: energy, floor: 2, tenant: chipco, interval_s: 15}
  - {id: tb-f02-power-z2, kind: power, floor: 2, zone: f02-z2, interval_s: 5}
  - {id: tb-f02-energy-z2, kind: energy, floor: 2, zone: f02-z2, interval_s: 15}
"""

# Wednesday 2026-11-18, 10:00 in Berlin: the day shift at full swing.
PEAK = datetime(2026, 11, 18, 10, 0, tzinfo=ZoneInfo("Europe/Berlin"))


@pytest.fixture(scope="module")
def small() -> Building:
    return parse_building(SMALL, "small.yaml")


@pytest.fixture(scope="module", params=["small", "ref-tower"])
def building(request: pytest.FixtureRequest) -> Building:
    if request.param == "small":
        return parse_building(SMALL, "small.yaml")
    return load_building(REF_TOWER)


def of_kind(b: Building, kind: SensorKind) -> list[str]:
    return [s.id for s in b.sensors if s.kind is kind]


def week(start: datetime, step: timedelta = timedelta(minutes=15)) -> list[datetime]:
    return [start + i * step for i in range(int(timedelta(days=7) / step) + 1)]


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


# -- MQTT -------------------------------------------------------------------------------


class Inbox:
    """What a subscriber received, with a way to wait for a condition on it."""

    def __init__(self) -> None:
        self.messages: list[aiomqtt.Message] = []
        self._arrived = asyncio.Event()

    async def collect(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self.messages.append(message)
            self._arrived.set()

    async def until(
        self, predicate: Callable[[list[aiomqtt.Message]], bool], within_s: float
    ) -> None:
        async with asyncio.timeout(within_s):
            while not predicate(self.messages):
                self._arrived.clear()
                await self._arrived.wait()


def subscriber(mqtt: MqttTarget) -> aiomqtt.Client:
    return aiomqtt.Client(mqtt.address.host, mqtt.address.port, protocol=aiomqtt.ProtocolVersion.V5)


async def clear_retained(mqtt: MqttTarget, building: Building) -> None:
    async with subscriber(mqtt) as client:
        for floor in building.floors:
            await client.publish(status_topic(building.id, floor.number, mqtt.prefix), b"", 1, True)


def statuses(messages: list[aiomqtt.Message]) -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = defaultdict(list)
    for m in messages:
        if str(m.topic).endswith("/status") and m.payload:
            assert isinstance(m.payload, bytes)
            body = json.loads(m.payload)
            out[body["source"]].append(body)
    return out


def check_telemetry(
    messages: list[aiomqtt.Message], building: Building, prefix: str
) -> dict[str, list[int]]:
    """Contract checks on every telemetry message; returns the seqs seen per source."""
    floors = {s.id: s.floor for s in building.sensors}
    last_ts: dict[str, datetime] = {}
    seqs: dict[str, list[int]] = defaultdict(list)
    seen: set[tuple[str, int]] = set()
    for message in messages:
        topic = parse_topic(str(message.topic), prefix)
        if topic.channel != "telemetry":
            continue
        assert message.qos == 1
        assert isinstance(message.payload, bytes)
        envelope = parse_envelope(message.payload)
        assert envelope.source == f"tb-f{topic.floor:02d}-sim"
        assert 0 < len(envelope.readings) <= 1000
        seqs[envelope.source].append(envelope.seq)
        if (envelope.source, envelope.seq) in seen:
            continue  # redelivered after a lost PUBACK: the same message again
        seen.add((envelope.source, envelope.seq))
        for raw in envelope.readings:
            reading = parse_reading(raw)
            assert floors[reading.sensor] == topic.floor
            assert reading.ts > last_ts.get(reading.sensor, datetime.min.replace(tzinfo=UTC))
            last_ts[reading.sensor] = reading.ts
    assert set(last_ts) == set(floors), "every sensor published"
    return seqs


async def retained_status(mqtt: MqttTarget, floors: int) -> dict[str, list[dict[str, object]]]:
    """What a subscriber that arrives now gets on the status topics (retained only)."""
    inbox = Inbox()
    async with subscriber(mqtt) as client:
        await client.subscribe(f"{mqtt.prefix}upstairs/v1/tb/+/status", qos=1)
        reader = asyncio.create_task(inbox.collect(client))
        try:
            await inbox.until(lambda ms: len(ms) >= floors, 5)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
    assert all(m.retain for m in inbox.messages)
    return statuses(inbox.messages)


async def test_mqtt_simulator_publishes_every_sensor(small: Building, mqtt: MqttTarget) -> None:
    inbox = Inbox()
    stop = asyncio.Event()
    wall_start = datetime.now(UTC)
    try:
        async with subscriber(mqtt) as sub:
            await sub.subscribe(f"{mqtt.prefix}upstairs/v1/tb/+/telemetry", qos=1)
            reader = asyncio.create_task(inbox.collect(sub))
            sim = asyncio.create_task(
                run_mqtt_simulator(
                    small,
                    mqtt.address,
                    prefix=mqtt.prefix,
                    speed=60,
                    stop=stop,
                    publish_interval_s=0.5,
                    seed=1,
                )
            )
            await asyncio.sleep(1.5)
            births = await retained_status(mqtt, 2)  # the retained birth reaches latecomers
            assert set(births) == {"tb-f01-sim", "tb-f02-sim"}
            assert all(b[0]["state"] == "online" and b[0]["v"] == 1 for b in births.values())
            await asyncio.sleep(1.5)
            stop.set()
            async with asyncio.timeout(10):
                await sim
            await asyncio.sleep(0.2)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        seqs = check_telemetry(inbox.messages, small, mqtt.prefix)
        for source, seen in seqs.items():
            assert seen == list(range(len(seen))), source  # +1 per message, from 0
            assert len(seen) >= 4
        payload = inbox.messages[0].payload
        assert isinstance(payload, bytes)
        first_ts = min(parse_reading(r).ts for r in parse_envelope(payload).readings)
        assert abs((first_ts - wall_start).total_seconds()) < 5  # simulated time starts now
        # a clean stop leaves "offline" retained for every floor
        after = await retained_status(mqtt, 2)
        assert {b[0]["state"] for b in after.values()} == {"offline"}
    finally:
        await clear_retained(mqtt, small)


class Proxy:
    """A TCP proxy to the broker that can go away (connections cut, port closed) and return."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.links: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self.handlers: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Proxy:
        await self.restore()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cut()
        await asyncio.gather(*self.handlers, return_exceptions=True)

    async def restore(self) -> None:
        self.server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for client, upstream in self.links:
            client.transport.abort()
            upstream.transport.abort()
        self.links.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self.links.append((writer, up_writer))
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self.handlers.discard(task)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


async def test_mqtt_simulator_reconnects_and_says_offline_when_cancelled(
    small: Building, mqtt: MqttTarget
) -> None:
    inbox = Inbox()

    def last_seq(messages: list[aiomqtt.Message]) -> list[int]:
        seqs: dict[str, int] = {"tb-f01-sim": -1, "tb-f02-sim": -1}
        for m in messages:
            if str(m.topic).endswith("/telemetry"):
                assert isinstance(m.payload, bytes)
                envelope = parse_envelope(m.payload)
                seqs[envelope.source] = max(seqs[envelope.source], envelope.seq)
        return [seqs["tb-f01-sim"], seqs["tb-f02-sim"]]

    def sensors_seen(messages: list[aiomqtt.Message]) -> set[str]:
        return {
            r["sensor"]
            for m in messages
            if str(m.topic).endswith("/telemetry") and isinstance(m.payload, bytes)
            for r in parse_envelope(m.payload).readings
        }

    def births(messages: list[aiomqtt.Message]) -> list[int]:
        states = statuses(messages)
        return [[h["state"] for h in states[f"tb-f0{n}-sim"]].count("online") for n in (1, 2)]

    def farewells(messages: list[aiomqtt.Message]) -> list[object]:
        return [h[-1].get("detail") for h in statuses(messages).values()]

    try:
        async with Proxy(mqtt.address.host, mqtt.address.port) as proxy, subscriber(mqtt) as sub:
            await sub.subscribe(f"{mqtt.prefix}upstairs/v1/tb/+/#", qos=1)
            reader = asyncio.create_task(inbox.collect(sub))
            address = MqttAddress(host="127.0.0.1", port=proxy.port)
            sim = asyncio.create_task(
                run_mqtt_simulator(
                    small, address, prefix=mqtt.prefix, speed=60, publish_interval_s=0.25
                )
            )
            await inbox.until(lambda ms: min(last_seq(ms)) >= 2, 5)
            await proxy.cut()  # the broker "goes away" for a second
            await asyncio.sleep(1.0)
            cut_at = last_seq(inbox.messages)
            await proxy.restore()
            everything = {s.id for s in small.sensors}
            await inbox.until(
                lambda ms: (
                    births(ms) == [2, 2]
                    and all(a >= b + 4 for a, b in zip(last_seq(ms), cut_at, strict=True))
                    and sensors_seen(ms) == everything
                ),
                10,
            )
            sim.cancel()
            await asyncio.gather(sim, return_exceptions=True)
            assert sim.cancelled()
            await inbox.until(lambda ms: farewells(ms) == ["cancelled", "cancelled"], 5)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        seqs = check_telemetry(inbox.messages, small, mqtt.prefix)
        for source, seen in seqs.items():  # nothing lost across the cut
            assert sorted(set(seen)) == list(range(max(seen) + 1)), source
        for source, history in statuses(inbox.messages).items():
            states = [h["state"] for h in history]
            assert states[0] == "online" and states.count("online") >= 2, (source, states)
            assert history[-1]["state"] == "offline"
    finally:
        await clear_retained(mqtt, small)


def test_catch_up_clock_backfills_then_runs_in_real_time() -> None:
    """`demo --speed 60 --backfill-hours H`: fast through the past, never into the future."""
    import time as _time
    from datetime import UTC as _UTC
    from datetime import datetime as _dt
    from datetime import timedelta as _td

    from simulators import SimClock

    start = _dt.now(_UTC) - _td(seconds=30)
    clock = SimClock(speed=1000.0, start=start, catch_up=True)
    _time.sleep(0.1)  # 100 simulated seconds would pass, but only 30 lie in the past
    caught_up = clock.now()
    assert abs((caught_up - _dt.now(_UTC)).total_seconds()) < 0.5
    _time.sleep(0.2)
    assert 0.1 < (clock.now() - caught_up).total_seconds() < 0.5  # now real time
    free = SimClock(speed=1000.0, start=start)
    _time.sleep(0.1)
    assert free.now() > _dt.now(_UTC) + _td(seconds=30)  # without catch-up it runs ahead
