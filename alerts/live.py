"""The live picture of one building: newest value of every sensor and the aggregates.

"Newest" is by the reading's own timestamp, never by arrival: a backfilled (older) reading
does not overwrite it. A sensor is *known* when it has a value, is not stale and its floor
gateway is not offline; aggregates report whether every input was known (``complete``).

Everything a reading touches is indexed once at start (zones and sensors per floor, limits
per zone, tenants per floor), so the cost of a reading does not grow with the building.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from core.building import Building, Floor, Sensor, SensorKind, Tenant, Zone

FUTURE_TOLERANCE = timedelta(minutes=5)


@dataclass(slots=True)
class SensorLive:
    sensor: Sensor
    value: float | None = None
    ts: datetime | None = None
    stale: bool = False
    history: deque[tuple[datetime, float]] = field(default_factory=deque)


@dataclass(frozen=True, slots=True)
class Aggregate:
    value: float | None
    complete: bool


class Demand:
    """Time-weighted average of a tenant's total kW: a step function of the samples."""

    def __init__(self) -> None:
        self.samples: deque[tuple[datetime, float]] = deque()

    def add(self, ts: datetime, total: float) -> None:
        if self.samples and ts < self.samples[-1][0]:
            return
        self.samples.append((ts, total))

    def average(self, now: datetime, window_s: float) -> tuple[float | None, float]:
        """(average kW, seconds covered) over ``[now - window, now]``."""
        start = now - timedelta(seconds=window_s)
        while len(self.samples) > 1 and self.samples[1][0] <= start:
            self.samples.popleft()
        if not self.samples:
            return None, 0.0
        area = 0.0
        for i, (ts, kw) in enumerate(self.samples):
            begin = max(ts, start)
            end = self.samples[i + 1][0] if i + 1 < len(self.samples) else now
            if end > begin:
                area += kw * (end - begin).total_seconds()
        covered = (now - max(self.samples[0][0], start)).total_seconds()
        if covered <= 0:
            return None, 0.0
        return area / covered, covered


