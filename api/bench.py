"""``upstairs bench api [--days D] [--json]``: latency of the main API reads at concurrency.

Seeds D days of 1-minute history for every sensor of the reference building into a schema of
its own (binary COPY of readings and 1-minute rollups; hourly rollups aggregated in SQL),
starts the API in a child process on a free port, and measures p50/p99 at 20 concurrent
clients of: the live floors, a tenant's power for 30 days by day, a floor's load for 24 h by
minute, and a tenant's bill for the current month. The same run measures the machine's
ceiling: ``/healthz`` at the same concurrency and a ``SELECT 1`` through a pool of the API's
size. With ``--json`` the last line is one JSON object keyed by endpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg_pool import AsyncConnectionPool

from api.settings import ApiSettings, api_role_conninfo
from api.tokens import create_token
from core.building import Building, SensorKind
from core.building_file import load_building
from core.building_store import apply_building
from core.db import migrate, with_search_path

REF_TOWER = Path(__file__).resolve().parent.parent / "deploy" / "buildings" / "ref-tower.yaml"
TENANT = "northbridge"


def _value(kind: SensorKind, i: int, minute: int, phase: int) -> float:
    hour = (minute // 60 + 8) % 24
    day = 0.6 + 0.4 * math.sin(math.pi * max(0, hour - 6) / 16) if 6 <= hour < 22 else 0.3
    if kind is SensorKind.LOAD:
        return 250.0 + 30 * math.sin((minute + phase) / 300)
    if kind is SensorKind.POWER:
        return 300.0 * day + (phase % 50)
    if kind is SensorKind.TEMPERATURE:
        return 24.0 + 3 * day
    return 0.0


def _rows(building: Building, start: datetime, minutes: int) -> Iterator[tuple[object, ...]]:
    """(sensor, ts, value, energy_kwh) per sensor and minute; energy registers integrate kW."""
    for i, sensor in enumerate(building.sensors):
        register = 1000.0 * (i + 1)
        for m in range(minutes):
            ts = start + timedelta(minutes=m)
            if sensor.kind is SensorKind.ENERGY:
                kwh = _value(SensorKind.POWER, i, m, i) / 60
                register += kwh
                yield sensor.id, ts, register, (kwh if m else 0.0)
            else:
                yield sensor.id, ts, _value(sensor.kind, i, m, i * 37), None


def seed(url: str, building: Building, days: int, now: datetime) -> int:
    start = (now - timedelta(days=days)).replace(second=0, microsecond=0)
    minutes = int((now - start).total_seconds() // 60)
    with psycopg.connect(url) as conn:
        month = datetime(start.year, start.month, 1, tzinfo=UTC)
        while month <= now:
            conn.execute("SELECT ensure_readings_partition(%s)", (month,))
            month = datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=UTC)
        conn.commit()
        n = 0
        with conn.cursor() as cur:
            with cur.copy("COPY readings (sensor_id, ts, value) FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(["text", "timestamptz", "float8"])
                for sensor, ts, value, _ in _rows(building, start, minutes):
                    cp.write_row((sensor, ts, value))
                    n += 1
            with cur.copy(
                "COPY rollups_1m (sensor_id, bucket, count, sum, min, max, last_ts, last_value,"
                " energy_kwh) FROM STDIN (FORMAT BINARY)"
            ) as cp:
                cp.set_types(["text", "timestamptz", "int8", "float8", "float8", "float8",
                              "timestamptz", "float8", "float8"])  # fmt: skip
                for sensor, ts, value, kwh in _rows(building, start, minutes):
                    cp.write_row((sensor, ts, 1, value, value, value, ts, value, kwh))
        conn.commit()
        conn.execute(
            "INSERT INTO rollups_1h (sensor_id, bucket, count, sum, min, max, last_ts,"
            " last_value, energy_kwh)"
            " SELECT sensor_id, date_trunc('hour', bucket, 'UTC'), sum(count), sum(sum),"
            " min(min), max(max), max(last_ts), (array_agg(last_value ORDER BY last_ts DESC))[1],"
            " sum(energy_kwh) FROM rollups_1m GROUP BY 1, 2"
        )
        conn.execute(
            "INSERT INTO sensor_latest (sensor_id, ts, value) SELECT DISTINCT ON (sensor_id)"
            " sensor_id, last_ts, last_value FROM rollups_1m ORDER BY sensor_id, bucket DESC"
        )
        conn.commit()
        conn.execute("ANALYZE")
    return n


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2)

    return {"p50_ms": pct(0.50), "p99_ms": pct(0.99), "n": len(ordered)}


async def _measure(
    call: Callable[[], Awaitable[None]], concurrency: int, requests: int
) -> dict[str, float]:
    samples: list[float] = []

    async def worker(count: int) -> None:
        for _ in range(count):
            t0 = time.perf_counter()
            await call()
            samples.append(time.perf_counter() - t0)

    for _ in range(concurrency):  # warm up
        await call()
    per = max(1, requests // concurrency)
    await asyncio.gather(*(worker(per) for _ in range(concurrency)))
    return _percentiles(samples)


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


async def _run(
    base: str, api_url: str, tokens: dict[str, str], args: argparse.Namespace, month: str
) -> dict[str, object]:
    now = datetime.now(UTC)
    iso = _iso
    endpoints = {
        "floors_live": ("operator", "/api/v1/buildings/ref-tower/floors"),
        "tenant_power_30d_by_day": (
            "tenant",
            f"/api/v1/tenants/{TENANT}/power?step=1d&from={iso(now - timedelta(days=30))}"
            f"&to={iso(now)}",
        ),
        "floor_load_24h_by_minute": (
            "operator",
            f"/api/v1/buildings/ref-tower/floors/3/history?metric=load&step=1m"
            f"&from={iso(now - timedelta(hours=24))}&to={iso(now)}",
        ),
        "tenant_bill_month": ("tenant", f"/api/v1/tenants/{TENANT}/bill?month={month}"),
    }
    out: dict[str, object] = {}
    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        for name, (role, path) in endpoints.items():
            headers = {"Authorization": f"Bearer {tokens[role]}"}
            t0 = time.perf_counter()
            first = await client.get(path, headers=headers)
            first.raise_for_status()
            cold = time.perf_counter() - t0

            async def call(path: str = path, headers: dict[str, str] = headers) -> None:
                r = await client.get(path, headers=headers)
                r.raise_for_status()

            out[name] = await _measure(call, args.concurrency, args.requests) | {
                "first_ms": round(cold * 1000, 2)
            }

        async def health() -> None:
            (await client.get("/healthz")).raise_for_status()

        out["ceiling_healthz"] = await _measure(health, args.concurrency, args.requests)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        api_url, min_size=8, max_size=8, open=False
    )
    async with pool:

        async def select1() -> None:
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")

        out["ceiling_select1"] = await _measure(select1, args.concurrency, args.requests)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="upstairs bench api", description=__doc__)
    parser.add_argument("--days", type=int, default=30, help="days of 1-minute history (30)")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--requests", type=int, default=1000, help="per endpoint")
    parser.add_argument("--building", type=Path, default=REF_TOWER)
    parser.add_argument("--keep", action="store_true", help="keep the bench schema")
    args = parser.parse_args(argv)
    settings = ApiSettings()
    if not settings.database_url:
        print("error: set UPSTAIRS_DATABASE_URL (the bench writes a schema of its own)")
        return 2
    base_url = settings.database_url
    schema = f"bench_{secrets.token_hex(4)}"
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")  # a generated, checked identifier
    url = with_search_path(base_url, schema)
    proc = None
    try:
        migrate(url)
        building = load_building(args.building)
        with psycopg.connect(url) as conn:
            apply_building(conn, building)
            tokens = {
                "operator": create_token(conn, "operator", "bench")[1],
                "tenant": create_token(conn, "tenant", "bench", building.id, TENANT)[1],
            }
        t0 = time.perf_counter()
        rows = seed(url, building, args.days, datetime.now(UTC))
        seeded = time.perf_counter() - t0
        print(f"seeded {rows:,} readings ({args.days} days) in {seeded:.0f} s", file=sys.stderr)
        port = _free_port()
        env = {**os.environ, "UPSTAIRS_DATABASE_URL": url, "UPSTAIRS_MQTT_URL": "",
               "UPSTAIRS_API_POOL_MAX": "8"}  # fmt: skip
        proc = subprocess.Popen(
            [sys.executable, "-c", "from api.main import main; main()", "--port", str(port)],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                print("error: the API did not start", file=sys.stderr)
                return 1
            time.sleep(0.2)
        month = datetime.now(building.tz).strftime("%Y-%m")
        result = asyncio.run(_run(base, api_role_conninfo(url), tokens, args, month))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        if not args.keep:
            with psycopg.connect(base_url, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")
    result = {"days": args.days, "concurrency": args.concurrency, **result}
    for name, value in result.items():
        if isinstance(value, dict):
            print(f"{name:28} p50 {value['p50_ms']:8.2f} ms   p99 {value['p99_ms']:8.2f} ms")
    if args.json:
        print(json.dumps(result))
    return 0
