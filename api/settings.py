"""Settings of the API service (``UPSTAIRS_API_*`` plus the shared fragments)."""

from __future__ import annotations

from pydantic import Field

from core.settings import DatabaseSettings, MqttSettings


class ApiSettings(DatabaseSettings, MqttSettings):
    api_host: str = Field(default="127.0.0.1", description="address to listen on")
    api_port: int = Field(default=8000, ge=0, le=65535)
    api_pool_min: int = Field(default=1, ge=1)
    api_pool_max: int = Field(default=8, ge=1)
