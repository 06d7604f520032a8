"""``upstairs bench api [--days D] [--json]``: latency of the main API reads at concurrency.

Seeds D days of 1-minute history for every sensor of the reference building into a schema of
its own, starts the API in a child process on a free port, and measures p50/p99 at 20
concurrent clients of: the live floors, a tenant's power for 30 days by day, a floor's load
for 24 h by minute, and a tenant's bill for the current month. The same run measures the
machine's ceiling: ``/healthz`` at the same concurrency and a ``SELECT 1`` through a pool of
the API's size. With ``--json`` the last line is one JSON object keyed by endpoint.

What is seeded (``--raw-days R``, default all ``D`` days): the last R days get readings and
1-minute rollups by binary COPY, and hourly rollups aggregated from them in SQL; the older
D - R days get hourly rollups only (one row per sensor and hour, same value model). The
measured endpoints read nothing else for those days: the tenant's power for 30 days by day
reads hourly rollups, the floor's 24 h by minute and the month's bill read 1-minute rollups
of the last 24 h / the current month, the live floors read ``sensor_latest``. So
``--days 365 --raw-days 35`` is an honest 365-day run for these four endpoints at a fraction
of the cost (about 8.6M instead of 84M readings and 1-minute rollups).

The load comes from a separate process (``client_main``): a raw asyncio HTTP/1.1 client with
one keep-alive connection per simulated client, so the measuring code costs the machine as
little as possible. It reports, per endpoint, requests per second and the CPU time per
request of itself, of the API process(es) and of the API's database backends, plus the load
average of the machine: the numbers to read the latencies against.
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
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import psutil
import psycopg
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from api.settings import ApiSettings, api_role_conninfo
from api.tokens import create_token
from core.building import Building, SensorKind
from core.building_file import load_building
from core.building_store import apply_building
from core.db import migrate, with_search_path

REF_TOWER = Path(__file__).resolve().parent.parent / "deploy" / "buildings" / "ref-tower.yaml"
TENANT = "northbridge"
_SCHEMA_PREFIX = "bench_"


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


def _hour_rows(building: Building, start: datetime, hours: int) -> Iterator[tuple[object, ...]]:
    """Hourly rollup rows for [start, start + hours): the value model at each hour's start."""
    for i, sensor in enumerate(building.sensors):
        register = 1000.0 * (i + 1)
        for h in range(hours):
            ts = start + timedelta(hours=h)
            last = ts + timedelta(minutes=59)
            if sensor.kind is SensorKind.ENERGY:
                kwh = _value(SensorKind.POWER, i, h * 60, i)
                register += kwh
                yield (sensor.id, ts, 60, 60 * register, register - kwh, register, last,
                       register, kwh)  # fmt: skip
            else:
                v = _value(sensor.kind, i, h * 60, i * 37)
                yield sensor.id, ts, 60, 60 * v, v - 1.0, v + 1.0, last, v, None


_ROLLUP_TYPES = ["text", "timestamptz", "int8", "float8", "float8", "float8", "timestamptz",
                 "float8", "float8"]  # fmt: skip
_ROLLUP_COLUMNS = "(sensor_id, bucket, count, sum, min, max, last_ts, last_value, energy_kwh)"


