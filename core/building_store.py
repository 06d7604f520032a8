"""Write a :class:`~core.building.Building` to the database and read it back.

:func:`apply_building` makes the database match the file in one transaction and is idempotent:
every table is upserted with ``ON CONFLICT ... DO UPDATE ... WHERE (...) IS DISTINCT FROM``, so
an unchanged row is not rewritten, and ``RETURNING (xmax = 0)`` tells an insert from an update.
Rows gone from the file are deleted, except sensors: readings refer to them by id, so a sensor
gone from the file is only marked inactive (and lets go of a zone or tenant that is deleted).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from core.building import Building
from core.building_file import format_loc

logger = logging.getLogger(__name__)

Row = tuple[Any, ...]
Cursor = psycopg.Cursor[Row]


class BuildingStoreError(RuntimeError):
    """The building cannot be written to, or read back from, the database."""


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What :func:`apply_building` changed, counted per table (tables without change omitted)."""

    building_id: str
    inserted: dict[str, int] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    deactivated: int = 0  # sensors gone from the file, now active = false

    @property
    def changed(self) -> bool:
        return bool(self.inserted or self.updated or self.deleted or self.deactivated)

    def __str__(self) -> str:
        counts = {"inserted": self.inserted, "updated": self.updated, "deleted": self.deleted}
        parts = [f"{t}: {n} {verb}" for verb, c in counts.items() for t, n in c.items()]
        if self.deactivated:
            parts.append(f"sensors: {self.deactivated} deactivated")
        return f"building {self.building_id}: " + ("; ".join(parts) or "no change")


# PostgreSQL types of the columns written from arrays; any other column is text.
_TYPES = {
    "number": "integer", "floor": "integer", "start_minute": "integer", "end_minute": "integer",
    "area_m2": "float8", "height_m": "float8", "load_limit_kg_m2": "float8",
    "power_capacity_kw": "float8", "contracted_kw": "float8", "interval_s": "float8",
    "price_per_kwh": "numeric", "alert_config": "jsonb", "valid_from": "date",
    "valid_to": "date", "active": "boolean",
}  # fmt: skip
# Column -> key in the building file, where they differ ("-": not in the file).
_FILE_KEY = dict(
    zone_id="zone", tenant_id="tenant", tariff_id="tariff", valid_from="from", valid_to="to",
    unit="-", active="-",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Table:
    name: str
    keys: tuple[str, ...]  # conflict key, without building_id
    values: tuple[str, ...]  # columns updated when they differ
    scoped: bool  # building_id is part of the conflict key (else only the keys)
    owned: bool  # the table has a building_id column

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.keys, *self.values)


def _table(name: str, keys: str, values: str, scoped: bool = True, owned: bool = True) -> _Table:
    return _Table(name, tuple(keys.split()), tuple(values.split()), scoped, owned)


_BUILDINGS = _table("buildings", "id", "name timezone alert_config", scoped=False, owned=False)
_FLOORS = _table("floors", "number", "name area_m2 height_m load_limit_kg_m2 power_capacity_kw")
_ZONES = _table("zones", "id", "floor name area_m2 load_limit_kg_m2")
_TARIFFS = _table("tariffs", "id", "currency")
_PERIODS = _table("tariff_periods", "tariff_id name", "price_per_kwh")
_WINDOWS = _table("tariff_windows", "tariff_id start_minute", "period end_minute")
_TENANTS = _table("tenants", "id", "name contracted_kw tariff_id")
_LEASES = _table("leases", "zone_id valid_from", "tenant_id valid_to")
_SENSORS = _table("sensors", "id", "kind unit floor zone_id tenant_id interval_s active", False)


def _ids(columns: Sequence[str], table: str | None = None) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(*(table, c) if table else (c,)) for c in columns)


def _unnest(columns: Sequence[str]) -> sql.Composed:
    """``unnest(%s::type1[], %s::type2[], ...)``: one bound array per column."""
    types = (_TYPES.get(column, "text") for column in columns)
    casts = sql.SQL(", ").join(sql.SQL("%s::{}[]").format(sql.SQL(t)) for t in types)
    return sql.SQL("unnest({})").format(casts)


