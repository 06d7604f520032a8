"""The API's connection pool, opened in the lifespan and reached through ``Depends``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

Pool = AsyncConnectionPool[AsyncConnection[DictRow]]


def make_pool(conninfo: str, min_size: int, max_size: int) -> Pool:
    return AsyncConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        open=False,
        kwargs={"row_factory": dict_row, "autocommit": False},
        connection_class=AsyncConnection[DictRow],
    )


def get_pool(request: Request) -> Pool:
    pool: Pool = request.state.pool
    return pool


async def get_conn(
    pool: Annotated[Pool, Depends(get_pool)],
) -> AsyncIterator[AsyncConnection[DictRow]]:
    """One connection and one transaction per request."""
    async with pool.connection() as conn, conn.transaction():
        yield conn


Conn = Annotated[AsyncConnection[DictRow], Depends(get_conn)]
