"""Settings fragments shared by the services.

Each service composes the fragments it needs into one settings object, built in its
``main()`` (never at import time). Values come from ``UPSTAIRS_*`` environment variables.
``UPSTAIRS_DATABASE_URL`` and ``UPSTAIRS_MQTT_URL`` unset means "embedded": the launcher
(``upstairs demo``) starts an embedded PostgreSQL and broker and fills them in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.topics import check_prefix


class _Fragment(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UPSTAIRS_", extra="ignore")


class DatabaseSettings(_Fragment):
    database_url: str | None = Field(
        default=None, description="libpq URL of PostgreSQL; unset = embedded PostgreSQL"
    )


class MqttSettings(_Fragment):
    mqtt_url: str | None = Field(
        default=None, description="mqtt://[user:pass@]host:port; unset = embedded broker"
    )
    topic_prefix: str = Field(
        default="", description="prepended to every topic, for sharing a broker; ends with /"
    )

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return check_prefix(value)


class DataDirSettings(_Fragment):
    data_dir: Path = Field(default=Path(".upstairs"), description="embedded services' data")


@dataclass(frozen=True, slots=True)
class MqttAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False


class SettingsError(ValueError):
    """A setting has a value the platform cannot use; the message names the variable."""


def parse_mqtt_url(url: str) -> MqttAddress:
    """``mqtt://user:pass@host:1883`` or ``mqtts://host:8883`` to an address."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise SettingsError(
            f"UPSTAIRS_MQTT_URL={url!r}: scheme must be mqtt:// or mqtts://, not {parts.scheme!r}"
        )
    tls = parts.scheme in ("mqtts", "ssl")
    if not parts.hostname:
        raise SettingsError(f"UPSTAIRS_MQTT_URL={url!r}: no host")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise SettingsError(f"UPSTAIRS_MQTT_URL={url!r}: bad port") from exc
    return MqttAddress(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
    )
