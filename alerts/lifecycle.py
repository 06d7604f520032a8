"""The lifecycle of one alert: open -> acknowledged -> resolved, shelving, latching, reset.

Pure functions over a mutable :class:`Alert`; each returns the :class:`Change` records the
engine persists and publishes. Every step records who and when.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from core.alert_types import (
    FIRE_RULES,
    AlertEvent,
    AlertState,
    AlertView,
    CommandAction,
    Evacuation,
    EventKind,
    Rule,
    Severity,
)

ENGINE = "engine"


@dataclass(slots=True)
class Alert:
    building: str
    rule: Rule
    subject: str
    severity: Severity
    opened_at: datetime
    message: str
    floor: int | None = None
    zone: str | None = None
    sensor: str | None = None
    tenants: tuple[str, ...] = ()
    latched: bool = False
    condition_active: bool = True
    value: float | None = None
    limit: float | None = None
    unit: str | None = None
    state: AlertState = AlertState.OPEN
    shelved_until: datetime | None = None
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    escalated_at: datetime | None = None
    evacuation: Evacuation | None = None
    id: int | None = None
    stored: bool = False  # its row exists (committed) in the alerts table

    @property
    def key(self) -> tuple[Rule, str]:
        return (self.rule, self.subject)

    @property
    def is_open(self) -> bool:
        return self.state is not AlertState.RESOLVED

    def shelved(self, now: datetime) -> bool:
        return self.shelved_until is not None and now < self.shelved_until

    def view(self) -> AlertView:
        assert self.id is not None, "an alert gets its id when it is first stored"
        return AlertView(
            id=self.id,
            building=self.building,
            rule=self.rule,
            subject=self.subject,
            floor=self.floor,
            zone=self.zone,
            sensor=self.sensor,
            tenants=list(self.tenants),
            severity=self.severity,
            state=self.state,
            latched=self.latched,
            condition_active=self.condition_active,
            shelved_until=self.shelved_until,
            message=self.message,
            value=self.value,
            limit=self.limit,
            unit=self.unit,
            opened_at=self.opened_at,
            acknowledged_at=self.acknowledged_at,
            acknowledged_by=self.acknowledged_by,
            resolved_at=self.resolved_at,
            resolved_by=self.resolved_by,
            evacuation=self.evacuation,
        )


@dataclass(slots=True)
class Change:
    """One lifecycle event of ``alert``; ``snapshot`` is the alert right after it."""

    alert: Alert
    snapshot: Alert
    kind: EventKind
    at: datetime
    actor: str = ENGINE
    detail: str | None = None
    new: bool = False
    event_id: int | None = field(default=None)
    wire: tuple[AlertEvent, bytes] | None = None  # the published event, once built


def record(
    alert: Alert,
    kind: EventKind,
    at: datetime,
    actor: str = ENGINE,
    detail: str | None = None,
    *,
    new: bool = False,
) -> Change:
    return Change(alert, copy.copy(alert), kind, at, actor, detail, new)


def set_severity(
    alert: Alert, severity: Severity, at: datetime, value: float | None, message: str
) -> list[Change]:
    """The condition moved to another non-clear level while the alert is open."""
    out: list[Change] = []
    if not alert.condition_active:
        alert.condition_active = True
        alert.value, alert.message = value, message
        out.append(record(alert, EventKind.REACTIVATED, at, detail=message))
    if severity != alert.severity:
        old = alert.severity
        alert.severity, alert.value, alert.message = severity, value, message
        if alert.state is AlertState.ACKNOWLEDGED and _worse(severity, old):
            # A worse condition needs a fresh acknowledgement.
            alert.state, alert.acknowledged_at, alert.acknowledged_by = AlertState.OPEN, None, None
            alert.escalated_at = None
        out.append(record(alert, EventKind.SEVERITY, at, detail=f"{old} -> {severity}"))
    return out


def _worse(new: Severity, old: Severity) -> bool:
    from core.alert_types import SEVERITY_RANK

    return SEVERITY_RANK[new] > SEVERITY_RANK[old]


def condition_cleared(alert: Alert, at: datetime, detail: str | None = None) -> list[Change]:
    """The condition returned to normal: resolve, or for a latched alert wait for a reset."""
    if alert.latched:
        if not alert.condition_active:
            return []
        alert.condition_active = False
        return [record(alert, EventKind.CLEARED, at, detail=detail or "awaiting operator reset")]
    alert.condition_active = False
    alert.state, alert.resolved_at, alert.resolved_by = AlertState.RESOLVED, at, ENGINE
    alert.shelved_until = None
    return [record(alert, EventKind.RESOLVED, at, detail=detail)]


@dataclass(frozen=True, slots=True)
class Decision:
    done: bool
    detail: str
    changes: list[Change]


def command(
    alert: Alert,
    action: CommandAction,
    actor: str,
    at: datetime,
    *,
    shelve_until: datetime | None = None,
    max_shelve_s: float = 8 * 3600,
) -> Decision:
    """Apply an operator action, or refuse it with the reason."""

    def refuse(why: str) -> Decision:
        return Decision(False, why, [])

    if not alert.is_open:
        return refuse("the alert is resolved")
    if action is CommandAction.ACK:
        if alert.state is AlertState.ACKNOWLEDGED:
            return refuse(f"already acknowledged by {alert.acknowledged_by}")
        alert.state, alert.acknowledged_at, alert.acknowledged_by = (
            AlertState.ACKNOWLEDGED,
            at,
            actor,
        )
        return Decision(True, "acknowledged", [record(alert, EventKind.ACKNOWLEDGED, at, actor)])
    if action is CommandAction.SHELVE:
        if alert.rule in FIRE_RULES:
            return refuse("fire alarms cannot be shelved")
        if shelve_until is None:
            return refuse("shelve needs shelve_until")
        if shelve_until <= at:
            return refuse("shelve_until is in the past")
        if shelve_until > at + timedelta(seconds=max_shelve_s):
            return refuse(f"shelving is limited to {max_shelve_s:g} s")
        alert.shelved_until = shelve_until
        detail = f"until {shelve_until.isoformat()}"
        return Decision(True, "shelved", [record(alert, EventKind.SHELVED, at, actor, detail)])
    if action is CommandAction.UNSHELVE:
        if not alert.shelved(at):
            return refuse("the alert is not shelved")
        alert.shelved_until = None
        return Decision(True, "unshelved", [record(alert, EventKind.UNSHELVED, at, actor)])
    # reset
    if not alert.latched:
        return refuse("only latched alerts are reset; this one resolves by itself")
    if alert.condition_active:
        return refuse("the condition is still active (detector in alarm)")
    alert.state, alert.resolved_at, alert.resolved_by = AlertState.RESOLVED, at, actor
    return Decision(True, "reset", [record(alert, EventKind.RESET, at, actor)])


def timers(alert: Alert, at: datetime, escalate_after_s: float, repeat: bool) -> list[Change]:
    """Shelving that expired, and escalation of a critical alert nobody acknowledged."""
    out: list[Change] = []
    if alert.shelved_until is not None and at >= alert.shelved_until:
        alert.shelved_until = None
        out.append(record(alert, EventKind.UNSHELVED, at, detail="shelving expired"))
    if (
        alert.is_open
        and alert.state is AlertState.OPEN
        and alert.severity is Severity.CRITICAL
        and alert.shelved_until is None
        and (repeat or alert.escalated_at is None)
    ):
        since = alert.escalated_at or alert.opened_at
        if (at - since).total_seconds() >= escalate_after_s:
            alert.escalated_at = at
            unacked = int((at - alert.opened_at).total_seconds())
            out.append(
                record(alert, EventKind.ESCALATED, at, detail=f"unacknowledged for {unacked} s")
            )
    return out
