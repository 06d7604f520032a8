"""The device model: what every sensor of a building reads at a simulated instant.

:class:`DeviceModel` is deterministic: its values are a pure function of the building, the seed
and the simulated time, plus whatever overrides a scenario has set. It knows nothing about
transports; the MQTT simulator (and later the Modbus one) sample it.

Sizing, decided once when the model is built so that it never depends on when a process
started:

- every power meter is a circuit; an energy meter shares the circuit of the power meters with
  the same floor, zone and tenant, or is a circuit of its own when there are none;
- a tenant's circuits peak together at 55-75% of its contracted kW (40-85% with noise), split
  by the leased area each circuit serves; a meter with a zone and no tenant belongs to the
  zone's latest lease;
- the common-area circuits of a floor peak at 4-8% of the floor's capacity;
- if the circuits of a floor would peak above 80% of its capacity, they are scaled down to it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from core.building import DECIMALS, Building, Sensor, SensorKind
from simulators.profile import ShiftCurve, seconds_since_epoch, smooth_noise, stable_key, unit

COMMON_BASE = 0.4
"""Common areas (lighting, HVAC, lifts) run at this share of their peak even when idle."""

FLOOR_HEADROOM = 0.8
"""Circuits of a floor peak at most at this share of its power capacity."""

FIRE_STATES = (0, 1, 2)

_K = TypeVar("_K", str, int)


@dataclass(frozen=True, slots=True)
class _Meter:
    peak_kw: float  # expected power at full activity
    tenant: str | None  # None: common area
    initial_kwh: float  # register at the epoch


class DeviceModel:
    """Seedable model of every device of a building, as a function of simulated time."""

    def __init__(self, building: Building, *, seed: int = 0) -> None:
        self.building = building
        self.seed = seed
        self.curve = ShiftCurve(building.timezone)
        self._sensors = {s.id: s for s in building.sensors}
        self._keys = {s.id: stable_key(seed, "sensor", s.id) for s in building.sensors}
        self._meters = _size_meters(building, seed)
        self._zone_base = {
            z.id: 0.42 + 0.18 * unit(stable_key(seed, "zone", z.id)) for z in building.zones
        }
        self._zone_limit = {z.id: building.zone_limit(z) for z in building.zones}
        self._floor_heat = {
            f.number: 3.0 + 1.5 * unit(stable_key(seed, "heat", f.number)) for f in building.floors
        }
        self._overrides: dict[str, float] = {}
        self._silenced: set[str] = set()
        self._zone_factor: dict[str, float] = {}
        self._floor_power_factor: dict[int, float] = {}
        self._tenant_power_factor: dict[str, float] = {}
        self._floor_temp_shift: dict[int, float] = {}

    # -- reading values ------------------------------------------------------------------

    @property
    def sensors(self) -> list[Sensor]:
        return list(self.building.sensors)

    def sensor(self, sensor_id: str) -> Sensor:
        try:
            return self._sensors[sensor_id]
        except KeyError:
            raise KeyError(f"no sensor {sensor_id!r} in building {self.building.id!r}") from None

    def value(self, sensor_id: str, at: datetime) -> float | None:
        """What the sensor reads at ``at``; None while it is silenced."""
        sensor = self.sensor(sensor_id)
        if sensor_id in self._silenced:
            return None
        override = self._overrides.get(sensor_id)
        if override is not None:
            return override
        t = seconds_since_epoch(at)
        key = self._keys[sensor_id]
        if sensor.kind is SensorKind.POWER:
            meter = self._meters[sensor_id]
            noise = 0.65 * smooth_noise(key, t, 600) + 0.35 * smooth_noise(key + 1, t, 20)
            scale = self._floor_power_factor.get(sensor.floor, 1.0)
            if meter.tenant is not None:
                scale *= self._tenant_power_factor.get(meter.tenant, 1.0)
            power = self.expected_power(sensor_id, at) * (1 + 0.04 * noise) * scale
            return round(max(0.0, power), DECIMALS[SensorKind.POWER])
        if sensor.kind is SensorKind.ENERGY:
            return self._register(sensor_id, at)
        if sensor.kind is SensorKind.LOAD:
            assert sensor.zone is not None  # a load sensor always has a zone
            zone = sensor.zone
            zone_noise = smooth_noise(stable_key(self.seed, "zone", zone), t, 900)
            noise = 0.012 * zone_noise + 0.004 * smooth_noise(key, t, 60)
            load = (self.expected_load(zone, at) + noise * self._zone_limit[zone]) * (
                self._zone_factor.get(zone, 1.0)
            )
            return round(max(0.0, load), DECIMALS[SensorKind.LOAD])
        if sensor.kind is SensorKind.TEMPERATURE:
            heat = self._floor_heat[sensor.floor] * self.curve.mean(at, 3600)
            temp = 22.5 + 1.5 * unit(key, 1) + heat + 0.3 * smooth_noise(key, t, 300)
            return round(
                temp + self._floor_temp_shift.get(sensor.floor, 0.0),
                DECIMALS[SensorKind.TEMPERATURE],
            )
        return 0.0  # fire detector: normal

    def sample(self, at: datetime, sensor_ids: list[str] | None = None) -> dict[str, float]:
        """Values of many sensors (all by default) at one instant; silenced ones are left out."""
        out: dict[str, float] = {}
        for sensor_id in sensor_ids if sensor_ids is not None else self._sensors:
            value = self.value(sensor_id, at)
            if value is not None:
                out[sensor_id] = value
        return out

    def _level(self, meter: _Meter, at: datetime) -> float:
        level = self.curve.level(at)
        return level if meter.tenant is not None else COMMON_BASE + (1 - COMMON_BASE) * level

    def _register(self, sensor_id: str, at: datetime) -> float:
        meter = self._meters[sensor_id]
        hours = self.curve.hours(at)
        if meter.tenant is None:
            hours = COMMON_BASE * seconds_since_epoch(at) / 3600 + (1 - COMMON_BASE) * hours
        return round(
            max(0.0, meter.initial_kwh + meter.peak_kw * hours), DECIMALS[SensorKind.ENERGY]
        )

    def expected_power(self, sensor_id: str, at: datetime) -> float:
        """Noise-free, unscaled power of a meter's circuit at ``at`` (kW)."""
        meter = self._meters[self.sensor(sensor_id).id]
        return meter.peak_kw * self._level(meter, at)

    def peak_kw(self, sensor_id: str) -> float:
        """The circuit's expected power at full shift activity (kW)."""
        return self._meters[self.sensor(sensor_id).id].peak_kw

    def meter_tenant(self, sensor_id: str) -> str | None:
        """The tenant a power or energy meter is sized for (None: common area)."""
        return self._meters[self.sensor(sensor_id).id].tenant

    def expected_tenant_power(self, tenant_id: str, at: datetime) -> float:
        """Sum of the expected power of a tenant's power meters (kW)."""
        self.building.tenant(tenant_id)
        return sum(
            self.expected_power(s.id, at)
            for s in self.building.sensors
            if s.kind is SensorKind.POWER and self._meters[s.id].tenant == tenant_id
        )

    def expected_load(self, zone_id: str, at: datetime) -> float:
        """Noise-free, unscaled load of a zone at ``at`` (kg/m2)."""
        base = self._zone_base[self.building.zone(zone_id).id] + 0.03 * self.curve.level(at)
        return base * self._zone_limit[zone_id]

    def floor_power(self, floor: int, at: datetime) -> float:
        """Sum of what the power meters of a floor read at ``at`` (kW)."""
        return sum(
            self.value(s.id, at) or 0.0
            for s in self.building.sensors_on(floor)
            if s.kind is SensorKind.POWER
        )

    def tenant_power(self, tenant_id: str, at: datetime) -> float:
        """Sum of what a tenant's power meters read at ``at`` (kW)."""
        return sum(
            self.value(s.id, at) or 0.0
            for s in self.building.sensors
            if s.kind is SensorKind.POWER and self._meters[s.id].tenant == tenant_id
        )

    # -- scenario controls ---------------------------------------------------------------

    def override(self, sensor_id: str, value: float | None) -> None:
        """Pin a sensor to ``value`` (None: back to the model)."""
        self.sensor(sensor_id)
        if value is None:
            self._overrides.pop(sensor_id, None)
            return
        if not math.isfinite(value):
            raise ValueError(f"override of {sensor_id!r} must be finite, not {value!r}")
        self._overrides[sensor_id] = float(value)

    def silence(self, sensor_id: str, silent: bool = True) -> None:
        """A silenced sensor publishes nothing (a dead device or a cut cable)."""
        self.sensor(sensor_id)
        if silent:
            self._silenced.add(sensor_id)
        else:
            self._silenced.discard(sensor_id)

    def is_silenced(self, sensor_id: str) -> bool:
        return sensor_id in self._silenced

    def set_fire(self, sensor_id: str, state: int) -> None:
        """Set a fire detector to 0 (normal), 1 (alarm) or 2 (fault)."""
        if self.sensor(sensor_id).kind is not SensorKind.FIRE:
            raise ValueError(f"sensor {sensor_id!r} is not a fire detector")
        if state not in FIRE_STATES:
            raise ValueError(f"fire state must be one of {FIRE_STATES}, not {state!r}")
        self.override(sensor_id, None if state == 0 else float(state))

    def scale_zone_load(self, zone_id: str, factor: float) -> None:
        """Multiply a zone's load by ``factor`` (an equipment move-in or move-out)."""
        self.building.zone(zone_id)
        _set_factor(self._zone_factor, zone_id, factor)

    def scale_floor_power(self, floor: int, factor: float) -> None:
        """Multiply the power of every meter on a floor by ``factor``."""
        self.building.floor(floor)
        _set_factor(self._floor_power_factor, floor, factor)

    def scale_tenant_power(self, tenant_id: str, factor: float) -> None:
        """Multiply the power of a tenant's meters by ``factor``.

        Energy registers follow the expected curve only, so a scaled power does not change
        them: that keeps every register monotonic across restarts (see docs/simulators.md).
        """
        self.building.tenant(tenant_id)
        _set_factor(self._tenant_power_factor, tenant_id, factor)

    def shift_floor_temperature(self, floor: int, delta_degc: float) -> None:
        """Add ``delta_degc`` to every temperature sensor of a floor (0: back to normal)."""
        self.building.floor(floor)
        if not math.isfinite(delta_degc):
            raise ValueError(f"temperature shift must be finite, not {delta_degc!r}")
        if delta_degc == 0:
            self._floor_temp_shift.pop(floor, None)
        else:
            self._floor_temp_shift[floor] = delta_degc

    def reset(self) -> None:
        """Drop every override, silence and scale factor."""
        for state in (
            self._overrides,
            self._zone_factor,
            self._floor_power_factor,
            self._tenant_power_factor,
            self._floor_temp_shift,
        ):
            state.clear()
        self._silenced.clear()


