"""``upstairs bench api [--days D] [--json]``: latency of the main API reads at concurrency.

Seeds D days of 1-minute history for every sensor of the reference building into a schema of
its own (:mod:`api.bench_seed`), and measures p50/p99 at 20 concurrent clients of: the live
floors, a tenant's power for 30 days by day, a floor's load for 24 h by minute, and a tenant's
bill for a month (:func:`bill_month`), in two phases, each against an API child process of its own
(:mod:`api.bench_client`):

* ``cached``: the same question again and again, the API with its default settings: what a
  wall of dashboards polling one screen costs (mostly answer-cache hits);
* ``distinct``: every request asks a question of its own (another floor or tenant, a window
  shifted by seconds no other request uses), the API with its answer cache off
  and its bill cache off (``UPSTAIRS_API_CACHE_S=0``, ``UPSTAIRS_API_BILL_CACHE=false``):
  the cost of computing every answer from the database.

The same run measures the machine's ceiling: ``/healthz`` at the same concurrency and a
``SELECT 1`` through a pool of the API's size. With ``--json`` the last line is one JSON
object keyed by endpoint: the distinct figures, the cached ones under ``cached``.

``--raw-days R`` seeds readings and 1-minute rollups for the last R days only and hourly
rollups for all D days. The measured endpoints read nothing else for the older days (the
tenant's power for 30 days by day reads daily and hourly rollups, the floor's 24 h by minute
the 1-minute rollups of the last 24 h, the bill the tenant's days of its month (made from
the quarter-hour energy, made from 1-minute rollups), the live floors ``sensor_latest``), so
``--days 365 --raw-days 35`` is an honest 365-day run for them.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from api.bench_client import ENDPOINTS
from api.bench_seed import raw_days_of, seed, seed_record
from api.settings import ApiSettings, api_role_conninfo
from api.tokens import create_token
from core.building import Building
from core.building_file import load_building
from core.building_store import apply_building
from core.db import migrate, with_search_path

REF_TOWER = Path(__file__).resolve().parent.parent / "deploy" / "buildings" / "ref-tower.yaml"
TENANT = "northbridge"
_SCHEMA_PREFIX = "bench_"
PHASES = ("cached", "distinct")
DEFAULT_DAYS = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_api(
    url: str, port: int, workers: int, cache: bool, log: IO[bytes]
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "UPSTAIRS_DATABASE_URL": url, "UPSTAIRS_MQTT_URL": "",
           "UPSTAIRS_API_POOL_MAX": "8", "UPSTAIRS_API_WORKERS": str(workers)}  # fmt: skip
    env.pop("UPSTAIRS_API_DATABASE_URL", None)
    if not cache:
        env |= {"UPSTAIRS_API_CACHE_S": "0", "UPSTAIRS_API_BILL_CACHE": "false"}
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


def _tokens(url: str, building: Building) -> dict[str, str]:
    """A token for the operator and one for every tenant of ``building``, keyed by tenant id."""
    with psycopg.connect(url) as conn:
        out = {"operator": create_token(conn, "operator", "bench")[1]}
        for t in building.tenants:
            out[t.id] = create_token(conn, "tenant", "bench", building.id, t.id)[1]
    return out


def _phase(
    phase: str, args: argparse.Namespace, api_url: str, config: dict[str, Any], log: IO[bytes]
) -> dict[str, Any] | None:
    """Start an API for ``phase``, run the client against it, stop the API."""
    port = _free_port()
    proc = _start_api(api_url, port, args.workers, phase == "cached", log)
    try:
        if not _wait_ready(port, proc, args.workers):
            print("error: the API did not start", file=sys.stderr)
            return None
        config = config | {"port": port, "api_pid": proc.pid, "phase": phase,
                           "now": datetime.now(UTC).isoformat()}  # fmt: skip
        client = subprocess.run(
            [sys.executable, "-c", "from api.bench_client import client_main; client_main()"],
            input=json.dumps(config).encode(),
            capture_output=True,
            check=False,
        )
    finally:
        proc.terminate()
        proc.wait(10)
    if client.returncode != 0:
        print(client.stderr.decode()[-3000:], file=sys.stderr)
        log.seek(0)
        print("API log (end):", log.read()[-3000:].decode(errors="replace"), file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(client.stdout.decode().strip().splitlines()[-1])
    return result


def bill_month(tz: ZoneInfo, days: int, now: datetime) -> str:
    """The month whose bill is measured: of the months of the last ``days`` local days (those
    with 1-minute history), the one with the most of them, the later of two equal. A complete
    month whenever the history covers one, and never only a few days: the current month's
    bill on the 3rd would read three days of it (bills read the month's quarter hours)."""
    today = now.astimezone(tz).date()
    counts = Counter(
        (d.year, d.month) for d in (today - timedelta(days=i) for i in range(max(days, 1)))
    )
    year, month = max(counts, key=lambda ym: (counts[ym], ym))
    return date(year, month, 1).strftime("%Y-%m")


def _raw_days(args: argparse.Namespace) -> int:
    """Days of 1-minute history seeded (``--raw-days``, at most ``--days``)."""
    return raw_days_of(args.days, args.raw_days)


def _seed(url: str, building: Building, args: argparse.Namespace, now: datetime) -> dict[str, Any]:
    migrate(url)
    with psycopg.connect(url) as conn:
        apply_building(conn, building)
    t0 = time.perf_counter()
    rows = seed(url, building, args.days, now, args.raw_days)
    took = time.perf_counter() - t0
    print(
        f"seeded {rows:,} readings and 1-minute rollups ({_raw_days(args)} days)"
        f" and hourly rollups ({args.days} days) in {took:.0f} s",
        file=sys.stderr,
    )
    return {"readings": rows, "seconds": round(took)}


def _reused(url: str, args: argparse.Namespace) -> tuple[datetime, str | None]:
    """For ``--reuse``: set ``args.days`` and ``args.raw_days`` to what the schema holds, and
    return when it was seeded (the month billed is counted back from then, so a reuse bills
    the month the fresh run billed). An error message instead when ``--days`` or
    ``--raw-days`` contradict the schema. A schema kept before this record was written has
    none: the arguments are taken as given (default 30 days), counted back from now."""
    row = seed_record(url)
    if row is None:
        args.days = DEFAULT_DAYS if args.days is None else args.days
        print(
            f"note: {args.reuse} does not record what was seeded; taking --days {args.days}"
            f" --raw-days {_raw_days(args)} as given",
            file=sys.stderr,
        )
        return datetime.now(UTC), None
    days, raw_days, seeded_at = row
    for flag, given, held in (("--days", args.days, days), ("--raw-days", args.raw_days, raw_days)):
        if given is not None and given != held:
            return seeded_at, (
                f"error: --reuse {args.reuse} holds {days} days ({raw_days} with 1-minute"
                f" history), seeded {seeded_at:%Y-%m-%d %H:%M %Z}; {flag} {given} contradicts"
                f" it (leave {flag} out)"
            )
    args.days, args.raw_days = days, raw_days
    if datetime.now(UTC) - seeded_at > timedelta(days=1):
        print(
            f"note: {args.reuse} was seeded {seeded_at:%Y-%m-%d %H:%M %Z}; the windows"
            " measured end now, past its last day of history",
            file=sys.stderr,
        )
    return seeded_at, None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="upstairs bench api", description=__doc__)
    parser.add_argument(
        "--days",
        type=int,
        help=f"days of history ({DEFAULT_DAYS}; with --reuse, what the schema holds)",
    )
    parser.add_argument(
        "--raw-days",
        type=int,
        help="days with readings and 1-minute rollups (default: all); older days get hourly"
        " rollups only; at least 35, so the month billed has at least 17 days of minutes",
    )
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--requests", type=int, default=4000, help="per endpoint and phase")
    parser.add_argument("--workers", type=int, default=1, help="API worker processes (1)")
    parser.add_argument(
        "--phase", choices=[*PHASES, "both"], default="both", help="what to measure (both)"
    )
    parser.add_argument("--building", type=Path, default=REF_TOWER)
    parser.add_argument("--keep", action="store_true", help="keep the bench schema")
    parser.add_argument(
        "--reuse",
        metavar="SCHEMA",
        help="measure again on a schema kept by --keep (no seeding; its --days and --raw-days"
        " are read from it; reuse it on the day it was seeded)",
    )
    return parser


