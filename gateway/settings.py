"""Settings of a floor gateway: the shared MQTT fragment plus its own ``UPSTAIRS_GATEWAY_*`` knobs.

Built in :func:`gateway.service.main` (or by the caller of :func:`gateway.service.run_gateway`),
never at import time.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.settings import MqttSettings


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UPSTAIRS_GATEWAY_", extra="ignore")

    mqtt: MqttSettings = Field(default_factory=MqttSettings)

    # -- field bus ---------------------------------------------------------------------
    modbus_host: str = Field(default="127.0.0.1", description="the floor's Modbus TCP server")
    modbus_port_base: int = Field(
        default=15000, ge=1, le=65535, description="the floor's server listens on base + floor"
    )
    modbus_timeout_s: float = Field(
        default=1.0, gt=0, le=60, description="a device that does not answer in time is faulty"
    )
    modbus_connections: int = Field(
        default=2, ge=1, le=16, description="parallel TCP connections to the floor's server"
    )

    # -- store and forward ---------------------------------------------------------------
    queue_path: Path | None = Field(
        default=None,
        description="SQLite queue file; unset = {data_dir}/gateway-{building}-f{floor}.sqlite",
    )
    data_dir: Path = Field(default=Path(".upstairs"), description="where the default queue lives")
    queue_max_readings: int = Field(
        default=2_000_000, ge=1, description="cap: past it, the oldest readings are dropped"
    )
    queue_max_age_s: float = Field(
        default=7 * 86_400.0, gt=0, description="cap: readings older than this are dropped"
    )
    queue_full_sync: bool = Field(
        default=False,
        description="fsync every commit (survives power loss); off: survives a process crash",
    )

    # -- publishing ------------------------------------------------------------------------
    publish_interval_s: float = Field(
        default=1.0, gt=0, le=60, description="readings are batched, stored and sent this often"
    )
    batch_max_readings: int = Field(
        default=1000, ge=1, le=10_000, description="readings per telemetry message at most"
    )
    replay_window: int = Field(
        default=8, ge=1, le=1000, description="backlog messages awaiting their PUBACK at once"
    )
    source: str | None = Field(
        default=None, description="telemetry 'source'; unset = {building}-f{floor:02d}-gw"
    )
    client_id: str | None = Field(
        default=None, description="MQTT client id; unset = upstairs-gw-{building}-{floor}"
    )
    keepalive_s: int = Field(default=15, ge=5, le=3600)
    backoff_max_s: float = Field(default=10.0, gt=0, description="reconnect backoff cap")

    @field_validator("modbus_host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("modbus_host must not be empty")
        return value.strip()

    def queue_file(self, building: str, floor: int) -> Path:
        return self.queue_path or self.data_dir / f"gateway-{building}-f{floor}.sqlite"

    def source_name(self, building: str, floor: int) -> str:
        return self.source or f"{building}-f{floor:02d}-gw"