def _arrays(rows: Sequence[Row], width: int) -> list[list[Any]]:
    return [[row[i] for row in rows] for i in range(width)]


def _upsert(cur: Cursor, table: _Table, building_id: str, rows: Sequence[Row]) -> tuple[int, int]:
    """Insert or update ``rows`` (keys then values); return (inserted, updated)."""
    conflict = ("building_id", *table.keys) if table.scoped else table.keys
    query = sql.SQL(
        "INSERT INTO {t} ({owner}{cols}) SELECT {value}* FROM {unnest}"
        " ON CONFLICT ({conflict}) DO UPDATE SET ({vals}) = ROW({new})"
        " WHERE ({old}) IS DISTINCT FROM ({new}) RETURNING (xmax = 0)"
    ).format(
        t=sql.Identifier(table.name),
        owner=sql.SQL("building_id, " if table.owned else ""),
        value=sql.SQL("%s, " if table.owned else ""),
        cols=_ids(table.columns),
        unnest=_unnest(table.columns),
        conflict=_ids(conflict),
        vals=_ids(table.values),
        new=_ids(table.values, "excluded"),
        old=_ids(table.values, table.name),
    )
    arrays = _arrays(rows, len(table.columns))
    cur.execute(query, [building_id, *arrays] if table.owned else arrays)
    inserted = sum(1 for (fresh,) in cur.fetchall() if fresh)
    return inserted, cur.rowcount - inserted


def _delete_missing(cur: Cursor, table: _Table, building_id: str, rows: Sequence[Row]) -> int:
    """Delete this building's rows of ``table`` whose key is not among ``rows``."""
    query = sql.SQL(
        "DELETE FROM {t} WHERE building_id = %s AND ({keys}) NOT IN (SELECT * FROM {unnest})"
    ).format(t=sql.Identifier(table.name), keys=_ids(table.keys), unnest=_unnest(table.keys))
    cur.execute(query, [building_id, *_arrays(rows, len(table.keys))])
    return cur.rowcount


# Sensors gone from the file: inactive, and detached from zones and tenants being deleted.
# RETURNING the old ``active`` tells a deactivation from a detachment of an inactive sensor.
_RETIRE_SENSORS = """
WITH gone AS (
    SELECT id, active, CASE WHEN zone_id = ANY(%(zones)s::text[]) THEN zone_id END AS zone_id,
           CASE WHEN tenant_id = ANY(%(tenants)s::text[]) THEN tenant_id END AS tenant_id
      FROM sensors WHERE building_id = %(b)s AND NOT (id = ANY(%(keep)s::text[])) FOR UPDATE)
UPDATE sensors s SET active = false, zone_id = gone.zone_id, tenant_id = gone.tenant_id
  FROM gone WHERE s.id = gone.id
   AND (s.active, s.zone_id, s.tenant_id) IS DISTINCT FROM (false, gone.zone_id, gone.tenant_id)
RETURNING gone.active"""


def _rows(building: Building) -> dict[_Table, list[Row]]:
    """The building as rows (keys then values) of each table, parents first."""
    tariffs = building.tariffs
    return {
        _FLOORS: [
            (f.number, f.name, f.area_m2, f.height_m, f.load_limit_kg_m2, f.power_capacity_kw)
            for f in building.floors
        ],
        _ZONES: [(z.id, z.floor, z.name, z.area_m2, z.load_limit_kg_m2) for z in building.zones],
        _TARIFFS: [(t.id, t.currency) for t in tariffs],
        _PERIODS: [
            (t.id, p.name, Decimal(str(p.price_per_kwh))) for t in tariffs for p in t.periods
        ],
        _WINDOWS: [
            (t.id, a, p.name, z) for t in tariffs for p in t.periods for a, z in p.minute_ranges()
        ],
        _TENANTS: [(t.id, t.name, t.contracted_kw, t.tariff) for t in building.tenants],
        _LEASES: [(le.zone, le.from_, le.tenant, le.to) for le in building.leases],
        _SENSORS: [
            (s.id, s.kind.value, s.unit, s.floor, s.zone, s.tenant, s.interval_s, True)
            for s in building.sensors
        ],
    }


