"""Shared pieces of the routers: error models, documented responses, ids, JSON output.

Also the response cache of the read endpoints (live floors, history, tenant power, bills).
Dashboards ask the same questions again and again, from many screens at once; an answer is
kept per principal class (operators; each tenant of each building: the classes row-level
security distinguishes) and URL (path and query) for ``UPSTAIRS_API_CACHE_S`` seconds (2 by
default; 0 turns it off), so the same read from many clients costs one query. Only 200
answers are kept; every request is still authenticated (:mod:`api.auth`) before the cache is
looked at. When an answer is older than the window, the next request computes it again while
requests arriving meanwhile get the previous answer, for at most one more window; so an
answer is never older than two windows plus one computation. Per process, at most
``_CACHE_BYTES`` of bodies, least recently used first out.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import FastAPI, HTTPException, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from api.auth import Principal

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Problem(BaseModel):
    """Every error that is not a validation error."""

    model_config = ConfigDict(extra="forbid")
    detail: str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error codes a route can answer (401 and 422 always)."""
    text = {
        400: "the body is not JSON",
        401: "no credentials, or a token that is unknown or revoked",
        403: "the role may not do this",
        404: "no such object, or not yours to see",
        409: "the alert engine refused the action",
        429: "too many failed sign-ins from this address",
        503: "the database or the alert engine is not reachable",
        504: "the alert engine did not answer in time",
    }
    out: dict[int | str, dict[str, Any]] = {
        401: {"model": Problem, "description": text[401]},
    }
    for code in codes:
        out[code] = {"model": Problem, "description": text[code]}
    return out


def building_path() -> Any:
    return Path(pattern=ID_PATTERN, description="building id", examples=["ref-tower"])


def not_found(what: str) -> HTTPException:
    return HTTPException(404, f"{what} not found")


def bad_query(field: str, message: str) -> RequestValidationError:
    """A 422 in FastAPI's own shape, naming the query parameter."""
    return RequestValidationError(
        [{"type": "value_error", "loc": ("query", field), "msg": message, "input": None}]
    )


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    """Serialise once (FastAPI would validate the model again)."""
    return Response(
        model.__pydantic_serializer__.to_json(model),
        status_code=status_code,
        media_type="application/json",
    )


async def forbid_unknown_query(request: Request) -> None:
    """Refuse query parameters the route does not declare (422, with the parameter's name)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    unknown = sorted(set(request.query_params) - _known_query(route))
    if unknown:
        raise RequestValidationError(
            [
                {
                    "type": "extra_forbidden",
                    "loc": ("query", name),
                    "msg": "unknown query parameter",
                    "input": request.query_params.get(name),
                }
                for name in unknown
            ]
        )


_KNOWN_QUERY = "_upstairs_known_query"  # where a route keeps its set


def _known_query(route: APIRoute) -> frozenset[str]:
    """The query parameters a route declares, its dependencies' included (once per route)."""
    known: frozenset[str] | None = getattr(route, _KNOWN_QUERY, None)
    if known is None:
        names: set[str] = set()
        stack = [route.dependant]
        while stack:
            dep = stack.pop()
            names.update(p.alias for p in dep.query_params)
            stack.extend(dep.dependencies)
        known = frozenset(names)
        setattr(route, _KNOWN_QUERY, known)
    return known


_CACHE_BYTES = 64 * 1024 * 1024

CacheKey = tuple[Any, ...]

K = TypeVar("K")
V = TypeVar("V")


@lru_cache(maxsize=256)
def array_literal(values: tuple[int | datetime, ...]) -> str:
    """``{v1,v2,...}``: an array passed as text and cast in SQL (``%(x)s::int[]``), much
    cheaper than psycopg dumping a list; datetimes in ISO 8601 with their offset."""
    return (
        "{" + ",".join(v.isoformat() if isinstance(v, datetime) else str(v) for v in values) + "}"
    )


def remember(entries: OrderedDict[K, V], key: K, value: V, limit: int) -> None:
    """``entries[key] = value`` as the most recent entry; the least recent go beyond ``limit``
    (a process's small caches of bills and of what it guessed about tenants)."""
    entries[key] = value
    entries.move_to_end(key)
    while len(entries) > limit:
        entries.popitem(last=False)


@dataclass(frozen=True, slots=True)
class _Cached:
    body: bytes
    media_type: str | None
    headers: dict[str, str]
    made: float

    def response(self) -> Response:
        return Response(self.body, media_type=self.media_type, headers=self.headers)


class ResponseCache:
    """Recent 200 answers by key, with one computation per key at a time (see above)."""

    def __init__(self, ttl_s: float, max_bytes: int = _CACHE_BYTES) -> None:
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._entries: OrderedDict[CacheKey, _Cached] = OrderedDict()
        self._pending: dict[CacheKey, asyncio.Future[_Cached | None]] = {}
        self._bytes = 0

    async def get(self, key: CacheKey, make: Callable[[], Awaitable[Response]]) -> Response:
        if self.ttl_s <= 0:
            return await make()
        entry = self._entries.get(key)
        pending = self._pending.get(key)
        now = time.monotonic()
        if entry is not None:
            age = now - entry.made
            if age < self.ttl_s or (pending is not None and age < 2 * self.ttl_s):
                self._entries.move_to_end(key)
                return entry.response()
        if pending is not None:  # someone computes it right now: share the answer
            shared = await asyncio.shield(pending)
            if shared is not None:
                return shared.response()
            return await make()  # that computation failed or was not cacheable: our own
        future: asyncio.Future[_Cached | None] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        kept: _Cached | None = None
        try:
            response = await make()
            kept = self._keep(key, response)
            return response
        finally:
            del self._pending[key]
            future.set_result(kept)

    def _keep(self, key: CacheKey, response: Response) -> _Cached | None:
        body = bytes(response.body) if hasattr(response, "body") else None
        if response.status_code != 200 or body is None or len(body) > self.max_bytes // 8:
            return None
        headers = {
            k: v
            for k, v in response.headers.items()
            if k.lower() not in ("content-length", "content-type")
        }
        entry = _Cached(body, response.media_type, headers, time.monotonic())
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old.body)
        self._entries[key] = entry
        self._bytes += len(body)
        while self._bytes > self.max_bytes and self._entries:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= len(dropped.body)
        return entry


_response_caches: weakref.WeakKeyDictionary[FastAPI, ResponseCache] = weakref.WeakKeyDictionary()


def response_cache(request: Request) -> ResponseCache:
    """The application's response cache (one per app, so per worker process)."""
    app: FastAPI = request.app
    cache = _response_caches.get(app)
    if cache is None:
        settings = getattr(app.state, "settings", None)
        ttl = float(getattr(settings, "api_cache_s", 0.0))
        cache = _response_caches[app] = ResponseCache(ttl)
    return cache


def cache_key(request: Request, principal: Principal) -> CacheKey:
    """What an answer depends on: who (as row-level security sees it), path and query."""
    who = (principal.role, principal.building_id, principal.tenant_id)
    return (who, request.url.path, tuple(sorted(request.query_params.multi_items())))


async def cached(
    request: Request, principal: Principal, make: Callable[[], Awaitable[Response]]
) -> Response:
    """``make()``'s answer, from the response cache when it holds a recent one."""
    return await response_cache(request).get(cache_key(request, principal), make)
