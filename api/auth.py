"""Who is asking: bearer tokens and browser sessions, and the per-request database scope.

Every request that reads the database gets one pooled connection and one transaction whose
first statement scopes it: it authenticates (``api_authenticate``, a function the API role
may call without any read access to the token tables) and sets ``app.role`` /
``app.tenant_id`` for this transaction only, so row-level security scopes every later query;
the setting ends with the transaction, and a connection goes back to the pool with none.

Reads that know all their statements up front (the live floors, history) use
:func:`read_scoped`: the scoping ``set_config`` calls and the reads travel in one pipeline,
one transaction in one round trip (statement by statement it was four: ``BEGIN``, scope,
read, ``COMMIT``).

A bearer token that authenticated is remembered by this process for
``UPSTAIRS_API_AUTH_CACHE_S`` seconds (5 by default; 0 turns it off). Within that window the
first statement only sets the principal (no lookup of the token), and an answer served from
the response cache (:mod:`api.common`) needs no connection at all. So a revoked token is
refused by every replica at most that long after the revocation committed. Browser sessions
are not cached: signing out takes effect at once.
"""

from __future__ import annotations

import hashlib
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from psycopg import errors as pg_errors
from psycopg.abc import Params, QueryNoTemplate
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow
from starlette.requests import HTTPConnection

from api.db import Connection, Pool, PoolDep

logger = logging.getLogger(__name__)

SESSION_COOKIE = "upstairs_session"
TOKEN_PREFIX = "ups_"

_AUTH_SQL = """
SELECT a.token_id, a.role, a.building_id, a.tenant_id, a.name,
       set_config('app.role', a.role, true) AS _r,
       set_config('app.tenant_id', coalesce(a.building_id || '/' || a.tenant_id, ''), true) AS _t
  FROM {fn}(%s) a
"""

_SCOPE_SQL = "SELECT set_config('app.role', %s, true), set_config('app.tenant_id', %s, true)"
#: The same, and plans made once per connection for reads marked ``generic`` (see Read).
_SCOPE_GENERIC_SQL = _SCOPE_SQL + ", set_config('plan_cache_mode', 'force_generic_plan', true)"


def token_hash(secret: str) -> bytes:
    """Tokens and session secrets are random 256-bit strings: SHA-256 is the right hash."""
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True, slots=True)
class Principal:
    token_id: int
    role: Literal["operator", "tenant"]
    name: str
    building_id: str | None = None
    tenant_id: str | None = None

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"

    @property
    def actor(self) -> str:
        """Who acted, as alerts record it; a tenant's names its tenant (redaction needs it)."""
        if self.role == "tenant":
            return f"tenant:{self.tenant_id}/{self.name} (token {self.token_id})"
        return f"{self.role}:{self.name} (token {self.token_id})"

    @property
    def scope_params(self) -> tuple[str, str]:
        """``app.role`` and ``app.tenant_id`` of this principal (``building/tenant``)."""
        tenant = ""
        if self.building_id and self.tenant_id:
            tenant = f"{self.building_id}/{self.tenant_id}"
        return self.role, tenant

    def sees_building(self, building: str) -> bool:
        return self.is_operator or self.building_id == building

    def is_tenant(self, building: str, tenant: str) -> bool:
        return self.building_id == building and self.tenant_id == tenant


def unauthorized(detail: str = "authentication required") -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def credentials(request: HTTPConnection) -> tuple[str, bytes] | None:
    """``("token", hash)`` from ``Authorization: Bearer``, else ``("session", hash)``."""
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise unauthorized("use 'Authorization: Bearer <token>'")
        return "token", token_hash(value.strip())
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        return "session", token_hash(cookie)
    return None


async def authenticate(conn: Connection, kind: str, digest: bytes) -> Principal | None:
    """Authenticate in the connection's current transaction and scope it to the principal."""
    fn = "api_authenticate" if kind == "token" else "api_session_authenticate"
    cur = await conn.execute(_AUTH_SQL.format(fn=fn), (digest,))  # fn is one of two literals
    row = await cur.fetchone()
    if row is None:
        return None
    return Principal(
        token_id=row["token_id"],
        role=row["role"],
        name=row["name"],
        building_id=row["building_id"],
        tenant_id=row["tenant_id"],
    )


