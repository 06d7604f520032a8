"""The retained floor-state payload, built from a building engine's live picture.

Every floor is published at least every 10 s and a busy one every second, so the payload is
built as a plain mapping in the field order of :class:`core.alert_types.FloorState` and
serialised by pydantic-core (the same JSON, datetimes with ``Z``), without building the model:
that was most of the cost. ``tests/test_alerts_rules.py`` checks that it parses as one.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from pydantic_core import to_json

from alerts.engine import BuildingEngine
from core.alert_types import FireState, Quality, Rule
from core.building import SensorKind


def _pct(value: float | None, limit: float) -> float | None:
    return None if value is None else round(100.0 * value / limit, 2)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _quality(value: float | None, complete: bool) -> Quality:
    if value is None:
        return "unknown"
    return "good" if complete else "partial"


def floor_state(engine: BuildingEngine, floor: int, now: datetime) -> dict[str, Any]:
    """The state of one floor (a ``FloorState`` as a mapping); it costs that floor only."""
    live = engine.live
    f = live.floor[floor]
    zones = []
    pcts = []
    aggs = {zone.id: live.zone_load(zone.id) for zone in live.floor_zones.get(floor, ())}
    for zone in live.floor_zones.get(floor, ()):
        agg, limit = aggs[zone.id], live.zone_limit[zone.id]
        pct = _pct(agg.value, limit)
        if pct is not None:
            pcts.append(pct)
        zones.append({
            "zone": zone.id,
            "tenant": live.zone_tenant.get(zone.id),
            "load_kg_m2": _round(agg.value),
            "limit_kg_m2": limit,
            "load_pct": pct,
            "quality": _quality(agg.value, agg.complete),
        })  # fmt: skip
    load, power = live.floor_load(floor, aggs), live.floor_power(floor)
    temps = [s.value for s in live.sensors_of(floor, SensorKind.TEMPERATURE) if live.known(s)]
    detectors = live.sensors_of(floor, SensorKind.FIRE)
    known = [s.value for s in detectors if live.known(s)]
    fire: FireState
    if 1 in known:
        fire = "alarm"
    elif any(v not in (0, 1) for v in known):
        fire = "fault"
    elif not detectors or len(known) < len(detectors):
        fire = "unknown"
    else:
        fire = "normal"
    counts: Counter[str] = Counter()
    fire_latched = False
    for alert in engine.floor_alerts.get(floor, {}).values():
        counts[alert.severity.value] += 1
        fire_latched = fire_latched or alert.rule is Rule.FIRE
    evac_from = {
        alert.evacuation.fire_floor
        for alert in engine.evacuating.get(floor, {}).values()
        if alert.evacuation is not None
    }
    online = live.floor_online.get(floor)
    sensors = live.floor_sensors.get(floor, [])
    stamps = [s.ts for s in sensors if s.ts]
    return {
        "v": 1,
        "building": engine.id,
        "floor": floor,
        "at": now,
        "gateway": "unknown" if online is None else ("online" if online else "offline"),
        "zones": zones,
        "max_zone_load_pct": max(pcts) if pcts else None,
        "load_avg_kg_m2": _round(load.value),
        "load_limit_kg_m2": f.load_limit_kg_m2,
        "load_avg_pct": _pct(load.value, f.load_limit_kg_m2),
        "load_quality": _quality(load.value, load.complete),
        "power_kw": _round(power.value),
        "power_capacity_kw": f.power_capacity_kw,
        "power_pct": _pct(power.value, f.power_capacity_kw),
        "power_quality": _quality(power.value, power.complete),
        "max_temperature_c": _round(max((t for t in temps if t is not None), default=None)),
        "fire_state": fire,
        "fire_latched": fire_latched,
        "evacuation": bool(evac_from),
        "evacuation_from": sorted(evac_from),
        "stale_sensors": sorted(s.sensor.id for s in sensors if s.stale),
        "open_alerts": dict(counts),
        "flood": engine.flood_key in engine.alerts,
        "newest_reading_at": max(stamps) if stamps else None,
    }


def floor_state_json(engine: BuildingEngine, floor: int, now: datetime) -> bytes:
    return to_json(floor_state(engine, floor, now))


def due_floors(
    engine: BuildingEngine,
    now: datetime,
    urgent: set[int],
    min_interval_s: float,
    max_interval_s: float,
) -> list[int]:
    """Floors to publish now (marked published): urgent ones; changed ones after
    ``min_interval_s``; every floor after ``max_interval_s``."""
    out = []
    for floor in engine.floors:
        last = engine.published.get(floor)
        age = None if last is None else (now - last).total_seconds()
        due = (
            floor in urgent
            or age is None
            or age >= max_interval_s
            or (floor in engine.dirty_floors and age >= min_interval_s)
        )
        if due:
            out.append(floor)
            engine.published[floor] = now
            engine.dirty_floors.discard(floor)
    return out