def apply_building(conn: psycopg.Connection[Any], building: Building) -> ApplyResult:
    """Make the database hold ``building``, all in one transaction; safe to repeat."""
    _refuse_problems(building, "is not consistent")
    b = building.id
    rows = _rows(building)
    ins, upd, dele = Counter[str](), Counter[str](), Counter[str]()
    zones, tenants = [z.id for z in building.zones], [t.id for t in building.tenants]
    try:
        with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
            # The buildings row stays locked (even when unchanged) to the end: concurrent
            # applies of one building queue up instead of interleaving.
            alert_config = building.alerts.model_dump_json()
            cur.execute("SELECT timezone FROM buildings WHERE id = %s FOR UPDATE", (b,))
            before = cur.fetchone()
            head = [(b, building.name, building.timezone, alert_config)]
            ins["buildings"], upd["buildings"] = _upsert(cur, _BUILDINGS, b, head)
            _refuse_foreign_sensors(cur, building)
            for table, table_rows in rows.items():
                ins[table.name], upd[table.name] = _upsert(cur, table, b, table_rows)
            # Removals, children before parents, so that each count is the table's own.
            for table in (_LEASES, _WINDOWS):
                dele[table.name] = _delete_missing(cur, table, b, rows[table])
            keep = [s.id for s in building.sensors]
            cur.execute(_RETIRE_SENSORS, {"b": b, "keep": keep, "zones": zones, "tenants": tenants})
            was_active = [row[0] for row in cur.fetchall()]
            deactivated = sum(was_active)
            upd["sensors"] += len(was_active) - deactivated  # inactive ones let go of a zone
            for table in (_TENANTS, _ZONES, _FLOORS, _PERIODS, _TARIFFS):
                dele[table.name] = _delete_missing(cur, table, b, rows[table])
            zone_changed = before is not None and before[0] != building.timezone
            if (
                zone_changed
                or any(c[t] for c in (ins, upd, dele) for t in _DAYS_DEPEND_ON)
                or deactivated
            ):
                _rebuild_days(cur, b, zone_changed, upd)
            result = ApplyResult(b, dict(+ins), dict(+upd), dict(+dele), deactivated)
            if result.changed:
                cur.execute("UPDATE buildings SET updated_at = now() WHERE id = %s", (b,))
    except psycopg.errors.IntegrityError as exc:
        d = exc.diag
        why = f"{d.message_primary} (table {d.table_name}) {d.message_detail or ''}".rstrip()
        raise BuildingStoreError(f"building {b!r} not applied, nothing written: {why}") from exc
    logger.info("%s", result)
    return result


# What the tenants' energy by day is made of, besides the time zone (migration 0014).
_DAYS_DEPEND_ON = ("sensors", "leases", "tenants", "tariff_windows")

# The rollup refresher's lock (migration 0011's refresh_rollups): while it is held here, no
# refresh interleaves its minutes with the days being rebuilt.
_REFRESHER_LOCK = "SELECT pg_advisory_xact_lock(1431326546, 1)"


def _rebuild_days(cur: Cursor, b: str, zone_changed: bool, upd: Counter[str]) -> None:
    """Rebuild what the building's sensors, leases, tenants and time zone decide: the local
    days of the daily rollups when the zone changed (they were days of the old zone), and the
    tenants' energy by day (migration 0014) always. Counted as updates of those tables."""
    cur.execute(_REFRESHER_LOCK)
    if zone_changed:
        rebuilt = cur.execute("SELECT rebuild_local_days(%s)", (b,)).fetchone()
        upd["rollups_1d"] = int(rebuilt[0]) if rebuilt else 0
    days = cur.execute("SELECT rebuild_tenant_days(%s)", (b,)).fetchone()
    upd["tenant_energy_days"] = int(days[0]) if days else 0