def seed(
    url: str, building: Building, days: int, now: datetime, raw_days: int | None = None
) -> int:
    """Seed ``days`` of history; readings and 1-minute rollups only for the last ``raw_days``."""
    raw_days = days if raw_days is None else min(raw_days, days)
    start = (now - timedelta(days=raw_days)).replace(second=0, microsecond=0)
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
            with cur.copy(f"COPY rollups_1m {_ROLLUP_COLUMNS} FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(_ROLLUP_TYPES)
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
        older = (now - timedelta(days=days)).replace(minute=0, second=0, microsecond=0)
        hours = int((start.replace(minute=0) - older).total_seconds() // 3600)
        if hours > 0:
            copy = f"COPY rollups_1h {_ROLLUP_COLUMNS} FROM STDIN (FORMAT BINARY)"
            with conn.cursor() as cur, cur.copy(copy) as cp:
                cp.set_types(_ROLLUP_TYPES)
                for row in _hour_rows(building, older, hours):
                    cp.write_row(row)
        conn.execute(
            "INSERT INTO sensor_latest (sensor_id, ts, value) SELECT DISTINCT ON (sensor_id)"
            " sensor_id, last_ts, last_value FROM rollups_1m ORDER BY sensor_id, bucket DESC"
        )
        conn.commit()
        conn.execute("ANALYZE")
    return n


# --- the load generator (a process of its own) -------------------------------------------


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2)

    return {"p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": pct(1.0), "n": len(ordered)}


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


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def endpoints(now: datetime, month: str) -> dict[str, tuple[str, str]]:
    """The measured reads: name -> (role, path)."""
    return {
        "floors_live": ("operator", "/api/v1/buildings/ref-tower/floors"),
        "tenant_power_30d_by_day": (
            "tenant",
            f"/api/v1/tenants/{TENANT}/power?step=1d&from={_iso(now - timedelta(days=30))}"
            f"&to={_iso(now)}",
        ),
        "floor_load_24h_by_minute": (
            "operator",
            f"/api/v1/buildings/ref-tower/floors/3/history?metric=load&step=1m"
            f"&from={_iso(now - timedelta(hours=24))}&to={_iso(now)}",
        ),
        "tenant_bill_month": ("tenant", f"/api/v1/tenants/{TENANT}/bill?month={month}"),
    }


async def _client(config: dict[str, Any]) -> dict[str, Any]:
    port: int = config["port"]
    concurrency: int = config["concurrency"]
    requests: int = config["requests"]
    tokens: dict[str, str] = config["tokens"]
    meter = _CpuMeter(config["api_pid"], config["owner_url"], config["application_name"])
    conns = [await _HttpConnection.open(port) for _ in range(concurrency)]
    out: dict[str, Any] = {}

    def request(path: str, token: str | None) -> bytes:
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}\r\n".encode()

    async def run(name: str, raw: bytes) -> None:
        t0 = time.perf_counter()
        size = await conns[0].get(raw)
        cold = time.perf_counter() - t0

        async def call(w: int) -> None:
            await conns[w].get(raw)

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
        for name, (role, path) in endpoints(
            datetime.fromisoformat(config["now"]), config["month"]
        ).items():
            await run(name, request(path, tokens[role]))
        await run("ceiling_healthz", request("/healthz", None))
    finally:
        for c in conns:
            reopened += c.reopened
            c.close()
    out["connections_reopened"] = reopened
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
        out["ceiling_select1"] = stats | {
            "rps": round(stats["n"] / wall, 1),
            "client_cpu_ms_per_request": round((time.process_time() - t0) * 1000 / stats["n"], 3),
        }
    return out


def client_main() -> None:
    """The load generator: a JSON config on stdin, one JSON object of results on stdout."""
    config = json.loads(sys.stdin.read())
    try:
        import uvloop

        result = uvloop.run(_client(config))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        result = asyncio.run(_client(config))
    print(json.dumps(result))


