"""The load generator of ``upstairs bench api``: a process of its own (``client_main``).

A raw asyncio HTTP/1.1 client with one keep-alive connection per simulated client, so the
measuring code costs the machine as little as possible. It reports, per endpoint, the latency
percentiles, requests per second and the CPU time per request of itself, of the API
process(es) and of the API's database backends.

Two phases, each against an API process of its own: ``cached`` asks every endpoint the same
question again and again (what the answer cache serves); ``distinct`` asks each request a
question of its own: another floor or tenant, and a window shifted by a number of seconds no
other request uses, against an API with the answer cache off. See :class:`Questions`.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psutil
import psycopg
from psycopg_pool import AsyncConnectionPool

ENDPOINTS = ("floors_live", "tenant_power_30d_by_day", "floor_load_24h_by_minute",
             "tenant_bill_month")  # fmt: skip


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2)

    return {"p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": pct(1.0), "n": len(ordered)}


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Questions:
    """The measured reads. Question 0 of an endpoint is its fixed question; every k > 0 asks
    another: the windows end k seconds before ``now`` (no two requests share a window), the
    floor history cycles through ``floors``, tenant power and bills through ``tenants``, the
    live floors through the operator and every tenant."""

    building: str
    now: datetime
    month: str
    tenant: str
    tenants: tuple[str, ...]
    floors: tuple[int, ...]

    def ask(self, name: str, k: int) -> tuple[str, str]:
        """(who asks: ``operator`` or a tenant id, path) of question ``k`` of ``name``."""
        end = self.now - timedelta(seconds=k)
        tenant = self.tenants[k % len(self.tenants)] if k else self.tenant
        b = self.building
        if name == "floors_live":
            who = ("operator", *self.tenants)[k % (len(self.tenants) + 1)]
            return who, f"/api/v1/buildings/{b}/floors"
        if name == "tenant_power_30d_by_day":
            start = end - timedelta(days=30)
            path = f"/api/v1/tenants/{tenant}/power?step=1d&from={_iso(start)}&to={_iso(end)}"
            return tenant, path
        if name == "floor_load_24h_by_minute":
            floor = self.floors[k % len(self.floors)] if k else 3
            start = end - timedelta(hours=24)
            return "operator", (
                f"/api/v1/buildings/{b}/floors/{floor}/history?metric=load&step=1m"
                f"&from={_iso(start)}&to={_iso(end)}"
            )
        if name == "tenant_bill_month":
            return tenant, f"/api/v1/tenants/{tenant}/bill?month={self.month}"
        raise ValueError(name)


class _HttpConnection:
    """One keep-alive HTTP/1.1 connection that sends prepared GETs (Content-Length answers)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reopened = 0

    @classmethod
    async def open(cls, port: int) -> _HttpConnection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def get(self, request: bytes) -> int:
        """Send ``request``, read the whole answer; return its size or raise on non-200.

        A connection the server closed while idle (keep-alive timeout, a worker restarted) is
        opened again once and the request sent again, as any HTTP client does for a GET.
        """
        self.writer.write(request)
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            self.writer.close()
            host, port = self.writer.get_extra_info("peername")[:2]
            self.reader, self.writer = await asyncio.open_connection(host, port)
            self.reopened += 1
            self.writer.write(request)
            head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = -1
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length < 0:
            raise RuntimeError(f"no Content-Length in {head[:200]!r}")
        body = await self.reader.readexactly(length)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {body[:300]!r}")
        return length

    def close(self) -> None:
        self.writer.close()


