"""Settings of the ingester: the shared database and MQTT fragments plus its own knobs.

Everything comes from ``UPSTAIRS_*`` variables; the ingester's own knobs are
``UPSTAIRS_INGEST_*``. Built in :func:`ingest.service.main`, never at import time.
"""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.settings import DatabaseSettings, MqttSettings


class IngestSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UPSTAIRS_INGEST_", extra="ignore")

    db: DatabaseSettings = Field(default_factory=DatabaseSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)

    client_id: str = Field(
        default="upstairs-ingest",
        min_length=1,
        max_length=64,
        description="fixed MQTT client id: the broker keeps this session across restarts",
    )
    shared_group: str | None = Field(
        default=None,
        description="subscribe through $share/{group}/... so several ingesters split the load",
    )
    session_expiry_s: int = Field(
        default=7 * 24 * 3600,
        ge=60,
        le=0xFFFFFFFF,
        description="how long the broker keeps queuing for a stopped ingester",
    )
    receive_maximum: int = Field(
        default=4000,
        ge=10,
        le=65535,
        description="unacknowledged messages the broker may send at once (the intake bound)",
    )
    max_pending_readings: int = Field(
        default=60_000,
        ge=100,
        description="parsed readings held in memory; past it, intake waits",
    )
    writers: int = Field(
        default=2,
        ge=1,
        le=16,
        description="batches committed at once, each on its own connection (overlaps CPU and I/O)",
    )
    batch_size: int = Field(
        default=20_000,
        ge=1,
        le=100_000,
        description="rows per commit at most (batches only grow this big under load)",
    )
    batch_age_s: float = Field(
        default=0.1, gt=0, le=10, description="oldest pending reading waits at most this long"
    )
    registry_refresh_s: float = Field(
        default=30.0, gt=0, description="reload the sensor registry at least this often"
    )
    registry_min_reload_s: float = Field(
        default=1.0, ge=0, description="at most one reload per this long on unknown sensors"
    )
    max_future_s: float = Field(
        default=300.0, ge=0, description="refuse readings stamped further ahead than this"
    )
    max_age_days: float = Field(
        default=400.0, gt=0, description="refuse readings older than this (partitions, billing)"
    )
    energy_reset_kwh: float = Field(
        default=10.0, ge=0, description="a register dropping to at most this much was reset"
    )
    rollup_interval_s: float = Field(
        default=1.0,
        ge=0,
        le=3600,
        description="refresh the rollups this often (0 = not here: run python -m ingest.refresh)",
    )
    rollup_max_pending: int = Field(
        default=100_000, ge=100, description="pending partials merged per refresh transaction"
    )
    metrics_port: int = Field(default=9101, ge=0, le=65535, description="0 = no /metrics")
    metrics_host: str = Field(default="127.0.0.1")
    backoff_max_s: float = Field(default=10.0, gt=0, description="broker reconnect backoff cap")
    db_backoff_max_s: float = Field(
        default=2.0,
        gt=0,
        le=10,
        description="database retry backoff cap: writes resume within this long of its return",
    )

    def application_name(self, role: str) -> str:
        """How a connection of the ingester shows in pg_stat_activity (the bench finds them)."""
        return f"upstairs-ingest {role} {self.client_id}"[:63]

    @field_validator("shared_group")
    @classmethod
    def _group(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c in value for c in "/+#")):
            raise ValueError("shared_group must be a non-empty name without '/', '+' or '#'")
        return value
