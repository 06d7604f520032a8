"""The bookkeeping under every rule: conditions, open alerts and the effects of a batch.

:class:`Evaluator` moves a (rule, subject) :class:`Condition` toward the level its input asks
for and turns confirmed transitions into alert lifecycle changes. The rules themselves live in
:mod:`alerts.rules`, the inputs in :mod:`alerts.engine`. No I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from alerts.conditions import Condition, Level, Transition, advance, target_level
from alerts.lifecycle import Alert, Change, condition_cleared, record
from alerts.lifecycle import set_severity as lifecycle_severity
from alerts.live import Live
from core.alert_config import ThresholdRule
from core.alert_types import Evacuation, EventKind, Rule, Severity
from core.building import Building

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

    def merge(self, other: Effects) -> None:
        self.changes.extend(other.changes)
        self.conditions.update(other.conditions)
        self.urgent_floors |= other.urgent_floors


class Evaluator:
    """Conditions and open alerts of one building, and the effects not yet drained."""

    def __init__(self, building: Building, started_at: datetime) -> None:
        self.building = building
        self.cfg = building.alerts
        self.id = building.id
        self.live = Live(building, started_at)
        self.live.refresh_leases(started_at)
        self.floors = sorted(self.live.floor)
        self.conditions: dict[Key, Condition] = {}
        self.alerts: dict[Key, Alert] = {}
        self.by_id: dict[int, Alert] = {}
        self.floor_alerts: dict[int, dict[Key, Alert]] = {f: {} for f in self.floors}
        # open alerts with an evacuation advisory, by each floor they evacuate
        self.evacuating: dict[int, dict[Key, Alert]] = {f: {} for f in self.floors}
        self.opened: deque[datetime] = deque()
        self._fx = Effects()

    # ----- open alerts --------------------------------------------------------------------
    def _add_alert(self, alert: Alert) -> None:
        self.alerts[alert.key] = alert
        if alert.id is not None:
            self.by_id[alert.id] = alert
        if alert.floor in self.floor_alerts:
            self.floor_alerts[alert.floor][alert.key] = alert
        if alert.evacuation is not None:
            for floor in alert.evacuation.floors:
                self.evacuating.setdefault(floor, {})[alert.key] = alert

    def _drop_alert(self, alert: Alert) -> None:
        if self.alerts.get(alert.key) is alert:
            del self.alerts[alert.key]
            if alert.floor in self.floor_alerts:
                self.floor_alerts[alert.floor].pop(alert.key, None)
            if alert.evacuation is not None:
                for floor in alert.evacuation.floors:
                    self.evacuating.get(floor, {}).pop(alert.key, None)
        if alert.id is not None:
            self.by_id.pop(alert.id, None)

    # ----- conditions ---------------------------------------------------------------------
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
        cond = self.conditions.get(key)
        if cond is None:
            if target is None:
                return  # clear and nothing pending: the common case, nothing to remember
            cond = self.conditions[key] = Condition()
        before = cond.snapshot()
        transition = advance(cond, target, at, on_s, off_s, can_fall=can_fall)
        if cond.snapshot() != before:
            self._fx.conditions[key] = None if cond.idle else cond
        if cond.idle:
            del self.conditions[key]
        if transition is not None:
            self._transition(key, transition, at, info())

    def _level(self, key: Key) -> Level:
        cond = self.conditions.get(key)
        return None if cond is None else cond.level

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
        warn, crit = limit * rule.warning_pct / 100, limit * rule.critical_pct / 100
        if value < warn and value < crit and key not in self.conditions:
            return  # clear and stays clear
        levels = [(W, warn), (C, crit)]
        target = target_level(value, levels, limit * rule.deadband_pct / 100, self._level(key))
        self._move(
            key, target=target, at=at, on_s=rule.on_delay_s, off_s=rule.off_delay_s,
            info=info, can_fall=complete,
        )  # fmt: skip

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
            self._add_alert(alert)
            self._emit([record(alert, EventKind.OPENED, at, detail=info.message, new=True)])
            if key[0] is not Rule.FLOOD:
                self.opened.append(at)
                self._on_opened(at)
            return
        self._emit(lifecycle_severity(alert, tr.new, at, info.value, info.message))

    def _on_opened(self, at: datetime) -> None:
        """A new (non-flood) alert was opened at ``at``."""

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
                self._drop_alert(alert)