# --- the run ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_api(url: str, port: int, workers: int, log: IO[bytes]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "UPSTAIRS_DATABASE_URL": url, "UPSTAIRS_MQTT_URL": "",
           "UPSTAIRS_API_POOL_MAX": "8", "UPSTAIRS_API_WORKERS": str(workers)}  # fmt: skip
    env.pop("UPSTAIRS_API_DATABASE_URL", None)
    return subprocess.Popen(
        [sys.executable, "-c", "from api.main import main; main()", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=log,
    )


def _wait_ready(port: int, proc: subprocess.Popen[bytes], workers: int) -> bool:
    """Until ``/healthz`` answers, then a moment more for every worker to finish starting."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    time.sleep(2.0 if workers > 1 else 0.0)
                    return proc.poll() is None
        except OSError:
            pass
        time.sleep(0.2)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="upstairs bench api", description=__doc__)
    parser.add_argument("--days", type=int, default=30, help="days of history (30)")
    parser.add_argument(
        "--raw-days",
        type=int,
        help="days with readings and 1-minute rollups (default: all); older days get hourly"
        " rollups only; at least 35 so the current month's bill finds its minutes",
    )
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--requests", type=int, default=4000, help="per endpoint (4000)")
    parser.add_argument("--workers", type=int, default=1, help="API worker processes (1)")
    parser.add_argument("--building", type=Path, default=REF_TOWER)
    parser.add_argument("--keep", action="store_true", help="keep the bench schema")
    parser.add_argument(
        "--reuse", metavar="SCHEMA", help="measure again on a schema kept by --keep (no seeding)"
    )
    args = parser.parse_args(argv)
    if args.raw_days is not None and args.raw_days < min(35, args.days):
        parser.error("--raw-days must be at least 35 (or all --days)")
    settings = ApiSettings()
    if not settings.database_url:
        print("error: set UPSTAIRS_DATABASE_URL (the bench writes a schema of its own)")
        return 2
    base_url = settings.database_url
    if args.reuse:
        if not args.reuse.startswith(_SCHEMA_PREFIX):
            parser.error("--reuse takes a schema made by this bench (bench_...)")
        schema, keep = args.reuse, True
    else:
        schema, keep = f"{_SCHEMA_PREFIX}{secrets.token_hex(4)}", args.keep
        with psycopg.connect(base_url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")  # a generated, checked identifier
    url = with_search_path(base_url, schema)
    application_name = f"upstairs-bench-{schema}"
    api_url = make_conninfo(url, application_name=application_name)
    proc = None
    seeded: dict[str, Any] = {}
    with tempfile.TemporaryFile() as log:
        try:
            building = load_building(args.building)
            if not args.reuse:
                migrate(url)
                with psycopg.connect(url) as conn:
                    apply_building(conn, building)
                t0 = time.perf_counter()
                rows = seed(url, building, args.days, datetime.now(UTC), args.raw_days)
                took = time.perf_counter() - t0
                seeded = {"readings": rows, "seconds": round(took)}
                print(
                    f"schema {schema}: seeded {rows:,} readings and 1-minute rollups"
                    f" ({args.raw_days or args.days} days) and hourly rollups ({args.days} days)"
                    f" in {took:.0f} s",
                    file=sys.stderr,
                )
            with psycopg.connect(url) as conn:
                tokens = {
                    "operator": create_token(conn, "operator", "bench")[1],
                    "tenant": create_token(conn, "tenant", "bench", building.id, TENANT)[1],
                }
                row = conn.execute(
                    "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))::bigint)"
                    "  FROM pg_class c WHERE c.relnamespace = %s::regnamespace AND c.relkind = 'r'",
                    (schema,),
                ).fetchone()
                seeded["schema_size"] = row[0] if row else None
            port = _free_port()
            proc = _start_api(api_url, port, args.workers, log)
            if not _wait_ready(port, proc, args.workers):
                print("error: the API did not start", file=sys.stderr)
                return 1
            config = {
                "port": port,
                "concurrency": args.concurrency,
                "requests": args.requests,
                "tokens": tokens,
                "api_pid": proc.pid,
                "owner_url": base_url,
                "api_url": api_role_conninfo(api_url),
                "application_name": application_name,
                "pool": 8,
                "now": datetime.now(UTC).isoformat(),
                "month": datetime.now(building.tz).strftime("%Y-%m"),
            }
            load_before = os.getloadavg()
            client = subprocess.run(
                [sys.executable, "-c", "from api.bench import client_main; client_main()"],
                input=json.dumps(config).encode(),
                capture_output=True,
                check=False,
            )
            if client.returncode != 0:
                print(client.stderr.decode()[-3000:], file=sys.stderr)
                log.seek(0)
                print(
                    "API log (end):", log.read()[-3000:].decode(errors="replace"), file=sys.stderr
                )
                return 1
            result = json.loads(client.stdout.decode().strip().splitlines()[-1])
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(10)
            if not keep:
                with psycopg.connect(base_url, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA {schema} CASCADE")
    result = {
        "days": args.days,
        "raw_days": args.raw_days or args.days,
        "concurrency": args.concurrency,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "loadavg_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "seeded": seeded,
        **result,
    }
    for name, value in result.items():
        if isinstance(value, dict) and "p50_ms" in value:
            cpu = value.get("cpu_ms_per_request")
            spent = (
                f"   cpu/req ms: client {cpu['client']:.2f} api {cpu['api']:.2f} db {cpu['db']:.2f}"
                if cpu
                else ""
            )
            print(
                f"{name:26} p50 {value['p50_ms']:7.2f} ms  p99 {value['p99_ms']:7.2f} ms"
                f"  {value['rps']:7.1f}/s{spent}"
            )
    print(
        f"load average (1 min) before/after: {result['loadavg_1m']} on {os.cpu_count()} CPUs;"
        f" schema {schema}{' kept' if keep else ' dropped'}"
    )
    if args.json:
        print(json.dumps(result))
    return 0