@dataclass(slots=True)
class Scope:
    """A request's connection, in a transaction scoped to ``principal``."""

    conn: Connection
    principal: Principal

    async def rescope(self) -> None:
        """Set the principal again (after a commit began a new transaction)."""
        await self.conn.execute(_SCOPE_SQL, self.principal.scope_params)

    async def commit(self) -> None:
        await self.conn.commit()
        await self.rescope()

    async def audit(
        self, action: str, target: str | None, result: str, detail: str | None = None
    ) -> None:
        p = self.principal
        await self.conn.execute(
            "INSERT INTO audit_log (token_id, role, building_id, tenant_id, action, target,"
            " result, detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (p.token_id, p.role, p.building_id, p.tenant_id, action, target, result, detail),
        )


class PrincipalCache:
    """Bearer tokens that authenticated lately: digest -> (principal, expiry), bounded LRU."""

    def __init__(self, ttl_s: float, size: int = 4096) -> None:
        self.ttl_s = ttl_s
        self.size = size
        self._entries: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()

    def get(self, kind: str, digest: bytes) -> Principal | None:
        if kind != "token" or self.ttl_s <= 0:
            return None
        found = self._entries.get(digest)
        if found is None:
            return None
        if found[1] <= time.monotonic():
            del self._entries[digest]
            return None
        return found[0]

    def put(self, kind: str, digest: bytes, principal: Principal) -> None:
        if kind != "token" or self.ttl_s <= 0:
            return
        self._entries[digest] = (principal, time.monotonic() + self.ttl_s)
        self._entries.move_to_end(digest)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


_principal_caches: weakref.WeakKeyDictionary[FastAPI, PrincipalCache] = weakref.WeakKeyDictionary()


def principal_cache(request: HTTPConnection) -> PrincipalCache:
    """The application's token cache (one per app, so per worker process)."""
    app: FastAPI = request.app
    cache = _principal_caches.get(app)
    if cache is None:
        settings = getattr(app.state, "settings", None)
        ttl = float(getattr(settings, "api_auth_cache_s", 0.0))
        cache = _principal_caches[app] = PrincipalCache(ttl)
    return cache


def _db_unavailable(exc: Exception) -> HTTPException:
    logger.warning("database unavailable: %s", exc)
    return HTTPException(503, "the database is not reachable")


async def _scoped(conn: Connection, cache: PrincipalCache, found: tuple[str, bytes]) -> Principal:
    """Scope the connection's transaction: to a cached principal, else by authenticating."""
    principal = cache.get(*found)
    if principal is not None:
        await Scope(conn, principal).rescope()
        return principal
    principal = await authenticate(conn, *found)
    if principal is None:
        await conn.rollback()
        raise unauthorized("unknown, expired or revoked credentials")
    cache.put(*found, principal)
    return principal


async def scope(request: Request, pool: PoolDep) -> AsyncIterator[Scope]:
    found = credentials(request)
    if found is None:
        raise unauthorized()
    cache = principal_cache(request)
    try:
        async with pool.connection() as conn:
            principal = await _scoped(conn, cache, found)
            request.state.principal = principal
            yield Scope(conn, principal)
            await conn.commit()
    except (pg_errors.OperationalError, pg_errors.InterfaceError) as exc:
        raise _db_unavailable(exc) from exc


async def current_principal(request: Request, pool: PoolDep) -> Principal:
    """Who is asking, without holding a connection (from the token cache when fresh)."""
    found = credentials(request)
    if found is None:
        raise unauthorized()
    cache = principal_cache(request)
    principal = cache.get(*found)
    if principal is None:
        try:
            async with pool.connection() as conn:
                principal = await _scoped(conn, cache, found)
                await conn.commit()
        except (pg_errors.OperationalError, pg_errors.InterfaceError) as exc:
            raise _db_unavailable(exc) from exc
    request.state.principal = principal
    return principal


