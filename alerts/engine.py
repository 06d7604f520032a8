"""Rule evaluation of one building: state + reading + time -> alert changes. No I/O.

The service feeds readings, gateway status, ticks and operator commands in, and drains the
resulting :class:`Effects` (alert changes to persist and publish, conditions to save, floors
whose state must be published now). Tests drive it directly with any timeline.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from alerts.conditions import Condition, Level, Transition, advance, target_level
from alerts.lifecycle import Alert, Change, Decision, command, condition_cleared, record, timers
from alerts.lifecycle import set_severity as lifecycle_severity
from alerts.live import Live, SensorLive
from core.alert_config import ThresholdRule
from core.alert_types import CommandAction, Evacuation, EventKind, Rule, Severity, TenantRef
from core.building import Building, SensorKind

Key = tuple[Rule, str]
W, C, T = Severity.WARNING, Severity.CRITICAL, Severity.TROUBLE


@dataclass(frozen=True, slots=True)
class Info:
    """What an alert says about its subject, computed when a condition moves."""

    message: str
    value: float | None = None
    limit: float | None = None
    unit: str | None = None
    floor: int | None = None
    zone: str | None = None
    sensor: str | None = None
    tenants: tuple[str, ...] = ()
    latched: bool = False
    evacuation: Evacuation | None = None


@dataclass(slots=True)
class Effects:
    changes: list[Change] = field(default_factory=list)
    conditions: dict[Key, Condition | None] = field(default_factory=dict)
    urgent_floors: set[int] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.changes or self.conditions)


class BuildingEngine:
    def __init__(self, building: Building, started_at: datetime) -> None:
        self.building = building
        self.cfg = building.alerts
        self.id = building.id
        self.live = Live(building, started_at)
        self.live.refresh_leases(started_at)
        self.conditions: dict[Key, Condition] = {}
        self.alerts: dict[Key, Alert] = {}
        self.by_id: dict[int, Alert] = {}
        self.opened: deque[datetime] = deque()
        self.floors = sorted(f.number for f in building.floors)
        self.dirty_floors: set[int] = set()
        self.published: dict[int, datetime] = {}
        self._fx = Effects()
        self._evals: dict[Key, Callable[[datetime], None]] = {}
        self._build_evaluators()

    # ----- inputs -------------------------------------------------------------------------
    def restore(self, alerts: list[Alert], conditions: dict[Key, Condition]) -> None:
        for alert in alerts:
            self.alerts[alert.key] = alert
            if alert.id is not None:
                self.by_id[alert.id] = alert
        self.conditions.update(conditions)

    def restore_opened(self, times: list[datetime]) -> None:
        self.opened.extend(sorted(times))

    def seed(self, sensor_id: str, ts: datetime, value: float, now: datetime) -> None:
        """A value from before the start (sensor_latest); it evaluates nothing by itself."""
        self.live.accept(sensor_id, ts, value, now)

    def on_reading(self, sensor_id: str, ts: datetime, value: float, now: datetime) -> bool:
        live = self.live.accept(sensor_id, ts, value, now)
        if live is None:
            return False
        s = live.sensor
        self.dirty_floors.add(s.floor)
        if live.stale:
            live.stale = False
            self._eval((Rule.FLOOR_OFFLINE, f"floor:{s.floor}"), ts)
            self._eval((Rule.SENSOR_OFFLINE, f"sensor:{s.id}"), ts)
        if s.kind is SensorKind.LOAD and s.zone is not None:
            self._eval((Rule.ZONE_LOAD, f"zone:{s.zone}"), ts)
            self._eval((Rule.FLOOR_LOAD, f"floor:{s.floor}"), ts)
        elif s.kind is SensorKind.POWER:
            self._eval((Rule.FLOOR_POWER, f"floor:{s.floor}"), ts)
            tenant = self.live.meter_tenant.get(s.id)
            if tenant is not None:
                total = self.live.tenant_power(tenant)
                if total.value is not None:
                    self.live.demand[tenant].add(ts, total.value)
        elif s.kind is SensorKind.TEMPERATURE:
            self._eval((Rule.TEMPERATURE, f"sensor:{s.id}"), ts)
            self._eval((Rule.TEMPERATURE_RISE, f"sensor:{s.id}"), ts)
        elif s.kind is SensorKind.FIRE:
            self._eval((Rule.FIRE, f"sensor:{s.id}"), ts)
            self._eval((Rule.FIRE_FAULT, f"sensor:{s.id}"), ts)
        return True

    def on_gateway(self, floor: int, online: bool, at: datetime) -> None:
        if floor not in self.live.floor_online or self.live.floor_online[floor] is online:
            return
        self.live.floor_online[floor] = online
        self._fx.urgent_floors.add(floor)
        self._eval((Rule.FLOOR_OFFLINE, f"floor:{floor}"), at)

    def tick(self, now: datetime) -> None:
        self.live.refresh_leases(now)
        st = self.cfg.staleness
        changed = self.live.scan_staleness(now, st.intervals, st.min_silence_s)
        for floor in {live.sensor.floor for live in changed}:
            self.dirty_floors.add(floor)
            self._eval((Rule.FLOOR_OFFLINE, f"floor:{floor}"), now)
        for live in changed:
            self._eval((Rule.SENSOR_OFFLINE, f"sensor:{live.sensor.id}"), now)
        for key in [k for k, c in self.conditions.items() if c.pending_dir]:
            self._eval(key, now)
        for tenant in self.building.tenants:
            self._eval((Rule.TENANT_DEMAND, f"tenant:{tenant.id}"), now)
        self._eval((Rule.FLOOD, f"building:{self.id}"), now)
        esc = self.cfg.escalation
        for alert in list(self.alerts.values()):
            self._emit(timers(alert, now, esc.critical_unacked_s, esc.repeat))

    def command(
        self,
        alert_id: int,
        action: CommandAction,
        actor: str,
        at: datetime,
        shelve_until: datetime | None = None,
    ) -> Decision:
        alert = self.by_id.get(alert_id)
        if alert is None:
            return Decision(False, "no open alert with this id", [])
        decision = command(
            alert, action, actor, at, shelve_until=shelve_until, max_shelve_s=self.cfg.max_shelve_s
        )
        self._emit(decision.changes)
        return decision

    def drain(self) -> Effects:
        fx, self._fx = self._fx, Effects()
        return fx

    def stored(self, alert: Alert) -> None:
        """The store gave ``alert`` its id."""
        if alert.id is not None and alert.is_open:
            self.by_id[alert.id] = alert

    # ----- rules --------------------------------------------------------------------------
    def _build_evaluators(self) -> None:
        b, ev = self.building, self._evals
        for zone in b.zones:
            ev[(Rule.ZONE_LOAD, f"zone:{zone.id}")] = partial(self._zone_load, zone.id)
        for f in self.floors:
            ev[(Rule.FLOOR_LOAD, f"floor:{f}")] = partial(self._floor_load, f)
            ev[(Rule.FLOOR_POWER, f"floor:{f}")] = partial(self._floor_power, f)
            ev[(Rule.FLOOR_OFFLINE, f"floor:{f}")] = partial(self._floor_offline, f)
        for t in b.tenants:
            ev[(Rule.TENANT_DEMAND, f"tenant:{t.id}")] = partial(self._demand, t.id)
        for live in self.live.sensors.values():
            sid, kind = live.sensor.id, live.sensor.kind
            ev[(Rule.SENSOR_OFFLINE, f"sensor:{sid}")] = partial(self._offline, live)
            if kind is SensorKind.TEMPERATURE:
                ev[(Rule.TEMPERATURE, f"sensor:{sid}")] = partial(self._temp, live)
                ev[(Rule.TEMPERATURE_RISE, f"sensor:{sid}")] = partial(self._rise, live)
            elif kind is SensorKind.FIRE:
                ev[(Rule.FIRE, f"sensor:{sid}")] = partial(self._fire, live)
                ev[(Rule.FIRE_FAULT, f"sensor:{sid}")] = partial(self._fault, live)
        ev[(Rule.FLOOD, f"building:{self.id}")] = self._flood

    def _eval(self, key: Key, at: datetime) -> None:
        fn = self._evals.get(key)
        if fn is not None:
            fn(at)

    def _cond(self, key: Key) -> Condition:
        cond = self.conditions.get(key)
        if cond is None:
            cond = self.conditions[key] = Condition()
        return cond

    def _move(
        self,
        key: Key,
        *,
        target: Level,
        at: datetime,
        on_s: float,
        off_s: float,
        info: Callable[[], Info],
        can_fall: bool = True,
    ) -> None:
        cond = self._cond(key)
        before = cond.snapshot()
        transition = advance(cond, target, at, on_s, off_s, can_fall=can_fall)
        if cond.snapshot() != before:
            self._fx.conditions[key] = None if cond.idle else cond
        if cond.idle:
            del self.conditions[key]
        if transition is not None:
            self._transition(key, transition, at, info())

    def _threshold(
        self,
        key: Key,
        *,
        value: float | None,
        complete: bool,
        limit: float,
        rule: ThresholdRule,
        at: datetime,
        info: Callable[[], Info],
    ) -> None:
        if value is None:
            return  # unknown: neither fire nor clear
        cond = self._cond(key)
        levels = [(W, limit * rule.warning_pct / 100), (C, limit * rule.critical_pct / 100)]
        target = target_level(value, levels, limit * rule.deadband_pct / 100, cond.level)
        self._move(
            key, target=target, at=at, on_s=rule.on_delay_s, off_s=rule.off_delay_s,
            info=info, can_fall=complete,
        )  # fmt: skip

    def _zone_load(self, zone_id: str, at: datetime) -> None:
        zone = self.building.zone(zone_id)
        agg, limit = self.live.zone_load(zone_id), self.building.zone_limit(zone)
        tenant = self.live.zone_tenant.get(zone_id)

        def info() -> Info:
            pct = 100 * (agg.value or 0) / limit
            return Info(
                f"Zone {zone_id} (floor {zone.floor}) load {agg.value:.1f} kg/m2 is "
                f"{pct:.1f}% of its limit {limit:g} kg/m2",
                agg.value, limit, "kg/m2", zone.floor, zone_id,
                tenants=(tenant,) if tenant else (),
            )  # fmt: skip

        key = (Rule.ZONE_LOAD, f"zone:{zone_id}")
        self._threshold(
            key,
            value=agg.value,
            complete=agg.complete,
            limit=limit,
            rule=self.cfg.zone_load,
            at=at,
            info=info,
        )

    def _floor_load(self, floor: int, at: datetime) -> None:
        agg, limit = self.live.floor_load(floor), self.building.floor(floor).load_limit_kg_m2

        def info() -> Info:
            return Info(
                f"Floor {floor} average load {agg.value:.1f} kg/m2 is "
                f"{100 * (agg.value or 0) / limit:.1f}% of the floor limit {limit:g} kg/m2",
                agg.value, limit, "kg/m2", floor, tenants=self._tenants_on([floor]),
            )  # fmt: skip

        key = (Rule.FLOOR_LOAD, f"floor:{floor}")
        self._threshold(
            key,
            value=agg.value,
            complete=agg.complete,
            limit=limit,
            rule=self.cfg.floor_load,
            at=at,
            info=info,
        )

    def _floor_power(self, floor: int, at: datetime) -> None:
        agg, cap = self.live.floor_power(floor), self.building.floor(floor).power_capacity_kw

        def info() -> Info:
            return Info(
                f"Floor {floor} power {agg.value:.0f} kW is "
                f"{100 * (agg.value or 0) / cap:.1f}% of its capacity {cap:g} kW",
                agg.value, cap, "kW", floor, tenants=self._tenants_on([floor]),
            )  # fmt: skip

        key = (Rule.FLOOR_POWER, f"floor:{floor}")
        self._threshold(
            key,
            value=agg.value,
            complete=agg.complete,
            limit=cap,
            rule=self.cfg.floor_power,
            at=at,
            info=info,
        )

    def _demand(self, tenant_id: str, at: datetime) -> None:
        rule = self.cfg.tenant_demand
        avg, covered = self.live.demand[tenant_id].average(at, rule.window_s)
        if avg is None or covered < rule.window_s / 3:
            return
        contracted = self.building.tenant(tenant_id).contracted_kw
        complete = self.live.tenant_power(tenant_id).complete

        def info() -> Info:
            return Info(
                f"Tenant {tenant_id} demand {avg:.0f} kW ({rule.window_s / 60:g}-minute average) "
                f"is {100 * avg / contracted:.1f}% of its contracted {contracted:g} kW",
                avg, contracted, "kW", tenants=(tenant_id,),
            )  # fmt: skip

        key = (Rule.TENANT_DEMAND, f"tenant:{tenant_id}")
        self._threshold(
            key, value=avg, complete=complete, limit=contracted, rule=rule, at=at, info=info
        )

    def _sensor_info(self, live: SensorLive, message: str, limit: float | None = None) -> Info:
        s = live.sensor
        tenants = self._tenants_on([s.floor]) if s.zone is None else self._zone_tenants(s.zone)
        return Info(message, live.value, limit, s.unit, s.floor, s.zone, s.id, tenants)

    def _temp(self, live: SensorLive, at: datetime) -> None:
        if not self.live.known(live) or live.value is None:
            return
        rule, key = self.cfg.temperature, (Rule.TEMPERATURE, f"sensor:{live.sensor.id}")
        cond = self._cond(key)
        levels = [(W, rule.warning_c), (C, rule.critical_c)]
        target = target_level(live.value, levels, rule.deadband_c, cond.level)
        limit = rule.critical_c if target is C else rule.warning_c

        def info() -> Info:
            text = f"Temperature {live.value:.1f} degC at {live.sensor.id} (limit {limit:g} degC)"
            return self._sensor_info(live, text, limit)

        self._move(
            key, target=target, at=at, on_s=rule.on_delay_s, off_s=rule.off_delay_s, info=info
        )

    def _rise(self, live: SensorLive, at: datetime) -> None:
        rule = self.cfg.temperature
        rate = self.live.rise_rate(live, rule.rise_window_s, rule.rise_min_span_s)
        if rate is None or not self.live.known(live):
            return
        key = (Rule.TEMPERATURE_RISE, f"sensor:{live.sensor.id}")
        target = target_level(
            rate, [(C, rule.rise_c_per_min)], rule.rise_deadband_c_per_min, self._cond(key).level
        )

        def info() -> Info:
            text = (
                f"Temperature at {live.sensor.id} rising {rate:.1f} degC/min "
                f"(limit {rule.rise_c_per_min:g} degC/min): possible fire"
            )
            return self._sensor_info(live, text, rule.rise_c_per_min)

        self._move(key, target=target, at=at, on_s=0.0, off_s=rule.rise_off_delay_s, info=info)

    def _fire(self, live: SensorLive, at: datetime) -> None:
        if not self.live.known(live):
            return
        target = C if live.value == 1 else None
        s = live.sensor

        def info() -> Info:
            evac = self.evacuation(s.floor)
            text = (
                f"FIRE: detector {s.id} in alarm on floor {s.floor}"
                + (f" (zone {s.zone})" if s.zone else "")
                + f"; evacuate floors {', '.join(map(str, evac.floors))}"
            )
            tenants = tuple(t.id for t in evac.tenants)
            return Info(text, live.value, None, s.unit, s.floor, s.zone, s.id, tenants, True, evac)

        self._move(
            (Rule.FIRE, f"sensor:{s.id}"), target=target, at=at, on_s=0.0, off_s=0.0, info=info
        )

    def _fault(self, live: SensorLive, at: datetime) -> None:
        if not self.live.known(live):
            return
        target = None if live.value in (0, 1) else T
        text = f"Fire detector {live.sensor.id} reports a fault (state {live.value:g})"
        key = (Rule.FIRE_FAULT, f"sensor:{live.sensor.id}")
        self._move(
            key, target=target, at=at, on_s=0.0, off_s=0.0,
            info=lambda: self._sensor_info(live, text),
        )  # fmt: skip

    def _offline(self, live: SensorLive, at: datetime) -> None:
        s = live.sensor
        if self._floor_down(s.floor):
            return  # one floor-offline alert instead of one per sensor
        target = (T if s.kind is SensorKind.FIRE else W) if live.stale else None
        seen = live.ts.isoformat() if live.ts else "never since the engine started"
        text = f"Sensor {s.id} is silent (last reading {seen}); its value is unknown"
        key = (Rule.SENSOR_OFFLINE, f"sensor:{s.id}")
        self._move(
            key, target=target, at=at, on_s=0.0, off_s=0.0,
            info=lambda: self._sensor_info(live, text),
        )  # fmt: skip

    def _floor_offline(self, floor: int, at: datetime) -> None:
        target = W if self._floor_down(floor) else None
        why = "gateway is offline" if self.live.floor_online.get(floor) is False else "is silent"
        text = f"Floor {floor} {why}: the floor's values are unknown"
        info = lambda: Info(text, floor=floor, tenants=self._tenants_on([floor]))  # noqa: E731
        self._move(
            (Rule.FLOOR_OFFLINE, f"floor:{floor}"),
            target=target,
            at=at,
            on_s=0.0,
            off_s=0.0,
            info=info,
        )

    def _floor_down(self, floor: int) -> bool:
        """Gateway offline, or every sensor of the floor silent: one alert for the floor."""
        if self.live.floor_online.get(floor) is False:
            return True
        sensors = self.live.floor_sensors.get(floor, [])
        return bool(sensors) and all(s.stale for s in sensors)

    def _flood(self, at: datetime) -> None:
        rule = self.cfg.flood
        start = at - timedelta(seconds=rule.window_s)
        while self.opened and self.opened[0] < start:
            self.opened.popleft()
        count = len(self.opened)
        target = W if count > rule.max_new_alerts else None
        text = (
            f"Alarm flood: {count} new alerts in {rule.window_s / 60:g} minutes "
            f"(more than {rule.max_new_alerts})"
        )
        info = lambda: Info(text, float(count), float(rule.max_new_alerts))  # noqa: E731
        self._move(
            (Rule.FLOOD, f"building:{self.id}"),
            target=target,
            at=at,
            on_s=0.0,
            off_s=0.0,
            info=info,
        )

    # ----- alerts -------------------------------------------------------------------------
    def _transition(self, key: Key, tr: Transition, at: datetime, info: Info) -> None:
        alert = self.alerts.get(key)
        if tr.new is None:
            if alert is not None:
                self._emit(condition_cleared(alert, at))
            return
        if alert is None:
            alert = Alert(
                self.id, key[0], key[1], tr.new, at, info.message, info.floor, info.zone,
                info.sensor, info.tenants, info.latched, True, info.value, info.limit, info.unit,
                evacuation=info.evacuation,
            )  # fmt: skip
            self.alerts[key] = alert
            self._emit([record(alert, EventKind.OPENED, at, detail=info.message, new=True)])
            if key[0] is not Rule.FLOOD:
                self.opened.append(at)
                self._flood(at)
            return
        self._emit(lifecycle_severity(alert, tr.new, at, info.value, info.message))

    def _emit(self, changes: list[Change]) -> None:
        for change in changes:
            self._fx.changes.append(change)
            alert = change.alert
            if alert.rule is Rule.FLOOD:
                self._fx.urgent_floors.update(self.floors)
            if alert.floor is not None:
                self._fx.urgent_floors.add(alert.floor)
            if alert.evacuation is not None:
                self._fx.urgent_floors.update(alert.evacuation.floors)
            if not alert.is_open:
                if self.alerts.get(alert.key) is alert:
                    del self.alerts[alert.key]
                if alert.id is not None:
                    self.by_id.pop(alert.id, None)

    # ----- building facts -----------------------------------------------------------------
    def evacuation(self, fire_floor: int) -> Evacuation:
        """Floors N-1, N, N+1 by position in the building (clamped), and their tenants."""
        i = self.floors.index(fire_floor)
        floors = self.floors[max(0, i - 1) : i + 2]
        ids = self._tenants_on(floors)
        names = {t.id: t.name for t in self.building.tenants}
        return Evacuation(
            fire_floor=fire_floor,
            floors=floors,
            tenants=[TenantRef(id=t, name=names[t]) for t in ids],
        )

    def _tenants_on(self, floors: list[int]) -> tuple[str, ...]:
        out: set[str] = set()
        for zone in self.building.zones:
            if zone.floor in floors and (t := self.live.zone_tenant.get(zone.id)):
                out.add(t)
        for s in self.building.sensors:
            if s.floor in floors and s.tenant:
                out.add(s.tenant)
        return tuple(sorted(out))

    def _zone_tenants(self, zone_id: str) -> tuple[str, ...]:
        tenant = self.live.zone_tenant.get(zone_id)
        return (tenant,) if tenant else ()
