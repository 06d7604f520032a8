"""A small test building for the simulator tests, and helpers they share."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from core.building import Building, SensorKind
from core.building_file import parse_building

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


def small_building() -> Building:
    return parse_building(SMALL, "small.yaml")


def of_kind(b: Building, kind: SensorKind) -> list[str]:
    return [s.id for s in b.sensors if s.kind is kind]


def week(start: datetime, step: timedelta = timedelta(minutes=15)) -> list[datetime]:
    return [start + i * step for i in range(int(timedelta(days=7) / step) + 1)]
