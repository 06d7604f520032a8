"""Hardware stand-ins: the devices of a whole building, driven by scenarios.

:class:`DeviceModel` says what every sensor reads at a simulated instant (deterministic for a
seed); :data:`SCENARIOS` act on it over simulated time; :func:`run_mqtt_simulator` publishes
it to a broker as contract-v1 telemetry. See docs/simulators.md.
"""

from simulators.clock import SimClock
from simulators.modbus_sim import MODBUS_SCENARIOS, run_modbus_simulator
from simulators.mqtt_sim import run_mqtt_simulator
from simulators.sampling import Sampler
from simulators.scenarios import SCENARIOS, Scenario, ScenarioError, make_scenario
from simulators.values import DeviceModel

__all__ = [
    "MODBUS_SCENARIOS",
    "SCENARIOS",
    "DeviceModel",
    "Sampler",
    "Scenario",
    "ScenarioError",
    "SimClock",
    "make_scenario",
    "run_modbus_simulator",
    "run_mqtt_simulator",
]