def _schema_exists(url: str, schema: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    return row is not None


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.reuse and args.days is None:
        args.days = DEFAULT_DAYS
    # with --reuse and no --days, the schema's record settles --raw-days (_reused)
    if args.days is not None and args.raw_days is not None and args.raw_days < min(35, args.days):
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
        if not _schema_exists(base_url, schema):
            info = conninfo_to_dict(base_url)
            where = f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname')}"
            print(
                f"error: --reuse {schema}: no such schema in {where}; give a schema kept by"
                " --keep in the same database (UPSTAIRS_DATABASE_URL)",
                file=sys.stderr,
            )
            return 2
    else:
        schema, keep = f"{_SCHEMA_PREFIX}{secrets.token_hex(4)}", args.keep
        with psycopg.connect(base_url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")  # a generated, checked identifier
    print(f"schema {schema}", file=sys.stderr)
    url = with_search_path(base_url, schema)
    application_name = f"upstairs-bench-{schema}"
    api_url = make_conninfo(url, application_name=application_name)
    phases = PHASES if args.phase == "both" else (args.phase,)
    seeded: dict[str, Any] = {}
    results: dict[str, dict[str, Any]] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryFile() as log:
        try:
            building = load_building(args.building)
            seeded_at = datetime.now(UTC)
            if args.reuse:
                migrate(url)  # a schema kept by an older version catches up
                seeded_at, error = _reused(url, args)
                if error:
                    print(error, file=sys.stderr)
                    return 2
            else:
                seeded = _seed(url, building, args, seeded_at)
            seeded["schema_size"] = _schema_size(url, schema)
            seeded["bill_month"] = bill_month(building.tz, _raw_days(args), seeded_at)
            config = {
                "concurrency": args.concurrency,
                "requests": args.requests,
                "tokens": _tokens(url, building),
                "building": building.id,
                "tenant": TENANT,
                "tenants": sorted(t.id for t in building.tenants),
                "floors": sorted(f.number for f in building.floors),
                "owner_url": base_url,
                "api_url": api_role_conninfo(api_url),
                "application_name": application_name,
                "pool": 8,
                "month": seeded["bill_month"],
            }
            load_before = os.getloadavg()
            for i, phase in enumerate(phases):
                found = _phase(phase, args, api_url, config | {"ceiling": i == 0}, log)
                if found is None:
                    return 1
                results[phase] = found
        finally:
            if not keep:
                with psycopg.connect(base_url, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA {schema} CASCADE")
    result = _combine(args, results, seeded, load_before) | {"database_via": via(base_url)}
    _print(result, phases)
    print(
        f"load average (1 min) before/after: {result['loadavg_1m']} on {os.cpu_count()} CPUs;"
        f" database over {result['database_via']}; schema {schema}{' kept' if keep else ' dropped'}"
    )
    if args.json:
        print(json.dumps(result))
    return 0


def via(url: str) -> str:
    """How the API reaches the database: ``tcp`` or ``unix socket`` (a host that is a
    directory, or none). Loopback TCP costs about 0.3 ms of CPU per request on each side
    more than the socket (docs/api.md, "Results")."""
    host = conninfo_to_dict(url).get("host") or ""
    return "tcp" if host and not str(host).startswith("/") else "unix socket"


def _schema_size(url: str, schema: str) -> str | None:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))::bigint)"
            "  FROM pg_class c WHERE c.relnamespace = %s::regnamespace AND c.relkind = 'r'",
            (schema,),
        ).fetchone()
    return row[0] if row else None