class _CpuMeter:
    """CPU seconds of this process, the API process tree and the API's database backends."""

    def __init__(self, api_pid: int, db_url: str, application_name: str) -> None:
        self.api = psutil.Process(api_pid)
        self.db_url = db_url
        self.application_name = application_name

    def _backends(self) -> dict[int, float]:
        out: dict[int, float] = {}
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                (self.application_name,),
            ).fetchall()
        for (pid,) in rows:
            try:
                t = psutil.Process(pid).cpu_times()
                out[pid] = t.user + t.system
            except psutil.Error:  # not visible (another host or user): counted as 0
                pass
        return out

    def _api(self) -> float:
        total = 0.0
        for p in [self.api, *self.api.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def sample(self) -> tuple[float, float, dict[int, float]]:
        return time.process_time(), self._api(), self._backends()

    def per_request(
        self, before: tuple[float, float, dict[int, float]], n: int
    ) -> dict[str, float]:
        client, api, backends = self.sample()
        db = sum(v - before[2].get(pid, 0.0) for pid, v in backends.items())
        return {
            "client": round((client - before[0]) * 1000 / n, 3),
            "api": round((api - before[1]) * 1000 / n, 3),
            "db": round(db * 1000 / n, 3),
        }


async def _measure(
    call: Callable[[int], Awaitable[None]], concurrency: int, requests: int
) -> tuple[dict[str, float], float]:
    """Percentiles of ``requests`` calls from ``concurrency`` workers, and the wall time."""
    samples: list[float] = []

    async def worker(w: int, count: int) -> None:
        for _ in range(count):
            t0 = time.perf_counter()
            await call(w)
            samples.append(time.perf_counter() - t0)

    await asyncio.gather(*(call(w) for w in range(concurrency)))  # warm up every connection
    per = max(1, requests // concurrency)
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w, per) for w in range(concurrency)))
    return _percentiles(samples), time.perf_counter() - t0


async def _client(config: dict[str, Any]) -> dict[str, Any]:
    port: int = config["port"]
    concurrency: int = config["concurrency"]
    requests: int = config["requests"]
    tokens: dict[str, str] = config["tokens"]
    distinct = config["phase"] == "distinct"
    questions = Questions(
        building=config["building"],
        now=datetime.fromisoformat(config["now"]),
        month=config["month"],
        tenant=config["tenant"],
        tenants=tuple(config["tenants"]),
        floors=tuple(config["floors"]),
    )
    meter = _CpuMeter(config["api_pid"], config["owner_url"], config["application_name"])
    conns = [await _HttpConnection.open(port) for _ in range(concurrency)]
    out: dict[str, Any] = {}

    def request(who: str | None, path: str) -> bytes:
        auth = f"Authorization: Bearer {tokens[who]}\r\n" if who else ""
        return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}\r\n".encode()

    async def run(name: str, ask: Callable[[int], tuple[str | None, str]]) -> None:
        counter = itertools.count(1 if distinct else 0)
        t0 = time.perf_counter()
        size = await conns[0].get(request(*ask(0)))
        cold = time.perf_counter() - t0

        async def call(w: int) -> None:
            await conns[w].get(request(*ask(next(counter) if distinct else 0)))

        before = meter.sample()
        stats, wall = await _measure(call, concurrency, requests)
        n = int(stats["n"]) + concurrency
        out[name] = stats | {
            "first_ms": round(cold * 1000, 2),
            "bytes": size,
            "rps": round(stats["n"] / wall, 1),
            "cpu_ms_per_request": meter.per_request(before, n),
        }

    reopened = 0
    try:
        for name in ENDPOINTS:
            await run(name, functools.partial(questions.ask, name))
        if config["ceiling"]:
            await run("ceiling_healthz", lambda _: (None, "/healthz"))
    finally:
        for c in conns:
            reopened += c.reopened
            c.close()
    out["connections_reopened"] = reopened
    if config["ceiling"]:
        out["ceiling_select1"] = await _select1(config, concurrency, requests)
    return out


async def _select1(config: dict[str, Any], concurrency: int, requests: int) -> dict[str, Any]:
    """``SELECT 1`` through a pool of the API's size: the database's round trip ceiling."""
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        config["api_url"], min_size=config["pool"], max_size=config["pool"], open=False
    )
    async with pool:
        await pool.wait()

        async def select1(_: int) -> None:
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")

        t0 = time.process_time()
        stats, wall = await _measure(select1, concurrency, requests)
        return stats | {
            "rps": round(stats["n"] / wall, 1),
            "client_cpu_ms_per_request": round((time.process_time() - t0) * 1000 / stats["n"], 3),
        }


def client_main() -> None:
    """The load generator: a JSON config on stdin, one JSON object of results on stdout."""
    config = json.loads(sys.stdin.read())
    try:
        import uvloop

        result = uvloop.run(_client(config))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        result = asyncio.run(_client(config))
    print(json.dumps(result))
