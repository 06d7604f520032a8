"""The ingest benchmark's data and meters: the simulated sensors and their readings as
messages, the COPY ceiling, and CPU / memory of processes and database backends."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import psycopg

from core.payload import Reading, encode_telemetry
from core.topics import telemetry_topic

FLOORS = 10
BUILDING = "bench"
# Kinds of the ten sensors of each group, roughly the reference building's mix.
KINDS = ["power", "power", "energy", "load", "load", "load", "temperature", "temperature",
         "temperature", "fire"]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Plan:
    readings: int
    batch: int
    sensors: int
    base: datetime
    prefix: str

    @property
    def per_floor(self) -> int:
        return self.sensors // FLOORS

    def sensor(self, floor: int, index: int) -> tuple[str, str]:
        kind = KINDS[index % len(KINDS)]
        return f"bench-f{floor:02d}-{kind}-{index:04d}", kind

    def floor_rows(self, floor: int) -> Iterator[tuple[str, datetime, float]]:
        """The readings of one floor in time order: every sensor once per second."""
        count = self.readings // FLOORS + (1 if floor < self.readings % FLOORS else 0)
        for j in range(count):
            step, index = divmod(j, self.per_floor)
            sensor, kind = self.sensor(floor, index)
            yield sensor, self.base + timedelta(seconds=step), _value(kind, step, index)

    def topic(self, floor: int) -> str:
        return telemetry_topic(BUILDING, floor, self.prefix)

    def messages(self, floors: list[int]) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        streams = {f: self.floor_rows(f) for f in floors}
        seq = 0
        while streams:
            for floor in list(streams):
                chunk = [
                    Reading(*r) for _, r in zip(range(self.batch), streams[floor], strict=False)
                ]
                if not chunk:
                    del streams[floor]
                    continue
                out.append((self.topic(floor), encode_telemetry(f"bench-gw-{floor}", seq, chunk)))
                seq += 1
        return out


def _value(kind: str, step: int, index: int) -> float:
    if kind == "energy":
        return 10_000.0 + index + step * 0.05
    if kind == "fire":
        return 0.0
    if kind == "temperature":
        return 21.0 + (step % 50) / 10
    return 100.0 + (step + index) % 300


def register(url: str, plan: Plan) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO buildings (id, name, timezone) VALUES (%s, 'bench', 'UTC')",
                     (BUILDING,))  # fmt: skip
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO floors (building_id, number, area_m2, height_m, load_limit_kg_m2,"
                " power_capacity_kw) VALUES (%s, %s, 2000, 3.9, 500, 800)",
                [(BUILDING, f) for f in range(FLOORS)],
            )
            rows = []
            for floor in range(FLOORS):
                for index in range(plan.per_floor):
                    sensor, kind = plan.sensor(floor, index)
                    rows.append((sensor, BUILDING, kind, floor))
            cur.executemany(
                "INSERT INTO sensors (id, building_id, kind, unit, floor, interval_s)"
                " VALUES (%s, %s, %s, '-', %s, 1)",
                rows,
            )


def copy_ceiling(url: str, plan: Plan) -> tuple[float, dict[str, float | None]]:
    """Rows/s of one process binary-COPYing the same rows into the same keyed table, and
    the CPU microseconds per row of that process and of its database backend."""
    spent = client = 0.0
    with psycopg.connect(url, autocommit=True) as conn:
        backend_before = cpu_seconds(conn.info.backend_pid)
        conn.execute("SELECT ensure_readings_partition(%s)", (plan.base,))
        conn.execute("SELECT ensure_readings_partition(now())")
        for floor in range(FLOORS):
            rows = list(plan.floor_rows(floor))
            for start in range(0, len(rows), 100_000):
                chunk = rows[start : start + 100_000]
                began, cpu_began = time.perf_counter(), time.process_time()
                with (
                    conn.transaction(),
                    conn.cursor().copy(
                        "COPY readings (sensor_id, ts, value) FROM STDIN (FORMAT BINARY)"
                    ) as copy,
                ):
                    copy.set_types(["text", "timestamptz", "float8"])
                    for row in chunk:
                        copy.write_row(row)
                spent += time.perf_counter() - began
                client += time.process_time() - cpu_began
        backend_after = cpu_seconds(conn.info.backend_pid)
    backend = (
        None if backend_before is None or backend_after is None else backend_after - backend_before
    )
    cpu = {
        "client": per_row_us(client, plan.readings),
        "db": per_row_us(backend, plan.readings),
    }
    return plan.readings / spent, cpu


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process of this machine (None when it is not visible here)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backend_cpu(url: str, pattern: str) -> float | None:
    """CPU of the database backends whose application_name matches (a local database)."""
    with psycopg.connect(url, autocommit=True) as conn:
        pids = [
            int(r[0])
            for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s", (pattern,)
            ).fetchall()
        ]
    spent = [cpu_seconds(pid) for pid in pids]
    return None if not spent or None in spent else sum(s for s in spent if s is not None)


def per_row_us(seconds: float | None, rows: int) -> float | None:
    return None if seconds is None else round(seconds * 1e6 / rows, 2)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")