def _refuse_foreign_sensors(cur: Cursor, building: Building) -> None:
    """Sensor ids are unique across buildings: refuse to take one over from another."""
    cur.execute(
        "SELECT id, building_id FROM sensors WHERE id = ANY(%s) AND building_id <> %s",
        ([s.id for s in building.sensors], building.id),
    )
    if taken := cur.fetchall():
        owners = ", ".join(f"{sensor} ({owner})" for sensor, owner in taken)
        raise BuildingStoreError(f"sensor ids belong to another building: {owners}")


def _refuse_problems(building: Building, what: str) -> None:
    if problems := building.problems():
        found = "; ".join(f"{format_loc(p.loc)}: {p.message}" for p in problems)
        raise BuildingStoreError(f"building {building.id!r} {what}: {found}")


def _windows(ranges: list[tuple[int, int]]) -> list[str]:
    """Ranges sorted by start as 'HH:MM-HH:MM'; a pair split at midnight becomes one again."""
    late = next((r for r in ranges if r[1] == 24 * 60 and r[0] > 0), None)
    early = next((r for r in ranges if r[0] == 0 and r[1] < 24 * 60), None)
    if late is not None and early is not None:
        ranges = [r for r in ranges if r not in (late, early)] + [(late[0], early[1])]
    return [f"{a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}" for a, b in ranges]


def _select(cur: Cursor, table: _Table, b: str, active: bool = False) -> list[dict[str, Any]]:
    """The building's rows of ``table`` as building-file mappings, ordered by key."""
    query = sql.SQL("SELECT {} FROM {} WHERE building_id = %s {} ORDER BY {}")
    extra = sql.SQL("AND active" if active else "")
    args = (_ids(table.columns), sql.Identifier(table.name), extra, _ids(table.keys))
    cur.execute(query.format(*args), (b,))
    keys = [_FILE_KEY.get(column, column) for column in table.columns]
    return [{k: v for k, v in zip(keys, row, strict=True) if k != "-"} for row in cur.fetchall()]


def load_building_from_db(conn: psycopg.Connection[Any], building_id: str) -> Building:
    """Read a building back as a validated model; inactive sensors are left out."""
    with conn.cursor(row_factory=tuple_row) as cur:
        cur.execute(
            "SELECT name, timezone, alert_config FROM buildings WHERE id = %s", (building_id,)
        )
        head = cur.fetchone()
        if head is None:
            raise BuildingStoreError(f"no building {building_id!r} in the database")
        windows: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
        for w in _select(cur, _WINDOWS, building_id):
            windows[(w["tariff"], w["period"])].append((w["start_minute"], w["end_minute"]))
        periods: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for p in _select(cur, _PERIODS, building_id):
            tariff_id = p.pop("tariff")
            p["price_per_kwh"] = float(p["price_per_kwh"])  # numeric(12, 6) comes as Decimal
            p["windows"] = _windows(windows[(tariff_id, p["name"])])
            periods[tariff_id].append(p)
        data = {
            "id": building_id,
            "name": head[0],
            "timezone": head[1],
            "alerts": head[2],
            "floors": _select(cur, _FLOORS, building_id),
            "zones": _select(cur, _ZONES, building_id),
            "tariffs": [
                {**t, "periods": periods[t["id"]]} for t in _select(cur, _TARIFFS, building_id)
            ],
            "tenants": _select(cur, _TENANTS, building_id),
            "leases": _select(cur, _LEASES, building_id),
            "sensors": _select(cur, _SENSORS, building_id, active=True),
        }
    try:
        building = Building.model_validate(data)
    except ValueError as exc:
        raise BuildingStoreError(f"building {building_id!r} in the database: {exc}") from exc
    _refuse_problems(building, "in the database is not consistent")
    return building


def list_buildings(conn: psycopg.Connection[Any]) -> list[str]:
    """Ids of the buildings in the database, sorted."""
    with conn.cursor(row_factory=tuple_row) as cur:
        return [str(row[0]) for row in cur.execute("SELECT id FROM buildings ORDER BY id")]
