"""The FastAPI application: lifespan-owned pool and MQTT hub, routers, health and pages."""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from api import (
    alerts,
    bills,
    buildings,
    floors,
    history,
    live,
    loadcheck,
    pages_alerts,
    pages_operator,
    pages_tenant,
    session,
    tenants,
)
from api.db import PoolDep, UnsafeRoleError, make_pool
from api.health import RefresherAge
from api.live import Hub
from api.metrics import Metrics, MetricsMiddleware
from api.pages import STATIC_DIR
from api.settings import ApiSettings

logger = logging.getLogger(__name__)


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    database: bool = Field(description="a query through the API's pool answered")
    broker: bool | None = Field(description="the live hub's MQTT link; null: no broker set")
    rollups_age_s: float | None = Field(
        description="seconds since the rollup refresher last ran (it keeps the live floors,"
        " history, power and bills current); null: no refresh recorded, or no database."
        " Not part of readiness: alert on upstairs_api_rollups_age_seconds instead"
    )


async def check_role(conninfo: str) -> None:
    """Refuse to start as a role that could read past row-level security."""
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        cur = await conn.execute(
            "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user"
        )
        row = await cur.fetchone()
    if row is None or row[0]:
        raise UnsafeRoleError(
            "the API's database role is superuser or bypasses row-level security;"
            " set UPSTAIRS_API_DATABASE_URL to connect as upstairs_api (docs/api.md)"
        )


def create_app(settings: ApiSettings) -> FastAPI:
    conninfo = settings.api_conninfo()
    metrics = Metrics()
    refresher = RefresherAge()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        await check_role(conninfo)
        pool = make_pool(conninfo, settings.api_pool_min, settings.api_pool_max)
        hub = Hub(settings.mqtt_url, settings.topic_prefix)
        app.state.settings = settings
        async with pool, asyncio.TaskGroup() as tasks:
            listener = tasks.create_task(hub.run(), name="api-mqtt-hub")
            try:
                yield {"pool": pool, "hub": hub, "bill_cache": OrderedDict()}
            finally:
                listener.cancel()

    app = FastAPI(
        title="Upstairs API",
        version="1",
        description="Live floors, history, tenant power and bills of vertical factories."
        " Authenticate with 'Authorization: Bearer <token>' (docs/api.md).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    for module in (buildings, floors, history, tenants, bills, alerts, loadcheck, session, live):
        app.include_router(module.router)
    for page in (pages_operator, pages_alerts, pages_tenant):
        app.include_router(page.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/healthz", tags=["health"], summary="The process is up", response_model=Health)
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get(
        "/readyz",
        tags=["health"],
        summary="Database and broker reachable",
        response_model=Ready,
        responses={503: {"model": Ready, "description": "not ready"}},
    )
    async def readyz(request: Request, pool: PoolDep) -> Response:
        database, age = False, None
        try:
            async with pool.connection(timeout=2.0) as conn:
                await conn.execute("SELECT 1")
                database = True
                age = await refresher.read(conn)
        except (psycopg.Error, OSError) as exc:
            logger.warning("readyz: database: %s", exc)
        hub: Hub = request.state.hub
        broker = hub.connected if hub.mqtt_url else None
        ready = Ready(database=database, broker=broker, rollups_age_s=age)
        ok = database and broker is not False
        return Response(ready.model_dump_json(), 200 if ok else 503, media_type="application/json")

    @app.get(
        "/metrics",
        tags=["health"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def prometheus(pool: PoolDep) -> Response:
        try:  # a scrape does not queue for the pool: when it is busy, the last reading, aged
            async with pool.connection(timeout=0.25) as conn:
                age = await refresher.read(conn)
        except (psycopg.Error, OSError):
            age = refresher.estimate()
        metrics.rollups_age.set(math.nan if age is None else age)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
