"""Alert-rule parameters of a building (the ``alerts:`` section of a building file).

Every key has a default, so a building file may leave the section out. The alert engine
reads these values; ``docs/alerts.md`` explains each rule.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ThresholdRule(_Strict):
    """A rule on a ratio of a limit, in percent, with hysteresis and delays."""

    warning_pct: float = Field(default=90.0, gt=0, le=1000)
    critical_pct: float = Field(default=100.0, gt=0, le=1000)
    deadband_pct: float = Field(default=5.0, ge=0, le=100, description="% of the limit")
    on_delay_s: float = Field(default=10.0, ge=0, le=86_400)
    off_delay_s: float = Field(default=0.0, ge=0, le=86_400)


class DemandRule(ThresholdRule):
    """Tenant demand: the average kW over a window against the contracted kW."""

    window_s: float = Field(default=900.0, gt=0, le=86_400)
    on_delay_s: float = Field(default=0.0, ge=0, le=86_400)


class TemperatureRule(_Strict):
    warning_c: float = Field(default=40.0, ge=-50, le=1000)
    critical_c: float = Field(default=55.0, ge=-50, le=1000)
    deadband_c: float = Field(default=2.0, ge=0, le=100)
    rise_c_per_min: float = Field(default=8.0, gt=0, le=1000, description="fire precursor")
    rise_deadband_c_per_min: float = Field(default=2.0, ge=0, le=1000)
    rise_window_s: float = Field(default=60.0, gt=0, le=3600, description="slope over this span")
    rise_min_span_s: float = Field(default=15.0, gt=0, le=3600, description="shortest slope span")
    rise_off_delay_s: float = Field(default=60.0, ge=0, le=86_400)
    on_delay_s: float = Field(default=10.0, ge=0, le=86_400)
    off_delay_s: float = Field(default=0.0, ge=0, le=86_400)


class StalenessRule(_Strict):
    intervals: float = Field(default=3.0, ge=1, le=1000, description="silent for N intervals")
    min_silence_s: float = Field(default=0.0, ge=0, le=86_400, description="never stale sooner")


class EscalationRule(_Strict):
    critical_unacked_s: float = Field(default=300.0, gt=0, le=86_400 * 7)
    repeat: bool = Field(default=True, description="re-notify every critical_unacked_s")


class FloodRule(_Strict):
    max_new_alerts: int = Field(default=10, ge=1)
    window_s: float = Field(default=600.0, gt=0)


class AlertConfig(_Strict):
    zone_load: ThresholdRule = ThresholdRule()
    floor_load: ThresholdRule = ThresholdRule()
    floor_power: ThresholdRule = ThresholdRule(deadband_pct=2.0)
    tenant_demand: DemandRule = DemandRule(deadband_pct=2.0)
    temperature: TemperatureRule = TemperatureRule()
    staleness: StalenessRule = StalenessRule()
    escalation: EscalationRule = EscalationRule()
    flood: FloodRule = FloodRule()
    max_shelve_s: float = Field(default=8 * 3600.0, gt=0, description="longest shelving allowed")
