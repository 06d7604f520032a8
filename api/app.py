"""The FastAPI application: lifespan-owned pool, routers, and the first page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from api import floors
from api.db import Conn, make_pool
from api.settings import ApiSettings

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def create_app(settings: ApiSettings) -> FastAPI:
    if not settings.database_url:
        raise ValueError("UPSTAIRS_DATABASE_URL must be set for the API")
    database_url = settings.database_url

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        pool = make_pool(database_url, settings.api_pool_min, settings.api_pool_max)
        async with pool:
            yield {"pool": pool, "settings": settings}

    app = FastAPI(
        title="Upstairs API",
        version="1",
        description="Live floors, history, tenant power and bills of vertical factories.",
        lifespan=lifespan,
    )
    app.include_router(floors.router)

    @app.get("/healthz", tags=["health"], summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index(request: Request, conn: Conn) -> HTMLResponse:
        cur = await conn.execute("SELECT id, name, timezone FROM buildings ORDER BY id")
        buildings = []
        for row in await cur.fetchall():
            summaries = await floors.floor_summaries(conn, row["id"])
            buildings.append({**row, "floors": sorted(summaries, key=lambda f: -f.number)})
        return TEMPLATES.TemplateResponse(request, "index.html", {"buildings": buildings})

    return app