def _set_factor(factors: dict[_K, float], key: _K, factor: float) -> None:
    if not math.isfinite(factor) or factor < 0:
        raise ValueError(f"scale factor must be finite and >= 0, not {factor!r}")
    if factor == 1:
        factors.pop(key, None)
    else:
        factors[key] = factor


def _latest_tenant(building: Building, zone_id: str) -> str | None:
    leases = [lease for lease in building.leases if lease.zone == zone_id]
    return max(leases, key=lambda lease: lease.from_).tenant if leases else None


def metered_tenant(building: Building, sensor: Sensor) -> str | None:
    """The tenant a power or energy meter is sized for: its own, else its zone's latest lease."""
    if sensor.tenant is not None:
        return sensor.tenant
    return _latest_tenant(building, sensor.zone) if sensor.zone is not None else None


def _size_meters(building: Building, seed: int) -> dict[str, _Meter]:
    """Peak kW and register start of every power and energy meter (see the module doc)."""
    meters = [s for s in building.sensors if s.kind in (SensorKind.POWER, SensorKind.ENERGY)]
    tenant_of = {s.id: metered_tenant(building, s) for s in meters}
    powered = {(s.floor, s.zone, s.tenant) for s in meters if s.kind is SensorKind.POWER}
    circuits = [
        s
        for s in meters
        if s.kind is SensorKind.POWER or (s.floor, s.zone, s.tenant) not in powered
    ]
    leased_area: dict[tuple[str, int], float] = defaultdict(float)
    for zone in building.zones:
        tenant = _latest_tenant(building, zone.id)
        if tenant is not None:
            leased_area[(tenant, zone.floor)] += zone.area_m2

    def weight(sensor: Sensor) -> float:
        tenant = tenant_of[sensor.id]
        if tenant is None:
            basis = 1.0
        elif sensor.zone is not None:
            basis = building.zone(sensor.zone).area_m2
        else:
            area = leased_area[(tenant, sensor.floor)]
            basis = area or building.floor(sensor.floor).area_m2 / 4
        return basis * (0.8 + 0.4 * unit(stable_key(seed, "weight", sensor.id)))

    groups: dict[tuple[str, str | int], list[Sensor]] = defaultdict(list)
    for sensor in circuits:
        tenant = tenant_of[sensor.id]
        groups[("tenant", tenant) if tenant else ("common", sensor.floor)].append(sensor)
    peak: dict[str, float] = {}
    for (kind, owner), members in groups.items():
        if kind == "tenant":
            assert isinstance(owner, str)
            share = 0.55 + 0.2 * unit(stable_key(seed, "tenant", owner))
            group_peak = building.tenant(owner).contracted_kw * share
        else:
            assert isinstance(owner, int)
            share = 0.04 + 0.04 * unit(stable_key(seed, "common", owner))
            group_peak = building.floor(owner).power_capacity_kw * share
        weights = {s.id: weight(s) for s in members}
        total = sum(weights.values())
        for sensor_id, w in weights.items():
            peak[sensor_id] = group_peak * w / total
    floor_total: dict[int, float] = defaultdict(float)
    for sensor in circuits:
        floor_total[sensor.floor] += peak[sensor.id]
    for sensor in circuits:
        room = FLOOR_HEADROOM * building.floor(sensor.floor).power_capacity_kw
        peak[sensor.id] *= min(1.0, room / floor_total[sensor.floor])
    out: dict[str, _Meter] = {}
    for sensor in meters:
        if sensor.id in peak:
            kw = peak[sensor.id]
        else:  # an energy meter on the circuit of its power meters
            triple = (sensor.floor, sensor.zone, sensor.tenant)
            kw = sum(
                peak[p.id]
                for p in meters
                if p.kind is SensorKind.POWER and (p.floor, p.zone, p.tenant) == triple
            )
        hours = 2_000 + 6_000 * unit(stable_key(seed, "register", sensor.id))
        out[sensor.id] = _Meter(kw, tenant_of[sensor.id], kw * hours)
    return out