@asynccontextmanager
async def open_scope(pool: Pool, principal: Principal) -> AsyncIterator[Scope]:
    """A connection in a transaction scoped to an authenticated ``principal``; commits."""
    try:
        async with pool.connection() as conn:
            s = Scope(conn, principal)
            await s.rescope()
            yield s
            await conn.commit()
    except (pg_errors.OperationalError, pg_errors.InterfaceError) as exc:
        raise _db_unavailable(exc) from exc


@dataclass(frozen=True, slots=True)
class Read:
    """One statement of :func:`read_scoped`: its SQL, parameters, whether the results
    come in binary (arrays are much cheaper to read so), and whether its plan is generic.

    ``generic``: the statement is planned once per connection, for any parameters, instead
    of for each request's (PostgreSQL's default keeps planning anew when a generic plan
    looks costlier, as it does for queries whose row counts depend on the parameters). Only
    for reads whose best plan does not depend on the values: the floor's history by minute,
    where planning was 40 % of the statement's time."""

    sql: QueryNoTemplate
    params: Params
    binary: bool = False
    generic: bool = False


async def read_scoped(pool: Pool, principal: Principal, *reads: Read) -> list[list[DictRow]]:
    """The rows of each of ``reads``, run in one transaction scoped to ``principal``.

    One pipeline, one round trip: ``set_config(..., true)`` of the principal, then the
    reads, then a single Sync. PostgreSQL runs the statements of a pipeline up to its Sync
    as one transaction (the protocol's implicit transaction: a failed statement makes it
    skip the rest and roll back), so the settings hold for every read and end at the Sync,
    exactly as between :func:`open_scope`'s ``BEGIN`` and ``COMMIT``. The connection runs
    in autocommit mode meanwhile, which is what keeps psycopg from opening (and syncing) a
    transaction of its own first; it goes back to the pool in transaction mode (and the
    pool's check makes sure, :mod:`api.db`). ``tests/test_api_read_scoped.py`` checks the
    one transaction and that nothing outlives it.
    """
    try:
        async with pool.connection() as conn:
            await conn.set_autocommit(True)
            try:
                cursors = []
                async with conn.pipeline():
                    generic = any(read.generic for read in reads)
                    scope = _SCOPE_GENERIC_SQL if generic else _SCOPE_SQL
                    await conn.execute(scope, principal.scope_params)
                    for read in reads:
                        cur = conn.cursor(binary=read.binary)
                        await cur.execute(read.sql, read.params)
                        cursors.append(cur)
                return [await cur.fetchall() for cur in cursors]
            finally:
                await _end_autocommit(conn)
    except (pg_errors.OperationalError, pg_errors.InterfaceError) as exc:
        raise _db_unavailable(exc) from exc


async def _end_autocommit(conn: Connection) -> None:
    """Back to transaction mode, rolling back what a failed statement left open; a connection
    that cannot (broken, or busy after a cancellation) is closed, and the pool replaces it."""
    status = conn.info.transaction_status
    try:
        if status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
            await conn.rollback()
        if conn.info.transaction_status == TransactionStatus.IDLE:
            await conn.set_autocommit(False)
            return
    except pg_errors.Error as exc:
        logger.warning("closing a connection that failed to leave autocommit: %s", exc)
    await conn.close()


ScopeDep = Annotated[Scope, Depends(scope)]
PrincipalDep = Annotated[Principal, Depends(current_principal)]


async def operator_scope(s: ScopeDep) -> Scope:
    if not s.principal.is_operator:
        raise HTTPException(403, "operators only")
    return s


OperatorScopeDep = Annotated[Scope, Depends(operator_scope)]


def principal_json(p: Principal) -> dict[str, Any]:
    return {"role": p.role, "name": p.name, "building": p.building_id, "tenant": p.tenant_id}
