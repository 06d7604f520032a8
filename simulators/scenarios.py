"""Named scenarios: small scripts that act on a :class:`DeviceModel` over simulated time.

A scenario is built for a building (targets default to a seeded choice, or are named) and is
then stepped with the simulated time, in order; the first step starts its clock. Delays are
in simulated seconds, so at ``speed=60`` a 2-minute delay passes in 2 wall-clock seconds.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, TypeVar

from core.building import Building, SensorKind
from simulators.profile import stable_key
from simulators.values import DeviceModel, metered_tenant

_T = TypeVar("_T")


class ScenarioError(ValueError):
    """A scenario cannot run on this building (no such target, or nothing to act on)."""


class Scenario:
    """Base class, and the ``normal`` scenario: nothing happens."""

    name: ClassVar[str] = "normal"
    summary: ClassVar[str] = "normal operation: shifts, base load, no incident"

    def __init__(self, building: Building, *, seed: int = 0) -> None:
        self.building = building
        self.seed = seed
        self.started: datetime | None = None

    def step(self, model: DeviceModel, at: datetime) -> None:
        """Bring the model's overrides up to simulated time ``at`` (called in time order)."""
        if self.started is None:
            self.started = at
        self.apply(model, at, (at - self.started).total_seconds())

    def apply(self, model: DeviceModel, at: datetime, elapsed_s: float) -> None:
        """Act on the model at ``at``, ``elapsed_s`` simulated seconds into the scenario."""

    def _pick(self, options: list[_T], what: str) -> _T:
        if not options:
            raise ScenarioError(f"scenario {self.name!r}: building has no {what}")
        return options[stable_key(self.seed, self.name) % len(options)]


class Overload(Scenario):
    """An equipment move-in pushes one zone to about 110% of its load limit."""

    name = "overload"
    summary = "an equipment move-in ramps one zone's load to ~110% of its limit"

    def __init__(
        self,
        building: Building,
        *,
        seed: int = 0,
        zone: str | None = None,
        delay_s: float = 120.0,
        ramp_s: float = 60.0,
        level: float = 1.10,
    ) -> None:
        super().__init__(building, seed=seed)
        loaded = sorted({s.zone for s in building.sensors if s.kind is SensorKind.LOAD and s.zone})
        if zone is not None and zone not in loaded:
            raise ScenarioError(f"zone {zone!r} has no load sensor")
        self.zone = zone or self._pick(loaded, "zone with a load sensor")
        self.limit = building.zone_limit(building.zone(self.zone))
        self.delay_s, self.ramp_s, self.level = delay_s, ramp_s, level

    def apply(self, model: DeviceModel, at: datetime, elapsed_s: float) -> None:
        if elapsed_s < self.delay_s:
            return
        progress = min(1.0, (elapsed_s - self.delay_s) / self.ramp_s) if self.ramp_s > 0 else 1.0
        target = self.level * self.limit / model.expected_load(self.zone, at)
        model.scale_zone_load(self.zone, 1 + (target - 1) * progress)


