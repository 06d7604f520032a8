"""The API's connection pool, opened in the lifespan and reached through ``Depends``.

The pool connects as the API role (see :mod:`api.settings`). Each new connection is checked
once: a role that is superuser or may bypass row-level security is refused, so the API can
never run with isolation switched off by a wrong URL.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

Pool = AsyncConnectionPool[AsyncConnection[DictRow]]
Connection = AsyncConnection[DictRow]


class UnsafeRoleError(RuntimeError):
    """The API's database role could read past row-level security."""


async def _check_role(conn: Connection) -> None:
    cur = await conn.execute(
        "SELECT current_user AS name, rolsuper, rolbypassrls FROM pg_roles"
        " WHERE rolname = current_user"
    )
    row = await cur.fetchone()
    await conn.execute("SET TIME ZONE 'UTC'")  # times leave the database as ...+00:00
    await conn.execute("SET extra_float_digits = 1")  # JSON text of floats (migration 0017)
    await conn.commit()
    if row is None or row["rolsuper"] or row["rolbypassrls"]:
        name = row["name"] if row else "?"
        raise UnsafeRoleError(
            f"the API connects as {name!r}, which is superuser or bypasses row-level security;"
            " connect as upstairs_api (docs/api.md)"
        )


async def _check(conn: Connection) -> None:
    """A connection leaves the pool in transaction mode (not autocommit).

    :func:`api.auth.read_scoped` turns autocommit on for its pipeline and off again before
    it returns the connection; this makes sure of it for every user of the pool, even after
    a request was cancelled in between. (A check runs in ``getconn``; a ``reset`` would send
    every returned connection through the pool's worker task, which costs more.)
    """
    if conn.autocommit:
        await conn.set_autocommit(False)


def make_pool(conninfo: str, min_size: int, max_size: int) -> Pool:
    return AsyncConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        open=False,
        kwargs={"row_factory": dict_row, "autocommit": False},
        connection_class=AsyncConnection[DictRow],
        configure=_check_role,
        check=_check,
        timeout=10.0,
    )


async def get_pool(request: Request) -> Pool:
    pool: Pool = request.state.pool
    return pool


PoolDep = Annotated[Pool, Depends(get_pool)]
