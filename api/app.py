"""The FastAPI application: lifespan-owned pool and MQTT hub, routers, health and pages."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from api import alerts, buildings, floors, history, live, loadcheck, session, tenants
from api.auth import Scope, authenticate, credentials
from api.db import PoolDep, UnsafeRoleError, make_pool
from api.live import Hub
from api.metrics import Metrics, MetricsMiddleware
from api.pages import TEMPLATES
from api.settings import ApiSettings

logger = logging.getLogger(__name__)


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    database: bool
    broker: bool | None


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
    for module in (buildings, floors, history, tenants, alerts, loadcheck, session, live):
        app.include_router(module.router)

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
        database = False
        try:
            async with pool.connection(timeout=2.0) as conn:
                await conn.execute("SELECT 1")
                database = True
        except (psycopg.Error, OSError) as exc:
            logger.warning("readyz: database: %s", exc)
        hub: Hub = request.state.hub
        broker = hub.connected if hub.mqtt_url else None
        ready = Ready(database=database, broker=broker)
        ok = database and broker is not False
        return Response(ready.model_dump_json(), 200 if ok else 503, media_type="application/json")

    @app.get(
        "/metrics",
        tags=["health"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False, response_model=None)
    async def index(request: Request, pool: PoolDep) -> Response:
        try:
            found = credentials(request)
        except HTTPException:
            found = None
        if found is None:
            return RedirectResponse("/sign-in", status_code=303)
        async with pool.connection() as conn:
            principal = await authenticate(conn, *found)
            if principal is None:
                return RedirectResponse("/sign-in", status_code=303)
            scope = Scope(conn, principal)
            cur = await conn.execute("SELECT id, name, timezone FROM buildings ORDER BY id")
            shown = []
            for row in await cur.fetchall():
                summaries = await floors.floor_summaries(scope.conn, row["id"])
                shown.append({**row, "floors": sorted(summaries, key=lambda f: -f.number)})
            await conn.commit()
        return TEMPLATES.TemplateResponse(
            request, "index.html", {"buildings": shown, "principal": principal}
        )

    return app
