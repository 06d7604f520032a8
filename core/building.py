"""The building model: floors, zones, tenants, leases, sensors and tariffs.

Everything here comes from a building file (see :mod:`core.building_file`), so every model
forbids unknown keys and checks itself when built. Cross-checks that span the whole building
(zones fit their floor, sensors point at existing zones, leases do not overlap) live in
:meth:`Building._cross_check` so that one call validates everything.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from datetime import date, time
from enum import StrEnum
from typing import Annotated, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.alert_config import AlertConfig

Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class SensorKind(StrEnum):
    POWER = "power"  # kW
    ENERGY = "energy"  # kWh, cumulative register
    LOAD = "load"  # kg/m2 over the sensor's zone
    TEMPERATURE = "temperature"  # degC
    FIRE = "fire"  # 0 normal, 1 alarm, 2 fault


UNITS: dict[SensorKind, str] = {
    SensorKind.POWER: "kW",
    SensorKind.ENERGY: "kWh",
    SensorKind.LOAD: "kg/m2",
    SensorKind.TEMPERATURE: "degC",
    SensorKind.FIRE: "state",
}

#: Decimals of the values the simulated devices report (their resolution: a power meter's
#: 0.01 kW, an energy register's 0.001 kWh (1 Wh), a load cell's 0.1 kg/m2, a thermometer's
#: 0.01 degC); the benchmark's seeded history has the same.
DECIMALS: dict[SensorKind, int] = {
    SensorKind.POWER: 2,
    SensorKind.ENERGY: 3,
    SensorKind.LOAD: 1,
    SensorKind.TEMPERATURE: 2,
    SensorKind.FIRE: 0,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Floor(_Strict):
    number: int = Field(ge=-5, le=200)
    area_m2: Positive
    height_m: Positive
    load_limit_kg_m2: Positive
    power_capacity_kw: Positive
    name: str | None = None


class Zone(_Strict):
    id: Id
    floor: int
    area_m2: Positive
    load_limit_kg_m2: Positive | None = None
    name: str | None = None


class Tenant(_Strict):
    id: Id
    name: str = Field(min_length=1, max_length=200)
    contracted_kw: Positive
    tariff: Id


class Lease(_Strict):
    tenant: Id
    zone: Id
    from_: date = Field(alias="from")
    to: date | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.to is not None and self.to <= self.from_:
            raise ValueError(f"lease ends ({self.to}) on or before it starts ({self.from_})")
        return self

    def overlaps(self, other: Lease) -> bool:
        a_end = self.to or date.max
        b_end = other.to or date.max
        return self.from_ < b_end and other.from_ < a_end


class Sensor(_Strict):
    id: Id
    kind: SensorKind
    floor: int
    zone: Id | None = None
    interval_s: float = Field(gt=0, le=86_400)
    tenant: Id | None = None

    @property
    def unit(self) -> str:
        return UNITS[self.kind]

    @model_validator(mode="after")
    def _kind_rules(self) -> Self:
        if self.kind is SensorKind.LOAD and self.zone is None:
            raise ValueError("a load sensor needs a zone (its kg/m2 are over that zone)")
        if self.tenant is not None and self.kind not in (SensorKind.POWER, SensorKind.ENERGY):
            raise ValueError("only power and energy meters meter a tenant")
        return self


_WINDOW = re.compile(r"^([01][0-9]|2[0-4]):([0-5][0-9])-([01][0-9]|2[0-4]):([0-5][0-9])$")


def _minute_of_day(hh: str, mm: str) -> int:
    minutes = int(hh) * 60 + int(mm)
    if minutes > 24 * 60:
        raise ValueError(f"{hh}:{mm} is past 24:00")
    return minutes


class TariffPeriod(_Strict):
    name: Id
    price_per_kwh: float = Field(ge=0, allow_inf_nan=False)
    windows: list[str] = Field(min_length=1)

    @field_validator("windows")
    @classmethod
    def _windows(cls, windows: list[str]) -> list[str]:
        for window in windows:
            match = _WINDOW.match(window)
            if not match:
                raise ValueError(f"window {window!r} must look like 'HH:MM-HH:MM'")
            start = _minute_of_day(match[1], match[2])
            end = _minute_of_day(match[3], match[4])
            if start == end:
                raise ValueError(f"window {window!r} is empty")
        return windows

    def minute_ranges(self) -> list[tuple[int, int]]:
        """Windows as [start, end) minutes of the day; a window past midnight is split."""
        out: list[tuple[int, int]] = []
        for window in self.windows:
            match = _WINDOW.match(window)
            assert match is not None
            start = _minute_of_day(match[1], match[2])
            end = _minute_of_day(match[3], match[4])
            if start < end:
                out.append((start, end))
            else:
                out.extend([(start, 24 * 60), (0, end)])
        return [(a, b) for a, b in out if a < b]


class Tariff(_Strict):
    id: Id
    currency: str = Field(default="CNY", pattern=r"^[A-Z]{3}$")
    periods: list[TariffPeriod] = Field(min_length=1)

    @model_validator(mode="after")
    def _covers_day_once(self) -> Self:
        owner: list[str | None] = [None] * (24 * 60)
        for period in self.periods:
            for start, end in period.minute_ranges():
                for minute in range(start, end):
                    if owner[minute] is not None:
                        raise ValueError(
                            f"periods {owner[minute]!r} and {period.name!r} overlap at "
                            f"{minute // 60:02d}:{minute % 60:02d}"
                        )
                    owner[minute] = period.name
        if None in owner:
            gap = owner.index(None)
            raise ValueError(f"no period covers {gap // 60:02d}:{gap % 60:02d}")
        names = [p.name for p in self.periods]
        if len(set(names)) != len(names):
            raise ValueError("period names must be unique")
        return self

    def period_at(self, at: time) -> TariffPeriod:
        minute = at.hour * 60 + at.minute
        for period in self.periods:
            if any(a <= minute < b for a, b in period.minute_ranges()):
                return period
        raise AssertionError("tariff covers the whole day")  # checked when built


class BuildingError(ValueError):
    """A cross-check failed; ``loc`` is the path of the offending key in the file."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


