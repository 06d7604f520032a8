"""The edge gateway of a floor: Modbus TCP devices to contract-v1 MQTT telemetry."""

from gateway.service import main, run_gateway
from gateway.settings import GatewaySettings

__all__ = ["GatewaySettings", "main", "run_gateway"]