class Fire(Scenario):
    """Temperatures on one floor rise about 10 degC a minute, then a detector alarms."""

    name = "fire"
    summary = "temperatures on one floor climb ~10 degC/min, then a fire detector goes to 1"

    def __init__(
        self,
        building: Building,
        *,
        seed: int = 0,
        floor: int | None = None,
        detector: str | None = None,
        delay_s: float = 60.0,
        rate_degc_per_min: float = 10.0,
        alarm_rise_degc: float = 30.0,
        max_rise_degc: float = 80.0,
    ) -> None:
        super().__init__(building, seed=seed)
        kinds: dict[int, set[SensorKind]] = {}
        for sensor in building.sensors:
            kinds.setdefault(sensor.floor, set()).add(sensor.kind)
        both = sorted(n for n, k in kinds.items() if {SensorKind.FIRE, SensorKind.TEMPERATURE} <= k)
        if floor is not None and floor not in both:
            raise ScenarioError(f"floor {floor} lacks a fire detector or a temperature sensor")
        self.floor = floor if floor is not None else self._pick(both, "floor with both sensors")
        detectors = sorted(
            s.id for s in building.sensors_on(self.floor) if s.kind is SensorKind.FIRE
        )
        if detector is not None and detector not in detectors:
            raise ScenarioError(f"{detector!r} is not a fire detector on floor {self.floor}")
        self.detector = detector or detectors[0]
        self.delay_s, self.rate = delay_s, rate_degc_per_min
        self.alarm_rise, self.max_rise = alarm_rise_degc, max_rise_degc

    def apply(self, model: DeviceModel, at: datetime, elapsed_s: float) -> None:
        if elapsed_s < self.delay_s:
            return
        rise = min(self.max_rise, (elapsed_s - self.delay_s) / 60 * self.rate)
        model.shift_floor_temperature(self.floor, rise)
        if rise >= self.alarm_rise:
            model.set_fire(self.detector, 1)


class OverContract(Scenario):
    """One tenant draws more than its contracted kW."""

    name = "over-contract"
    summary = "one tenant's meters draw ~115% of its contracted kW"

    def __init__(
        self,
        building: Building,
        *,
        seed: int = 0,
        tenant: str | None = None,
        delay_s: float = 60.0,
        level: float = 1.15,
    ) -> None:
        super().__init__(building, seed=seed)
        metered = sorted(
            {
                t
                for s in building.sensors
                if s.kind is SensorKind.POWER and (t := metered_tenant(building, s)) is not None
            }
        )
        if tenant is not None and tenant not in metered:
            raise ScenarioError(f"tenant {tenant!r} has no power meter")
        self.tenant = tenant or self._pick(metered, "tenant with a power meter")
        self.contracted_kw = building.tenant(self.tenant).contracted_kw
        self.delay_s, self.level = delay_s, level

    def apply(self, model: DeviceModel, at: datetime, elapsed_s: float) -> None:
        if elapsed_s < self.delay_s:
            return
        expected = model.expected_tenant_power(self.tenant, at)
        model.scale_tenant_power(self.tenant, self.level * self.contracted_kw / expected)


class Dropout(Scenario):
    """One sensor falls silent (a dead device or a cut cable)."""

    name = "dropout"
    summary = "one sensor (a load sensor by default) stops publishing"

    def __init__(
        self,
        building: Building,
        *,
        seed: int = 0,
        sensor: str | None = None,
        delay_s: float = 30.0,
        duration_s: float | None = None,
    ) -> None:
        super().__init__(building, seed=seed)
        ids = sorted(s.id for s in building.sensors)
        if sensor is not None and sensor not in ids:
            raise ScenarioError(f"no sensor {sensor!r}")
        loads = sorted(s.id for s in building.sensors if s.kind is SensorKind.LOAD)
        self.sensor = sensor or self._pick(loads or ids, "sensor")
        self.delay_s, self.duration_s = delay_s, duration_s

    def apply(self, model: DeviceModel, at: datetime, elapsed_s: float) -> None:
        ended = self.duration_s is not None and elapsed_s >= self.delay_s + self.duration_s
        model.silence(self.sensor, self.delay_s <= elapsed_s and not ended)


SCENARIOS: dict[str, type[Scenario]] = {
    cls.name: cls for cls in (Scenario, Overload, Fire, OverContract, Dropout)
}
"""Scenario classes by name; each is built as ``SCENARIOS[name](building, seed=seed)``."""


def make_scenario(name: str, building: Building, *, seed: int = 0) -> Scenario:
    """Build a scenario by name with its default targets; raise :class:`ScenarioError`."""
    try:
        cls = SCENARIOS[name]
    except KeyError:
        known = ", ".join(sorted(SCENARIOS))
        raise ScenarioError(f"unknown scenario {name!r}; known: {known}") from None
    return cls(building, seed=seed)