class Live:
    def __init__(self, building: Building, started_at: datetime) -> None:
        self.building = building
        self.started_at = started_at
        self.sensors = {s.id: SensorLive(s) for s in building.sensors}
        self.floor: dict[int, Floor] = {f.number: f for f in building.floors}
        self.zone: dict[str, Zone] = {z.id: z for z in building.zones}
        self.tenant: dict[str, Tenant] = {t.id: t for t in building.tenants}
        self.zone_limit: dict[str, float] = {
            z.id: z.load_limit_kg_m2 or self.floor[z.floor].load_limit_kg_m2 for z in building.zones
        }
        self.floor_zones: dict[int, list[Zone]] = {f: [] for f in self.floor}
        for zone in building.zones:
            self.floor_zones[zone.floor].append(zone)
        self.floor_online: dict[int, bool | None] = {f: None for f in self.floor}
        self.by_floor: dict[tuple[int, SensorKind], list[SensorLive]] = defaultdict(list)
        self.zone_load_sensors: dict[str, list[SensorLive]] = defaultdict(list)
        self.floor_sensors: dict[int, list[SensorLive]] = defaultdict(list)
        for live in self.sensors.values():
            s = live.sensor
            self.floor_sensors[s.floor].append(live)
            self.by_floor[(s.floor, s.kind)].append(live)
            if s.kind is SensorKind.LOAD and s.zone is not None:
                self.zone_load_sensors[s.zone].append(live)
        # zones of each floor that have a load sensor (the floor average is over them)
        self.floor_load_zones: dict[int, list[Zone]] = {
            f: [z for z in zones if z.id in self.zone_load_sensors]
            for f, zones in self.floor_zones.items()
        }
        self.lease_date: date | None = None
        self.zone_tenant: dict[str, str | None] = {}
        self.floor_tenants: dict[int, frozenset[str]] = {}
        self.tenant_meters: dict[str, list[SensorLive]] = {}
        self.meter_tenant: dict[str, str] = {}
        self.demand: dict[str, Demand] = {t.id: Demand() for t in building.tenants}
        self._silence: dict[str, timedelta] = {}
        self._silence_params: tuple[float, float] | None = None
        self._next_scan: datetime | None = None

    def refresh_leases(self, now: datetime) -> bool:
        """Who leases what today (building-local date); meters of a zone bill its tenant."""
        today = now.astimezone(self.building.tz).date()
        if today == self.lease_date:
            return False
        self.lease_date = today
        b = self.building
        self.zone_tenant = {z.id: b.tenant_of_zone(z.id, today) for z in b.zones}
        meters: dict[str, list[SensorLive]] = {t.id: [] for t in b.tenants}
        self.meter_tenant = {}
        for live in self.sensors.values():
            s = live.sensor
            if s.kind is not SensorKind.POWER:
                continue
            tenant = s.tenant or (self.zone_tenant.get(s.zone) if s.zone else None)
            if tenant is not None and tenant in meters:
                meters[tenant].append(live)
                self.meter_tenant[s.id] = tenant
        self.tenant_meters = meters
        on_floor: dict[int, set[str]] = {f: set() for f in self.floor}
        for zone in b.zones:
            if t := self.zone_tenant.get(zone.id):
                on_floor[zone.floor].add(t)
        for s in b.sensors:
            if s.tenant:
                on_floor[s.floor].add(s.tenant)
        self.floor_tenants = {f: frozenset(ts) for f, ts in on_floor.items()}
        return True

    def adopt(self, old: Live) -> None:
        """Take the values of ``old`` (the same building before a reload) that still apply."""
        for sid, live in self.sensors.items():
            prev = old.sensors.get(sid)
            if prev is None or prev.sensor.kind is not live.sensor.kind:
                continue
            live.value, live.ts, live.stale, live.history = (
                prev.value, prev.ts, prev.stale, prev.history,
            )  # fmt: skip
        for floor, online in old.floor_online.items():
            if floor in self.floor_online:
                self.floor_online[floor] = online
        for tenant, demand in old.demand.items():
            if tenant in self.demand:
                self.demand[tenant] = demand

    def accept(
        self, sensor_id: str, ts: datetime, value: float, now: datetime
    ) -> SensorLive | None:
        """Take a reading if it is newer than what we hold; None if ignored."""
        live = self.sensors.get(sensor_id)
        if live is None or ts > now + FUTURE_TOLERANCE:
            return None
        if live.ts is not None and ts <= live.ts:
            return None
        live.value, live.ts = value, ts
        if live.sensor.kind is SensorKind.TEMPERATURE:
            live.history.append((ts, value))
        return live

    def revive(self, live: SensorLive) -> None:
        """A stale sensor spoke again."""
        live.stale = False
        if self._next_scan is not None and live.ts is not None:
            silence = self._silence.get(live.sensor.id)
            if silence is not None:
                self._next_scan = min(self._next_scan, max(live.ts, self.started_at) + silence)

    def known(self, live: SensorLive) -> bool:
        return (
            live.value is not None
            and not live.stale
            and self.floor_online.get(live.sensor.floor) is not False
        )

    def stale_after(self, live: SensorLive, intervals: float, min_silence_s: float) -> datetime:
        base = self.started_at if live.ts is None else max(live.ts, self.started_at)
        return base + timedelta(seconds=max(intervals * live.sensor.interval_s, min_silence_s))

    def scan_staleness(
        self, now: datetime, intervals: float, min_silence_s: float
    ) -> list[SensorLive]:
        """Update every sensor's stale flag; return those whose flag changed.

        Deadlines only move later (readings are newer), so nothing can turn stale before
        the earliest deadline of the last scan: until then the scan is skipped.
        """
        if self._silence_params != (intervals, min_silence_s):
            self._silence_params = (intervals, min_silence_s)
            self._silence = {
                sid: timedelta(seconds=max(intervals * live.sensor.interval_s, min_silence_s))
                for sid, live in self.sensors.items()
            }
            self._next_scan = None
        if self._next_scan is not None and now <= self._next_scan:
            return []
        changed = []
        started, silence = self.started_at, self._silence
        earliest: datetime | None = None
        for sid, live in self.sensors.items():
            ts = live.ts
            deadline = (started if ts is None or ts < started else ts) + silence[sid]
            stale = now > deadline
            if stale != live.stale:
                live.stale = stale
                changed.append(live)
            if not stale and (earliest is None or deadline < earliest):
                earliest = deadline
        self._next_scan = earliest if earliest is not None else now + timedelta(days=3650)
        return changed

    def _max(self, sensors: list[SensorLive]) -> Aggregate:
        values = [s.value for s in sensors if self.known(s) and s.value is not None]
        return Aggregate(max(values) if values else None, len(values) == len(sensors))

    def zone_load(self, zone_id: str) -> Aggregate:
        sensors = self.zone_load_sensors.get(zone_id)
        return self._max(sensors) if sensors else Aggregate(None, False)

    def floor_load(self, floor: int, zones: dict[str, Aggregate] | None = None) -> Aggregate:
        """Mass of the zones with a known load over the floor area (a lower bound if partial).

        ``zones``: the zone loads of this floor when the caller has them already.
        """
        mass, complete, seen = 0.0, True, False
        for zone in self.floor_load_zones.get(floor, ()):
            agg = zones[zone.id] if zones is not None else self.zone_load(zone.id)
            if agg.value is None:
                complete = False
                continue
            complete = complete and agg.complete
            mass += agg.value * zone.area_m2
            seen = True
        area = self.floor[floor].area_m2
        return Aggregate(mass / area if seen else None, complete and seen)

    def _sum(self, sensors: list[SensorLive]) -> Aggregate:
        values = [s.value for s in sensors if self.known(s) and s.value is not None]
        if not values:
            return Aggregate(None, False)
        return Aggregate(sum(values), len(values) == len(sensors))

    def floor_power(self, floor: int) -> Aggregate:
        return self._sum(self.by_floor.get((floor, SensorKind.POWER), []))

    def tenant_power(self, tenant: str) -> Aggregate:
        return self._sum(self.tenant_meters.get(tenant, []))

    def rise_rate(self, live: SensorLive, window_s: float, min_span_s: float) -> float | None:
        """degC per minute between the oldest and newest reading within the window."""
        hist = live.history
        if not hist:
            return None
        newest_ts, newest = hist[-1]
        while hist and (newest_ts - hist[0][0]).total_seconds() > window_s:
            hist.popleft()
        oldest_ts, oldest = hist[0]
        span = (newest_ts - oldest_ts).total_seconds()
        if span < min_span_s:
            return None
        return (newest - oldest) / span * 60.0

    def sensors_of(self, floor: int, kind: SensorKind) -> list[SensorLive]:
        return self.by_floor.get((floor, kind), [])
