"""The rules of ``docs/alerts.md``: each turns the live picture into a target level.

One evaluator per (rule, subject) is built once per building; a reading runs only the
evaluators of its own sensor (:attr:`Rules.sensor_rules`), so its cost does not depend on the
size of the building. An evaluator whose condition is clear and stays clear allocates nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial

from alerts.conditions import target_level
from alerts.evaluation import C, Evaluator, Info, Key, T, W
from alerts.live import SensorLive
from core.alert_types import Evacuation, Rule, TenantRef
from core.building import Building, SensorKind

Eval = Callable[[datetime], None]


class Rules(Evaluator):
    def __init__(self, building: Building, started_at: datetime) -> None:
        super().__init__(building, started_at)
        self.evals: dict[Key, Eval] = {}
        self.sensor_rules: dict[str, tuple[Eval, ...]] = {}
        self.offline_keys: dict[str, tuple[Key, Key]] = {}
        self.flood_key: Key = (Rule.FLOOD, f"building:{self.id}")
        self._build_evaluators()

    def _build_evaluators(self) -> None:
        ev, live = self.evals, self.live
        for zone in self.building.zones:
            ev[(Rule.ZONE_LOAD, f"zone:{zone.id}")] = partial(self._zone_load, zone.id)
        for f in self.floors:
            ev[(Rule.FLOOR_LOAD, f"floor:{f}")] = partial(self._floor_load, f)
            ev[(Rule.FLOOR_POWER, f"floor:{f}")] = partial(self._floor_power, f)
            ev[(Rule.FLOOR_OFFLINE, f"floor:{f}")] = partial(self._floor_offline, f)
        for t in self.building.tenants:
            ev[(Rule.TENANT_DEMAND, f"tenant:{t.id}")] = partial(self._demand, t.id)
        for sl in live.sensors.values():
            s = sl.sensor
            subject = f"sensor:{s.id}"
            ev[(Rule.SENSOR_OFFLINE, subject)] = partial(self._offline, sl)
            self.offline_keys[s.id] = ((Rule.FLOOR_OFFLINE, f"floor:{s.floor}"),
                                       (Rule.SENSOR_OFFLINE, subject))  # fmt: skip
            own: list[Eval] = []
            if s.kind is SensorKind.LOAD and s.zone is not None:
                own += [ev[(Rule.ZONE_LOAD, f"zone:{s.zone}")],
                        ev[(Rule.FLOOR_LOAD, f"floor:{s.floor}")]]  # fmt: skip
            elif s.kind is SensorKind.POWER:
                own += [ev[(Rule.FLOOR_POWER, f"floor:{s.floor}")], partial(self._meter, sl)]
            elif s.kind is SensorKind.TEMPERATURE:
                temp, rise = (Rule.TEMPERATURE, subject), (Rule.TEMPERATURE_RISE, subject)
                ev[temp], ev[rise] = partial(self._temp, sl, temp), partial(self._rise, sl, rise)
                own += [ev[(Rule.TEMPERATURE, subject)], ev[(Rule.TEMPERATURE_RISE, subject)]]
            elif s.kind is SensorKind.FIRE:
                ev[(Rule.FIRE, subject)] = partial(self._fire, sl)
                ev[(Rule.FIRE_FAULT, subject)] = partial(self._fault, sl)
                own += [ev[(Rule.FIRE, subject)], ev[(Rule.FIRE_FAULT, subject)]]
            self.sensor_rules[s.id] = tuple(own)
        ev[self.flood_key] = self._flood

    def _eval(self, key: Key, at: datetime) -> None:
        fn = self.evals.get(key)
        if fn is not None:
            fn(at)

    # ----- aggregates against a limit -----------------------------------------------------
    def _zone_load(self, zone_id: str, at: datetime) -> None:
        zone = self.live.zone[zone_id]
        agg, limit = self.live.zone_load(zone_id), self.live.zone_limit[zone_id]
        tenant = self.live.zone_tenant.get(zone_id)

        def info() -> Info:
            pct = 100 * (agg.value or 0) / limit
            return Info(
                f"Zone {zone_id} (floor {zone.floor}) load {agg.value:.1f} kg/m2 is "
                f"{pct:.1f}% of its limit {limit:g} kg/m2",
                agg.value, limit, "kg/m2", zone.floor, zone_id,
                tenants=(tenant,) if tenant else (),
            )  # fmt: skip

        self._threshold(
            (Rule.ZONE_LOAD, f"zone:{zone_id}"), value=agg.value, complete=agg.complete,
            limit=limit, rule=self.cfg.zone_load, at=at, info=info,
        )  # fmt: skip

    def _floor_load(self, floor: int, at: datetime) -> None:
        agg, limit = self.live.floor_load(floor), self.live.floor[floor].load_limit_kg_m2

        def info() -> Info:
            return Info(
                f"Floor {floor} average load {agg.value:.1f} kg/m2 is "
                f"{100 * (agg.value or 0) / limit:.1f}% of the floor limit {limit:g} kg/m2",
                agg.value, limit, "kg/m2", floor, tenants=self._tenants_on([floor]),
            )  # fmt: skip

        self._threshold(
            (Rule.FLOOR_LOAD, f"floor:{floor}"), value=agg.value, complete=agg.complete,
            limit=limit, rule=self.cfg.floor_load, at=at, info=info,
        )  # fmt: skip

    def _floor_power(self, floor: int, at: datetime) -> None:
        agg, cap = self.live.floor_power(floor), self.live.floor[floor].power_capacity_kw

        def info() -> Info:
            return Info(
                f"Floor {floor} power {agg.value:.0f} kW is "
                f"{100 * (agg.value or 0) / cap:.1f}% of its capacity {cap:g} kW",
                agg.value, cap, "kW", floor, tenants=self._tenants_on([floor]),
            )  # fmt: skip

        self._threshold(
            (Rule.FLOOR_POWER, f"floor:{floor}"), value=agg.value, complete=agg.complete,
            limit=cap, rule=self.cfg.floor_power, at=at, info=info,
        )  # fmt: skip

    def _meter(self, live: SensorLive, at: datetime) -> None:
        """A tenant meter moved: one more sample of the tenant's total kW."""
        tenant = self.live.meter_tenant.get(live.sensor.id)
        if tenant is not None:
            total = self.live.tenant_power(tenant)
            if total.value is not None:
                self.live.demand[tenant].add(at, total.value)

    def _demand(self, tenant_id: str, at: datetime) -> None:
        rule = self.cfg.tenant_demand
        avg, covered = self.live.demand[tenant_id].average(at, rule.window_s)
        if avg is None or covered < rule.window_s / 3:
            return
        contracted = self.live.tenant[tenant_id].contracted_kw
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

    # ----- one sensor ---------------------------------------------------------------------
    def _sensor_info(self, live: SensorLive, message: str, limit: float | None = None) -> Info:
        s = live.sensor
        tenants = self._tenants_on([s.floor]) if s.zone is None else self._zone_tenants(s.zone)
        return Info(message, live.value, limit, s.unit, s.floor, s.zone, s.id, tenants)

    def _temp(self, live: SensorLive, key: Key, at: datetime) -> None:
        value = live.value
        if value is None or not self.live.known(live):
            return
        rule = self.cfg.temperature
        if value < rule.warning_c and value < rule.critical_c and key not in self.conditions:
            return  # clear and stays clear
        levels = [(W, rule.warning_c), (C, rule.critical_c)]
        target = target_level(value, levels, rule.deadband_c, self._level(key))
        limit = rule.critical_c if target is C else rule.warning_c

        def info() -> Info:
            text = f"Temperature {value:.1f} degC at {live.sensor.id} (limit {limit:g} degC)"
            return self._sensor_info(live, text, limit)

        self._move(
            key, target=target, at=at, on_s=rule.on_delay_s, off_s=rule.off_delay_s, info=info
        )

    def _rise(self, live: SensorLive, key: Key, at: datetime) -> None:
        rule = self.cfg.temperature
        rate = self.live.rise_rate(live, rule.rise_window_s, rule.rise_min_span_s)
        if rate is None or not self.live.known(live):
            return
        if rate < rule.rise_c_per_min and key not in self.conditions:
            return  # clear and stays clear
        target = target_level(
            rate, [(C, rule.rise_c_per_min)], rule.rise_deadband_c_per_min, self._level(key)
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
        value = live.value
        target = None if value in (0, 1) else T

        def info() -> Info:
            text = f"Fire detector {live.sensor.id} reports a fault (state {value:g})"
            return self._sensor_info(live, text)

        key = (Rule.FIRE_FAULT, f"sensor:{live.sensor.id}")
        self._move(key, target=target, at=at, on_s=0.0, off_s=0.0, info=info)

    # ----- data quality -------------------------------------------------------------------
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
            (Rule.FLOOR_OFFLINE, f"floor:{floor}"), target=target, at=at, on_s=0.0, off_s=0.0,
            info=info,
        )  # fmt: skip

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
        self._move(self.flood_key, target=target, at=at, on_s=0.0, off_s=0.0, info=info)

    def _on_opened(self, at: datetime) -> None:
        self._flood(at)

    # ----- building facts -----------------------------------------------------------------
    def evacuation(self, fire_floor: int) -> Evacuation:
        """Floors N-1, N, N+1 by position in the building (clamped), and their tenants."""
        i = self.floors.index(fire_floor)
        floors = self.floors[max(0, i - 1) : i + 2]
        return Evacuation(
            fire_floor=fire_floor,
            floors=floors,
            tenants=[
                TenantRef(id=t, name=self.live.tenant[t].name) for t in self._tenants_on(floors)
            ],
        )

    def _tenants_on(self, floors: list[int]) -> tuple[str, ...]:
        out: set[str] = set()
        for floor in floors:
            out |= self.live.floor_tenants.get(floor, frozenset())
        return tuple(sorted(out))

    def _zone_tenants(self, zone_id: str) -> tuple[str, ...]:
        tenant = self.live.zone_tenant.get(zone_id)
        return (tenant,) if tenant else ()
