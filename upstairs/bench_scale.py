"""``upstairs bench scale``: many simulated buildings on one machine, end to end.

Copies the reference building N times (ids ``b01``..), runs one MQTT simulator per building,
several ingesters in one shared subscription group, the alert engine and the API as real
processes, and reports the readings stored per second against the rate the simulators
offer (the ceiling is what the simulators take in the measured window, :func:`due_in`:
ratio 1.0 means the platform keeps up; a reading counts for the window its time is in, if
stored within ``GRACE_S`` after it), plus CPU and memory per service. Runs in a schema of its
own, dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import psutil
import psycopg

from core.building import Building
from core.building_file import load_building
from core.building_store import apply_building
from core.db import migrate, with_search_path
from upstairs.services import endpoints
from upstairs.supervisor import Supervisor

REF = Path(__file__).resolve().parent.parent / "deploy" / "buildings" / "ref-tower.yaml"


def copy_building(text: str, index: int, out_dir: Path) -> Path:
    """The reference building as ``bNN``: new building id and sensor ids."""
    bid = f"b{index:02d}"
    text = re.sub(r"(?m)^id: ref-tower$", f"id: {bid}", text)
    text = re.sub(r"\bref-f(\d\d)-", rf"{bid}-f\1-", text)
    path = out_dir / f"{bid}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def offered_per_s(building: Building) -> float:
    return sum(1.0 / s.interval_s for s in building.sensors)


def due_in(buildings: list[Building], start: datetime, end: datetime) -> int:
    """The readings the simulators take in [start, end): a sensor samples at the multiples of
    its interval (simulators.sampling), so every sensor of one interval samples at once and
    a short window holds a burst or a lull; this is the exact ceiling of the window."""
    a, b = round(start.timestamp() * 1000), round(end.timestamp() * 1000)
    n = 0
    for building in buildings:
        for sensor in building.sensors:
            iv = max(1, round(sensor.interval_s * 1000))
            n += -(-b // iv) - -(-a // iv)
    return n


def _count(conninfo: str, start: datetime, end: datetime) -> int:
    """Readings stored with a time in [start, end)."""
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(
            "SELECT count(*) FROM readings WHERE ts >= %s AND ts < %s", (start, end)
        ).fetchone()
    return int(row[0]) if row else 0


#: How long after the window its readings may still arrive and count (the ingester's batch
#: and flush, the simulators' publish interval): stored later than that is not keeping up.
GRACE_S = 5.0


def _service_of(child_name: str) -> str:
    return child_name.split("-", maxsplit=1)[0]


def run(buildings: int, duration_s: float, warmup_s: float, ingesters: int) -> dict[str, object]:
    schema = f"bench_scale_{secrets.token_hex(4)}"
    data_dir = Path(os.environ.get("UPSTAIRS_DATA_DIR", ".upstairs"))
    with endpoints(data_dir) as ep, tempfile.TemporaryDirectory() as tmp:
        with psycopg.connect(ep.database_url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        conninfo = with_search_path(ep.database_url, schema)
        try:
            migrate(conninfo)
            text = REF.read_text(encoding="utf-8")
            files = [copy_building(text, i, Path(tmp)) for i in range(1, buildings + 1)]
            models = [load_building(f) for f in files]
            with psycopg.connect(conninfo) as conn:
                for model in models:
                    apply_building(conn, model)
            offered = sum(offered_per_s(m) for m in models)
            env = {
                **os.environ,
                "UPSTAIRS_DATABASE_URL": conninfo,
                "UPSTAIRS_MQTT_URL": ep.mqtt_url,
                "UPSTAIRS_TOPIC_PREFIX": f"{schema}/",
                "UPSTAIRS_INGEST_SHARED_GROUP": "ingest",
                "UPSTAIRS_INGEST_METRICS_PORT": "0",
            }
            supervisor = Supervisor(env)
            for n in range(1, ingesters + 1):  # each ingester keeps a session of its own
                client = {"UPSTAIRS_INGEST_CLIENT_ID": f"{schema}-ingest-{n}"}
                supervisor.add(f"ingest-{n}", ["ingest"], env={**env, **client})
            supervisor.add("alerts", ["alerts"])
            supervisor.add("api", ["api", "--port", "0"])
            for f in files:
                supervisor.add(f"simulator-{f.stem}", ["simulate", "--building", str(f)])
            supervisor.start()
            time.sleep(warmup_s)
            procs = {
                c.name: psutil.Process(c.process.pid) for c in supervisor.children if c.process
            }
            cpu0 = {n: sum(p.cpu_times()[:2]) for n, p in procs.items()}
            w0, t0 = datetime.now(UTC), time.monotonic()
            time.sleep(duration_s)
            w1, t1 = datetime.now(UTC), time.monotonic()
            cpu: dict[str, float] = defaultdict(float)
            rss: dict[str, float] = defaultdict(float)
            for name, proc in procs.items():
                service = _service_of(name)
                cpu[service] += (sum(proc.cpu_times()[:2]) - cpu0[name]) / (t1 - t0) * 100
                rss[service] += proc.memory_info().rss / 2**20
            # the readings taken in the window (simulated time is wall time): a backlog from
            # the warm-up drained inside the window does not count, a lag beyond the grace does
            time.sleep(GRACE_S)
            count, due = _count(conninfo, w0, w1), due_in(models, w0, w1)
            stored = count / (w1 - w0).total_seconds()
            supervisor.stop()
        finally:
            with psycopg.connect(ep.database_url, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")
    return {
        "buildings": buildings,
        "sensors": sum(len(m.sensors) for m in models),
        "offered_readings_per_s": round(offered, 1),
        "readings_per_s": round(stored, 1),
        "readings_due_in_window": due,
        "readings_stored_in_window": count,
        "ratio": round(count / due, 3) if due else None,
        "cpu_pct": {k: round(v, 1) for k, v in sorted(cpu.items())},
        "rss_mb": {k: round(v, 1) for k, v in sorted(rss.items())},
        "cpu_count": psutil.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="upstairs bench scale", description=__doc__)
    parser.add_argument("--buildings", type=int, default=20)
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=15.0)
    parser.add_argument("--ingesters", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = parser.parse_args(argv)
    result = run(args.buildings, args.duration, args.warmup, args.ingesters)
    print(
        f"{result['buildings']} buildings, {result['sensors']} sensors: stored "
        f"{result['readings_per_s']} readings/s of {result['offered_readings_per_s']} offered "
        f"(ratio {result['ratio']})"
    )
    cpu_pct: dict[str, float] = result["cpu_pct"]  # type: ignore[assignment]
    rss_mb: dict[str, float] = result["rss_mb"]  # type: ignore[assignment]
    for service, cpu in cpu_pct.items():
        print(f"  {service:10s} CPU {cpu:6.1f} %  RSS {rss_mb[service]:8.1f} MB")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
