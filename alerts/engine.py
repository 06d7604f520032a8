"""Rule evaluation of one building: state + reading + time -> alert changes. No I/O.

The service feeds readings, gateway status, ticks and operator commands in, and drains the
resulting :class:`Effects` (alert changes to persist and publish, conditions to save, floors
whose state must be published now). Tests drive it directly with any timeline.

The class is layered: :class:`alerts.evaluation.Evaluator` (conditions, open alerts,
effects), :class:`alerts.rules.Rules` (the rules), :class:`BuildingEngine` (the inputs, and
the hand-over to a reloaded building model).
"""

from __future__ import annotations

from datetime import datetime

from alerts.conditions import Condition
from alerts.evaluation import Effects, Info, Key
from alerts.lifecycle import Alert, Change, Decision, command, condition_cleared, timers
from alerts.rules import Rules
from core.alert_types import AlertState, CommandAction, Rule, Severity
from core.building import Building

__all__ = ["BuildingEngine", "Effects", "Info", "Key"]


class BuildingEngine(Rules):
    def __init__(self, building: Building, started_at: datetime) -> None:
        super().__init__(building, started_at)
        self.dirty_floors: set[int] = set()
        self.published: dict[int, datetime] = {}

    # ----- state from the database or a previous model ------------------------------------
    def restore(self, alerts: list[Alert], conditions: dict[Key, Condition]) -> None:
        for alert in alerts:
            self._add_alert(alert)
        self.conditions.update(conditions)

    def restore_opened(self, times: list[datetime]) -> None:
        self.opened.extend(sorted(times))

    def seed(self, sensor_id: str, ts: datetime, value: float, now: datetime) -> None:
        """A value from before the start (sensor_latest); it evaluates nothing by itself."""
        self.live.accept(sensor_id, ts, value, now)

    def reloaded(self, building: Building, now: datetime) -> BuildingEngine:
        """A new engine for the re-applied ``building`` that carries this one's state on.

        Live values, gateway states, demand windows, conditions, open alerts and the flood
        window move over. A condition whose rule or subject left the building is forgotten;
        an open alert on such a subject is resolved by the engine (a latched fire alarm is
        only marked cleared: it still needs its operator reset).
        """
        new = BuildingEngine(building, self.live.started_at)
        new.live.adopt(self.live)
        new.live.refresh_leases(now)
        new.opened = self.opened
        new.published = {f: t for f, t in self.published.items() if f in new.live.floor}
        new.dirty_floors = set(new.floors)
        new._fx = self._fx
        for key, cond in self.conditions.items():
            if key in new.evals:
                new.conditions[key] = cond
            else:
                new._fx.conditions[key] = None
        for alert in self.alerts.values():
            new._add_alert(alert)
            if alert.key not in new.evals and alert.condition_active:
                new._emit(condition_cleared(alert, now, "its subject left the building"))
        new._fx.urgent_floors.update(new.floors)
        return new

    # ----- inputs -------------------------------------------------------------------------
    def on_reading(self, sensor_id: str, ts: datetime, value: float, now: datetime) -> bool:
        live = self.live.accept(sensor_id, ts, value, now)
        if live is None:
            return False
        self.dirty_floors.add(live.sensor.floor)
        if live.stale:
            self.live.revive(live)
            floor_key, sensor_key = self.offline_keys[sensor_id]
            self._eval(floor_key, ts)
            self._eval(sensor_key, ts)
        for evaluate in self.sensor_rules[sensor_id]:
            evaluate(ts)
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
        self._eval(self.flood_key, now)
        esc = self.cfg.escalation
        for alert in list(self.alerts.values()):
            if alert.shelved_until is None and (
                alert.severity is not Severity.CRITICAL or alert.state is not AlertState.OPEN
            ):
                continue  # no timer can fire for it
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

    def has_effects(self) -> bool:
        """Something waits to be stored (alert changes or conditions)."""
        return bool(self._fx)

    def pending_changes(self) -> list[Change]:
        """The changes not drained yet (the runtime publishes fire events early)."""
        return self._fx.changes

    def stored(self, alert: Alert) -> None:
        """The store gave ``alert`` its id."""
        if alert.id is not None and alert.is_open:
            self.by_id[alert.id] = alert
