"""Alert value types shared by the alert engine and the API.

The alert engine (``alerts``) writes the ``alerts`` / ``alert_events`` tables and publishes
two payloads, both defined here so that the API parses exactly what the engine sends:

* :class:`AlertEvent` on ``upstairs/v1/{building}/alerts`` (QoS 1, not retained) and as the
  body of every webhook POST;
* :class:`FloorState` on ``upstairs/v1/{building}/{floor}/state`` (QoS 1, retained).

``docs/alerts.md`` documents every field and the lifecycle behind them.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "FIRE_RULES",
    "SEVERITY_RANK",
    "AlertEvent",
    "AlertState",
    "AlertView",
    "CommandAction",
    "CommandResult",
    "Evacuation",
    "EventKind",
    "FireState",
    "FloorState",
    "Quality",
    "Rule",
    "Severity",
    "TenantRef",
    "ZoneState",
]


class Severity(StrEnum):
    INFO = "info"
    TROUBLE = "trouble"  # a fault of the detection itself (detector fault, sensor offline)
    WARNING = "warning"
    CRITICAL = "critical"


SEVERITY_RANK: dict[Severity, int] = {
    Severity.INFO: 0,
    Severity.TROUBLE: 1,
    Severity.WARNING: 2,
    Severity.CRITICAL: 3,
}


class AlertState(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class Rule(StrEnum):
    ZONE_LOAD = "zone_load"  # subject zone:<id>
    FLOOR_LOAD = "floor_load"  # subject floor:<n>
    FLOOR_POWER = "floor_power"  # subject floor:<n>
    TENANT_DEMAND = "tenant_demand"  # subject tenant:<id>
    TEMPERATURE = "temperature"  # subject sensor:<id>
    TEMPERATURE_RISE = "temperature_rise"  # subject sensor:<id>
    FIRE = "fire"  # subject sensor:<id>, latched
    FIRE_FAULT = "fire_fault"  # subject sensor:<id>
    SENSOR_OFFLINE = "sensor_offline"  # subject sensor:<id>
    FLOOR_OFFLINE = "floor_offline"  # subject floor:<n>
    FLOOD = "flood"  # subject building:<id>


FIRE_RULES = frozenset({Rule.FIRE, Rule.FIRE_FAULT})


class EventKind(StrEnum):
    OPENED = "opened"
    SEVERITY = "severity"  # the severity of an open alert changed (up or down)
    ACKNOWLEDGED = "acknowledged"
    SHELVED = "shelved"
    UNSHELVED = "unshelved"  # by an operator, or by the engine when the shelving expired
    RESOLVED = "resolved"  # the condition cleared (non-latched alerts); actor 'engine'
    CLEARED = "cleared"  # the condition of a latched alert cleared; it stays until reset
    REACTIVATED = "reactivated"  # the condition of a latched, cleared alert came back
    RESET = "reset"  # an operator reset a latched alert; it is resolved now
    ESCALATED = "escalated"  # a critical alert still unacknowledged: notified again


class CommandAction(StrEnum):
    ACK = "ack"
    SHELVE = "shelve"
    UNSHELVE = "unshelve"
    RESET = "reset"


class CommandResult(StrEnum):
    DONE = "done"
    REFUSED = "refused"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TenantRef(_Wire):
    id: str
    name: str


class Evacuation(_Wire):
    """Fire on floor N: evacuate floors N-1, N, N+1 (those the building has)."""

    fire_floor: int
    floors: list[int]
    tenants: list[TenantRef] = Field(description="tenants with space on those floors")


class AlertView(_Wire):
    """An alert as it is after the event (the row of the ``alerts`` table)."""

    id: int
    building: str
    rule: Rule
    subject: str
    floor: int | None = None
    zone: str | None = None
    sensor: str | None = None
    tenants: list[str] = Field(default_factory=list, description="tenants the alert touches")
    severity: Severity
    state: AlertState
    latched: bool = False
    condition_active: bool = True
    shelved_until: datetime | None = None
    message: str
    value: float | None = None
    limit: float | None = None
    unit: str | None = None
    opened_at: datetime
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    evacuation: Evacuation | None = None


class AlertEvent(_Wire):
    """One lifecycle event; ``event_id`` is the ``alert_events.id`` (increasing per building)."""

    v: Literal[1] = 1
    event_id: int
    kind: EventKind
    at: datetime
    actor: str = Field(description="'engine' or the operator who acted")
    detail: str | None = None
    alert: AlertView


Quality = Literal["good", "partial", "unknown"]
FireState = Literal["normal", "alarm", "fault", "unknown"]


class ZoneState(_Wire):
    zone: str
    tenant: str | None = None
    load_kg_m2: float | None = None
    limit_kg_m2: float
    load_pct: float | None = None
    quality: Quality


class FloorState(_Wire):
    """Retained live summary of one floor, published on change and at least every 10 s."""

    v: Literal[1] = 1
    building: str
    floor: int
    at: datetime
    gateway: Literal["online", "offline", "unknown"]
    zones: list[ZoneState]
    max_zone_load_pct: float | None = None
    load_avg_kg_m2: float | None = Field(description="mass of all zones / floor area")
    load_limit_kg_m2: float
    load_avg_pct: float | None = None
    load_quality: Quality
    power_kw: float | None = None
    power_capacity_kw: float
    power_pct: float | None = None
    power_quality: Quality
    max_temperature_c: float | None = None
    fire_state: FireState
    fire_latched: bool = Field(description="a fire alarm on this floor awaits an operator reset")
    evacuation: bool
    evacuation_from: list[int] = Field(default_factory=list, description="floors on fire")
    stale_sensors: list[str] = Field(default_factory=list)
    open_alerts: dict[Severity, int] = Field(default_factory=dict)
    flood: bool = False
    newest_reading_at: datetime | None = None
