"""Isolation in time: a zone's sensors are a tenant's only for the local days it leases the zone.

Checked on every sensor-scoped table (readings, every rollup, latest values) as the API role,
at the edges of the lease windows: the zone of the reference tower that changed tenant on
2026-07-01, and a zone leased twice with a gap (a window that is a union of two ranges).
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import psycopg

from api.settings import api_role_conninfo
from tests.api_helpers import apply, ref_tower, store_readings
from tests.conftest import REF_TOWER

TZ = ZoneInfo("Asia/Shanghai")
TABLES = {
    "readings": "ts",
    "rollups_1m": "bucket",
    "rollups_1h": "bucket",
    "rollups_1d": "bucket",
    "energy_15m": "bucket",
}


def local(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=TZ).astimezone(UTC)


# (sensor, local time of a reading, tenants that may see it)
CASES = [
    ("ref-f09-load-z3", local(2025, 12, 31, 23, 59), set()),  # before any lease
    ("ref-f09-load-z3", local(2026, 1, 1, 0, 0), {"protoworks"}),
    ("ref-f09-load-z3", local(2026, 6, 30, 22, 30), {"protoworks"}),
    ("ref-f09-load-z3", local(2026, 7, 1, 0, 0), {"axisline"}),
    ("ref-f09-energy-z3", local(2026, 6, 30, 22, 59), {"protoworks"}),
    ("ref-f09-energy-z3", local(2026, 7, 1, 1, 0), {"axisline"}),
    ("ref-f09-load-z4", local(2026, 2, 15, 12, 0), {"protoworks"}),  # first of two leases
    ("ref-f09-load-z4", local(2026, 4, 1, 12, 0), set()),  # between them
    ("ref-f09-load-z4", local(2026, 5, 1, 0, 0), {"protoworks"}),  # second lease
    ("ref-f09-load-z4", local(2026, 6, 1, 0, 0), set()),  # its end is exclusive
    ("ref-f09-power-lumen-optics", local(2025, 6, 1, 0, 0), {"lumen-optics"}),  # own meter
]
TENANTS = ["protoworks", "axisline", "lumen-optics", "voltcab"]


def _visible(db_url: str, tenant: str) -> dict[str, set[tuple[str, datetime]]]:
    out: dict[str, set[tuple[str, datetime]]] = {}
    with psycopg.connect(api_role_conninfo(db_url)) as conn:
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", (f"ref-tower/{tenant}",))
        for table, column in {**TABLES, "sensor_latest": "ts"}.items():
            rows = conn.execute(f"SELECT sensor_id, {column} FROM {table}").fetchall()
            out[table] = {(s, t) for s, t in rows}
    return out


def test_zone_sensors_are_visible_only_within_the_lease_windows(db_url: str) -> None:
    apply(db_url, ref_tower(REF_TOWER))
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO leases (building_id, tenant_id, zone_id, valid_from, valid_to) VALUES"
            " ('ref-tower', 'protoworks', 'f09-z4', '2026-02-01', '2026-03-01'),"
            " ('ref-tower', 'protoworks', 'f09-z4', '2026-05-01', '2026-06-01')"
        )
    store_readings(db_url, [(sensor, at, 1.0) for sensor, at, _ in CASES])
    latest: dict[str, tuple[datetime, set[str]]] = {}
    for sensor, at, seen_by in CASES:
        if sensor not in latest or at > latest[sensor][0]:
            latest[sensor] = (at, seen_by)
    for tenant in TENANTS:
        visible = _visible(db_url, tenant)
        for sensor, at, seen_by in CASES:
            minute = at.replace(second=0)
            day = at.astimezone(TZ).replace(hour=0, minute=0, second=0).astimezone(UTC)
            keys = {
                "readings": at,
                "rollups_1m": minute,
                "rollups_1h": at.replace(minute=0, second=0),
                "rollups_1d": day,  # the local day
            }
            if "-energy-" in sensor:
                keys["energy_15m"] = minute.replace(minute=minute.minute - minute.minute % 15)
            for table, key in keys.items():
                assert ((sensor, key) in visible[table]) == (tenant in seen_by), (
                    tenant,
                    table,
                    sensor,
                    at.astimezone(TZ),
                )
        for sensor, (at, seen_by) in latest.items():
            assert ((sensor, at) in visible["sensor_latest"]) == (tenant in seen_by), (
                tenant,
                sensor,
            )
        # nothing else: every visible row is one of the cases this tenant may see
        mine = {s for s, _, seen_by in CASES if tenant in seen_by}
        assert {s for s, _ in visible["readings"]} <= mine, tenant