class Building(_Strict):
    id: Id
    name: str = Field(min_length=1, max_length=200)
    timezone: str
    floors: list[Floor] = Field(min_length=1)
    zones: list[Zone] = Field(default_factory=list)
    tenants: list[Tenant] = Field(default_factory=list)
    leases: list[Lease] = Field(default_factory=list)
    sensors: list[Sensor] = Field(default_factory=list)
    tariffs: list[Tariff] = Field(default_factory=list)
    alerts: AlertConfig = Field(default_factory=AlertConfig)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {name!r} (use an IANA name)") from exc
        return name

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def floor(self, number: int) -> Floor:
        for floor in self.floors:
            if floor.number == number:
                return floor
        raise KeyError(number)

    def zone(self, zone_id: str) -> Zone:
        for zone in self.zones:
            if zone.id == zone_id:
                return zone
        raise KeyError(zone_id)

    def zone_limit(self, zone: Zone) -> float:
        return zone.load_limit_kg_m2 or self.floor(zone.floor).load_limit_kg_m2

    def tenant(self, tenant_id: str) -> Tenant:
        for tenant in self.tenants:
            if tenant.id == tenant_id:
                return tenant
        raise KeyError(tenant_id)

    def sensors_on(self, floor: int) -> list[Sensor]:
        return [s for s in self.sensors if s.floor == floor]

    def tenant_of_zone(self, zone_id: str, on: date) -> str | None:
        for lease in self.leases:
            if lease.zone == zone_id and lease.from_ <= on and (lease.to is None or on < lease.to):
                return lease.tenant
        return None

    def problems(self) -> list[BuildingError]:
        """Every cross-check that fails, each with the path of its key (empty: all good)."""
        out: list[BuildingError] = []

        def bad(loc: tuple[str | int, ...], message: str) -> None:
            out.append(BuildingError(loc, message))

        _unique(self.floors, "floors", "number", out)
        _unique(self.zones, "zones", "id", out)
        _unique(self.tenants, "tenants", "id", out)
        _unique(self.sensors, "sensors", "id", out)
        _unique(self.tariffs, "tariffs", "id", out)
        floors = {f.number: f for f in self.floors}
        zone_area: dict[int, float] = defaultdict(float)
        for i, zone in enumerate(self.zones):
            if zone.floor not in floors:
                bad(
                    ("zones", i, "floor"),
                    f"zone {zone.id!r} is on floor {zone.floor}, which the building does not have",
                )
                continue
            zone_area[zone.floor] += zone.area_m2
            if zone_area[zone.floor] > floors[zone.floor].area_m2 + 1e-9:
                bad(
                    ("zones", i, "area_m2"),
                    f"zones of floor {zone.floor} add up to "
                    f"{zone_area[zone.floor]:g} m2, more than the floor's "
                    f"{floors[zone.floor].area_m2:g} m2",
                )
        zones = {z.id: z for z in self.zones}
        tariffs = {t.id for t in self.tariffs}
        tenants = {t.id for t in self.tenants}
        for i, tenant in enumerate(self.tenants):
            if tenant.tariff not in tariffs:
                bad(
                    ("tenants", i, "tariff"),
                    f"tenant {tenant.id!r} uses tariff {tenant.tariff!r}, which is not defined",
                )
        for i, lease in enumerate(self.leases):
            if lease.tenant not in tenants:
                bad(("leases", i, "tenant"), f"lease names unknown tenant {lease.tenant!r}")
            if lease.zone not in zones:
                bad(("leases", i, "zone"), f"lease names unknown zone {lease.zone!r}")
            for j in range(i):
                other = self.leases[j]
                if other.zone == lease.zone and other.overlaps(lease):
                    bad(
                        ("leases", i, "from"),
                        f"lease of zone {lease.zone!r} to "
                        f"{lease.tenant!r} overlaps the lease to {other.tenant!r} (leases[{j}])",
                    )
        for i, sensor in enumerate(self.sensors):
            if sensor.floor not in floors:
                bad(
                    ("sensors", i, "floor"),
                    f"sensor {sensor.id!r} is on floor "
                    f"{sensor.floor}, which the building does not have",
                )
            if sensor.zone is not None:
                if sensor.zone not in zones:
                    bad(
                        ("sensors", i, "zone"),
                        f"sensor {sensor.id!r} names unknown zone {sensor.zone!r}",
                    )
                elif zones[sensor.zone].floor != sensor.floor:
                    bad(
                        ("sensors", i, "zone"),
                        f"sensor {sensor.id!r} is on floor "
                        f"{sensor.floor} but zone {sensor.zone!r} is on floor "
                        f"{zones[sensor.zone].floor}",
                    )
            if sensor.tenant is not None and sensor.tenant not in tenants:
                bad(
                    ("sensors", i, "tenant"),
                    f"sensor {sensor.id!r} names unknown tenant {sensor.tenant!r}",
                )
        return out


def _unique(items: Sequence[BaseModel], section: str, key: str, out: list[BuildingError]) -> None:
    seen: dict[object, int] = {}
    for i, item in enumerate(items):
        value = getattr(item, key)
        if value in seen:
            out.append(
                BuildingError(
                    (section, i, key), f"{key} {value!r} repeats {section}[{seen[value]}]"
                )
            )
        seen[value] = i
