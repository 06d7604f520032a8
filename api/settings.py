"""Settings of the API service (``UPSTAIRS_API_*`` plus the shared fragments)."""

from __future__ import annotations

from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import Field

from core.settings import DatabaseSettings, MqttSettings

#: The database role the API runs as (created by migration 0004_api).
API_ROLE = "upstairs_api"


class ApiSettings(DatabaseSettings, MqttSettings):
    api_host: str = Field(default="127.0.0.1", description="address to listen on")
    api_port: int = Field(default=8000, ge=0, le=65535)
    api_workers: int = Field(
        default=1, ge=1, le=64, description="uvicorn worker processes (each has its own pool)"
    )
    api_pool_min: int = Field(default=2, ge=1)
    api_pool_max: int = Field(default=8, ge=1)
    api_database_url: str | None = Field(
        default=None,
        description="libpq URL the API connects with; unset = UPSTAIRS_DATABASE_URL with the"
        " user switched to upstairs_api (and no password)",
    )
    api_session_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    api_secure_cookies: bool = Field(
        default=False, description="mark the session cookie Secure (set it behind HTTPS)"
    )
    api_auth_cache_s: float = Field(
        default=5.0,
        ge=0,
        le=60,
        description="remember an authenticated bearer token this long (a revocation takes"
        " effect within it); 0 = look every token up",
    )
    api_cache_s: float = Field(
        default=2.0,
        ge=0,
        le=60,
        description="serve the same read to the same principal class from memory this long"
        " (live floors, history, tenant power and bills); 0 = off",
    )
    api_bill_cache: bool = Field(
        default=True,
        description="keep computed bills while a stamp of their data is unchanged (docs/api.md,"
        " Bills); false = compute every bill from the rollups",
    )
    api_command_timeout_s: float = Field(
        default=3.0, gt=0, le=60, description="how long to wait for the alert engine"
    )

    def api_conninfo(self) -> str:
        """Where the API connects: its own URL, else the main one as ``upstairs_api``."""
        if self.api_database_url:
            return self.api_database_url
        if not self.database_url:
            raise ValueError("UPSTAIRS_DATABASE_URL (or UPSTAIRS_API_DATABASE_URL) must be set")
        return api_role_conninfo(self.database_url)


def api_role_conninfo(conninfo: str) -> str:
    """``conninfo`` with the user switched to the API role and any password dropped."""
    params = conninfo_to_dict(conninfo)
    params.pop("password", None)
    params["user"] = API_ROLE
    return make_conninfo("", **params)
