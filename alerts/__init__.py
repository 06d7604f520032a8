"""The live floor-state and alert engine (``upstairs alerts``)."""

from alerts.clock import Clock, ManualClock, SystemClock
from alerts.service import main, run_alert_engine
from alerts.settings import AlertSettings

__all__ = ["AlertSettings", "Clock", "ManualClock", "SystemClock", "main", "run_alert_engine"]