def _combine(
    args: argparse.Namespace,
    results: dict[str, dict[str, Any]],
    seeded: dict[str, Any],
    load_before: tuple[float, float, float],
) -> dict[str, Any]:
    """One object keyed by endpoint: the distinct figures, the cached ones under ``cached``."""
    out: dict[str, Any] = {
        "days": args.days,
        "raw_days": _raw_days(args),
        "concurrency": args.concurrency,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "loadavg_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "seeded": seeded,
    }
    cached = results.get("cached", {})
    distinct = results.get("distinct", {})
    for name in ENDPOINTS:
        entry = dict(distinct.get(name) or cached[name])
        if name in cached and name in distinct:
            entry["cached"] = cached[name]
        out[name] = entry
    for phase in (cached, distinct):
        for key, value in phase.items():
            if key not in ENDPOINTS:
                out.setdefault(key, value)
    return out


def _line(label: str, value: dict[str, Any]) -> str:
    cpu = value.get("cpu_ms_per_request")
    spent = (
        f"  cpu/req ms: client {cpu['client']:.2f} api {cpu['api']:.2f} db {cpu['db']:.2f}"
        if cpu
        else ""
    )
    return (
        f"{label:36} p50 {value['p50_ms']:7.2f} ms  p99 {value['p99_ms']:7.2f} ms"
        f"  {value['rps']:7.1f}/s{spent}"
    )


def _print(result: dict[str, Any], phases: tuple[str, ...]) -> None:
    for name in ENDPOINTS:
        entry = result[name]
        if "cached" in entry:
            print(_line(f"{name} (cached)", entry["cached"]))
        print(_line(f"{name} ({'distinct' if 'distinct' in phases else 'cached'})", entry))
    for name in ("ceiling_healthz", "ceiling_select1"):
        if name in result:
            print(_line(name, result[name]))
