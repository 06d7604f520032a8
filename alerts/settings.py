"""Settings of the alert engine (``UPSTAIRS_ALERTS_*`` plus the shared fragments)."""

from __future__ import annotations

import re

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from core.settings import DatabaseSettings, MqttSettings, SettingsError

__all__ = ["AlertSettings"]

_PLACEHOLDERS = {"", "changeme", "change-me", "secret", "placeholder", "xxx"}


class AlertSettings(DatabaseSettings, MqttSettings):
    """One alert-engine instance. Rule parameters come from each building's AlertConfig."""

    model_config = SettingsConfigDict(
        env_prefix="UPSTAIRS_ALERTS_", extra="ignore", populate_by_name=True
    )

    buildings: list[str] = Field(
        default_factory=list, description="building ids this instance owns; empty = all"
    )
    client_id: str | None = Field(
        default=None, description="MQTT client id of the persistent session; default derived"
    )
    session_expiry_s: int = Field(default=3600, ge=0, description="broker keeps our queue")
    tick_s: float = Field(default=0.5, gt=0, le=10, description="timer resolution (real s)")
    command_poll_s: float = Field(default=1.0, gt=0, le=60, description="fallback to NOTIFY")
    state_min_interval_s: float = Field(
        default=1.0, ge=0, description="value-only floor-state changes coalesce this long"
    )
    state_max_interval_s: float = Field(
        default=10.0, gt=0, le=10, description="every floor state is republished this often"
    )
    batch_max: int = Field(
        default=50, ge=1, le=10_000, description="queued messages handled in one transaction"
    )
    building_poll_s: float = Field(
        default=5.0, gt=0, le=3600, description="how often a re-applied building is looked for"
    )
    webhook_urls: list[str] = Field(default_factory=list)
    webhook_secret: SecretStr = SecretStr("")
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    webhook_backoff_initial_s: float = Field(default=1.0, gt=0)
    webhook_backoff_max_s: float = Field(default=60.0, gt=0)
    webhook_poll_s: float = Field(default=1.0, gt=0, description="real seconds between scans")
    development: bool = Field(default=False, description="allow a placeholder webhook secret")

    # The shared fragments read UPSTAIRS_DATABASE_URL etc., not UPSTAIRS_ALERTS_DATABASE_URL.
    database_url: str | None = Field(default=None, validation_alias="UPSTAIRS_DATABASE_URL")
    mqtt_url: str | None = Field(default=None, validation_alias="UPSTAIRS_MQTT_URL")
    topic_prefix: str = Field(default="", validation_alias="UPSTAIRS_TOPIC_PREFIX")

    @field_validator("webhook_urls")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not re.match(r"^https?://[^/\s]+", url):
                raise ValueError(f"webhook URL {url!r} must be http:// or https://")
        return urls

    @model_validator(mode="after")
    def _secret(self) -> AlertSettings:
        secret = self.webhook_secret.get_secret_value()
        if self.webhook_urls and secret.lower() in _PLACEHOLDERS and not self.development:
            raise SettingsError(
                "UPSTAIRS_ALERTS_WEBHOOK_SECRET must be set to a real secret when "
                "UPSTAIRS_ALERTS_WEBHOOK_URLS is set"
            )
        return self

    def session_client_id(self) -> str:
        if self.client_id:
            return self.client_id
        scope = ",".join(sorted(self.buildings)) or "all"
        raw = f"upstairs-alerts-{self.topic_prefix}{scope}"
        return re.sub(r"[^A-Za-z0-9_.-]", "-", raw)[:64]
