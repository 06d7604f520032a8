"""The retained floor-state payload, built from a building engine's live picture."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from alerts.engine import BuildingEngine
from core.alert_types import FireState, FloorState, Quality, Rule, Severity, ZoneState
from core.building import SensorKind


def _pct(value: float | None, limit: float) -> float | None:
    return None if value is None else round(100.0 * value / limit, 2)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _quality(value: float | None, complete: bool) -> Quality:
    if value is None:
        return "unknown"
    return "good" if complete else "partial"


def floor_state(engine: BuildingEngine, floor: int, now: datetime) -> FloorState:
    b, live = engine.building, engine.live
    f = b.floor(floor)
    zones = []
    for zone in (z for z in b.zones if z.floor == floor):
        agg, limit = live.zone_load(zone.id), b.zone_limit(zone)
        zones.append(
            ZoneState(
                zone=zone.id,
                tenant=live.zone_tenant.get(zone.id),
                load_kg_m2=_round(agg.value),
                limit_kg_m2=limit,
                load_pct=_pct(agg.value, limit),
                quality=_quality(agg.value, agg.complete),
            )
        )
    load, power = live.floor_load(floor), live.floor_power(floor)
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
    counts: Counter[Severity] = Counter()
    fire_latched, evac_from, flood = False, set(), False
    for alert in engine.alerts.values():
        if alert.floor == floor:
            counts[alert.severity] += 1
            fire_latched = fire_latched or alert.rule is Rule.FIRE
        if alert.evacuation is not None and floor in alert.evacuation.floors:
            evac_from.add(alert.evacuation.fire_floor)
        flood = flood or alert.rule is Rule.FLOOD
    online = live.floor_online.get(floor)
    stamps = [s.ts for s in live.sensors.values() if s.sensor.floor == floor and s.ts]
    pcts = [z.load_pct for z in zones if z.load_pct is not None]
    return FloorState(
        building=b.id,
        floor=floor,
        at=now,
        gateway="unknown" if online is None else ("online" if online else "offline"),
        zones=zones,
        max_zone_load_pct=max(pcts) if pcts else None,
        load_avg_kg_m2=_round(load.value),
        load_limit_kg_m2=f.load_limit_kg_m2,
        load_avg_pct=_pct(load.value, f.load_limit_kg_m2),
        load_quality=_quality(load.value, load.complete),
        power_kw=_round(power.value),
        power_capacity_kw=f.power_capacity_kw,
        power_pct=_pct(power.value, f.power_capacity_kw),
        power_quality=_quality(power.value, power.complete),
        max_temperature_c=_round(max((t for t in temps if t is not None), default=None)),
        fire_state=fire,
        fire_latched=fire_latched,
        evacuation=bool(evac_from),
        evacuation_from=sorted(evac_from),
        stale_sensors=sorted(
            s.sensor.id for s in live.sensors.values() if s.sensor.floor == floor and s.stale
        ),
        open_alerts=dict(counts),
        flood=flood,
        newest_reading_at=max(stamps) if stamps else None,
    )


def due_floor_states(
    engine: BuildingEngine,
    now: datetime,
    urgent: set[int],
    min_interval_s: float,
    max_interval_s: float,
) -> list[FloorState]:
    """Urgent floors now; changed floors after ``min_interval_s``; all after ``max``."""
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
            out.append(floor_state(engine, floor, now))
            engine.published[floor] = now
            engine.dirty_floors.discard(floor)
    return out
