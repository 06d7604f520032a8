"""Physical ranges of sensor values, per kind, and the energy-register step rule.

Shared by the ingester (which dead-letters an impossible value) and the alert engine (which
treats one as a sensor fault, never as a reading). The bounds are physical, not operational:
a load of 900 kg/m2 is a dangerous overload but a real measurement; a load of -3 kg/m2 is a
broken sensor.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.building import SensorKind

FIRE_STATES = frozenset({0.0, 1.0, 2.0})  # 0 normal, 1 alarm, 2 fault

#: A cumulative energy register that drops to at most this many kWh has been reset (meter
#: replaced, register rolled over): the new value is the consumption since the reset. A drop
#: to anything higher is refused as a register going backwards.
ENERGY_RESET_THRESHOLD_KWH = 10.0


@dataclass(frozen=True, slots=True)
class Range:
    low: float
    high: float
    unit: str

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


RANGES: dict[SensorKind, Range] = {
    SensorKind.POWER: Range(0.0, 1_000_000.0, "kW"),
    SensorKind.ENERGY: Range(0.0, 1e12, "kWh"),
    SensorKind.LOAD: Range(0.0, 100_000.0, "kg/m2"),
    SensorKind.TEMPERATURE: Range(-50.0, 1000.0, "degC"),
    SensorKind.FIRE: Range(0.0, 2.0, "state"),
}


def range_problem(kind: SensorKind, value: float) -> str | None:
    """Why ``value`` cannot be a reading of a ``kind`` sensor, or None when it can."""
    if kind is SensorKind.FIRE:
        if value not in FIRE_STATES:
            return f"fire state {value!r} is not 0 (normal), 1 (alarm) or 2 (fault)"
        return None
    bounds = RANGES[kind]
    if not bounds.contains(value):
        return (
            f"{kind.value} value {value!r} is outside {bounds.low:g}..{bounds.high:g} {bounds.unit}"
        )
    return None


def is_register_reset(previous: float, value: float, threshold: float) -> bool:
    """A register that went down to near zero restarted; anything else is going backwards."""
    return value < previous and value <= threshold


def register_step_ok(previous: float, value: float, threshold: float) -> bool:
    """Whether a register may read ``value`` right after ``previous`` (same or up, or a reset)."""
    return value >= previous or value <= threshold


def consumption(previous: float | None, value: float) -> float:
    """kWh consumed between two consecutive register readings (a reset counts from zero)."""
    if previous is None:
        return 0.0
    return value - previous if value >= previous else value
