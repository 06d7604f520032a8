"""One batch, one transaction: readings, latest values, rollups and dead letters together.

The fast path COPYs the batch straight into ``readings`` (binary COPY, the fastest way into
PostgreSQL). A redelivered reading makes that COPY fail on the primary key; the batch then
rolls back to a savepoint and takes the deduplicating path: COPY into a session-local staging
table, then ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` tells exactly which rows are new.
Only new rows feed ``sensor_latest`` and the rollups, so a redelivery never counts twice: their
per-minute partial aggregates are COPYed into a second staging table, from which three
statements merge the minute rollups, the hour rollups and ``sensor_latest``.
Nothing here acknowledges anything: the caller acks after :meth:`Store.write` returns.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

from core.building import SensorKind
from core.payload import Reason
from ingest.registers import Neighbours, RegisterVerdict, judge, split_late
from ingest.rollups import minute_partials
from ingest.validate import DeadLetter, Good, reading_payload

logger = logging.getLogger(__name__)

Row = tuple[str, datetime, float]
AsyncConn = psycopg.AsyncConnection[tuple[object, ...]]

_ENERGY_LOCK_CLASS = 0x55504E52  # "UPNR": advisory-lock namespace of energy registers

# Session-local scratch tables (emptied at every commit); created once per connection.
STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS ingest_stage (sensor_id text NOT NULL,"
    " ts timestamptz NOT NULL, value double precision NOT NULL) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS ingest_minutes (sensor_id text NOT NULL,"
    " bucket timestamptz NOT NULL, count bigint NOT NULL, sum double precision NOT NULL,"
    " min double precision NOT NULL, max double precision NOT NULL,"
    " last_ts timestamptz NOT NULL, last_value double precision NOT NULL,"
    " energy_kwh double precision) ON COMMIT DELETE ROWS",
)

COPY_READINGS = "COPY readings (sensor_id, ts, value) FROM STDIN (FORMAT BINARY)"
COPY_STAGE = "COPY ingest_stage (sensor_id, ts, value) FROM STDIN (FORMAT BINARY)"
COPY_MINUTES = (
    "COPY ingest_minutes (sensor_id, bucket, count, sum, min, max, last_ts, last_value,"
    " energy_kwh) FROM STDIN (FORMAT BINARY)"
)
MINUTE_TYPES = [
    "text", "timestamptz", "int8", "float8", "float8", "float8", "timestamptz", "float8", "float8"
]  # fmt: skip

INSERT_NEW = (
    "INSERT INTO readings (sensor_id, ts, value) SELECT sensor_id, ts, value FROM ingest_stage"
    " ON CONFLICT DO NOTHING RETURNING sensor_id, ts"
)

# Every rollup column merges exactly, so batches may commit in any order.
_MERGE = """
    ON CONFLICT (sensor_id, bucket) DO UPDATE SET
        count = r.count + excluded.count,
        sum = r.sum + excluded.sum,
        min = least(r.min, excluded.min),
        max = greatest(r.max, excluded.max),
        last_ts = greatest(r.last_ts, excluded.last_ts),
        last_value = CASE WHEN excluded.last_ts > r.last_ts
                          THEN excluded.last_value ELSE r.last_value END,
        energy_kwh = CASE WHEN excluded.energy_kwh IS NULL THEN r.energy_kwh
                          ELSE coalesce(r.energy_kwh, 0) + excluded.energy_kwh END
"""
MERGE_MINUTES = (
    "INSERT INTO rollups_1m AS r"
    " (sensor_id, bucket, count, sum, min, max, last_ts, last_value, energy_kwh)"
    " SELECT sensor_id, bucket, count, sum, min, max, last_ts, last_value, energy_kwh"
    " FROM ingest_minutes ORDER BY 1, 2" + _MERGE
)
MERGE_HOURS = (
    "INSERT INTO rollups_1h AS r"
    " (sensor_id, bucket, count, sum, min, max, last_ts, last_value, energy_kwh)"
    " SELECT sensor_id, date_trunc('hour', bucket, 'UTC'), sum(count), sum(sum), min(min),"
    " max(max), max(last_ts), (array_agg(last_value ORDER BY last_ts DESC))[1], sum(energy_kwh)"
    " FROM ingest_minutes GROUP BY 1, 2 ORDER BY 1, 2" + _MERGE
)
# sensor_latest moves only forward in time: a late reading never replaces a newer one.
ADVANCE_LATEST = """
    INSERT INTO sensor_latest AS l (sensor_id, ts, value, received_at)
    SELECT DISTINCT ON (sensor_id) sensor_id, last_ts, last_value, now()
      FROM ingest_minutes ORDER BY sensor_id, last_ts DESC
    ON CONFLICT (sensor_id) DO UPDATE
       SET ts = excluded.ts, value = excluded.value, received_at = excluded.received_at
     WHERE excluded.ts > l.ts
"""
LOCK_REGISTERS = (
    "SELECT pg_advisory_xact_lock(%s, hashtext(s))"
    " FROM (SELECT unnest(%s::text[]) AS s ORDER BY 1) q"
)
REGISTER_LATEST = "SELECT sensor_id, ts, value FROM sensor_latest WHERE sensor_id = ANY(%s::text[])"
NEIGHBOURS = (
    "SELECT sensor_id, ts, prev_ts, prev_value, next_ts, next_value"
    " FROM reading_neighbours(%s::text[], %s::timestamptz[])"
)
REFRESH_ENERGY = "SELECT refresh_energy_rollups(%s::text[], %s::timestamptz[])"
INSERT_DEAD = (
    "INSERT INTO dead_letters (received_at, topic, payload, reason, detail, sensor_id)"
    " SELECT * FROM unnest(%s::timestamptz[], %s::text[], %s::bytea[], %s::text[],"
    " %s::text[], %s::text[])"
)


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    stored: int
    duplicates: int
    dead: list[DeadLetter]
    slow_path: bool


def _clean(text: str) -> str:
    """Text PostgreSQL accepts: no NUL, no lone surrogates."""
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


class Store:
    """Writes batches over one connection (autocommit; each batch is one transaction)."""

    def __init__(self, conn: AsyncConn, *, energy_reset_kwh: float) -> None:
        self._conn = conn
        self._energy_reset_kwh = energy_reset_kwh
        self._months: set[tuple[int, int]] = set()
        self._staged = False

    async def write(self, good: list[Good], dead: list[DeadLetter]) -> WriteOutcome:
        rows: dict[tuple[str, datetime], Good] = {}
        for reading in good:
            rows.setdefault((reading.sensor, reading.ts), reading)
        in_batch_dupes = len(good) - len(rows)
        await self._prepare(rows.values())
        dead = list(dead)
        slow = False
        async with self._conn.transaction():
            energy = [g for g in rows.values() if g.kind is SensorKind.ENERGY]
            verdict = RegisterVerdict()
            if energy:
                verdict = await self._judge_registers(energy)
                for refused in verdict.refused:
                    del rows[(refused.sensor, refused.ts)]
                    dead.append(_backwards(refused, self._energy_reset_kwh))
            batch: list[Row] = [(g.sensor, g.ts, g.value) for g in rows.values()]
            inserted = batch
            if batch:
                try:
                    async with self._conn.transaction():
                        await self._copy(COPY_READINGS, ["text", "timestamptz", "float8"], batch)
                except psycopg.errors.UniqueViolation:
                    slow = True
                    inserted = await self._insert_new(batch)
            if inserted:
                await self._derive(inserted, verdict)
            if dead:
                await self._dead_letters(dead)
        return WriteOutcome(len(inserted), in_batch_dupes + len(batch) - len(inserted), dead, slow)

    async def _prepare(self, rows: Iterable[Good]) -> None:
        """Staging tables of this session, and the monthly partitions the rows need."""
        if not self._staged:
            for statement in STAGING:
                await self._conn.execute(statement)
            self._staged = True
        months = {(g.ts.year, g.ts.month) for g in rows} - self._months
        for year, month in sorted(months):
            first = datetime(year, month, 1, tzinfo=UTC)
            await self._conn.execute("SELECT ensure_readings_partition(%s)", (first,))
            self._months.add((year, month))

    async def _copy(
        self, statement: str, types: list[str], rows: Iterable[tuple[object, ...]]
    ) -> None:
        async with self._conn.cursor().copy(statement.encode()) as copy:
            copy.set_types(types)
            for row in rows:
                await copy.write_row(row)

    async def _insert_new(self, rows: list[Row]) -> list[Row]:
        """The deduplicating path; returns the rows that were not stored before."""
        await self._copy(COPY_STAGE, ["text", "timestamptz", "float8"], rows)
        cursor = await self._conn.execute(INSERT_NEW.encode())
        new = {(str(s), t) for s, t in await cursor.fetchall()}
        await self._conn.execute(b"TRUNCATE ingest_stage")
        return [row for row in rows if (row[0], row[1]) in new]

    async def _derive(self, rows: list[Row], verdict: RegisterVerdict) -> None:
        """Rollups and sensor_latest from the new rows; kWh of late energy readings."""
        partials = minute_partials(rows, verdict.kwh)
        await self._copy(
            COPY_MINUTES,
            MINUTE_TYPES,
            (
                (s, b, p.count, p.sum, p.min, p.max, p.last_ts, p.last_value, p.energy)
                for (s, b), p in partials.items()
            ),
        )
        for statement in (MERGE_MINUTES, MERGE_HOURS, ADVANCE_LATEST):
            await self._conn.execute(statement.encode())
        if verdict.late:
            stored = {(r[0], r[1]) for r in rows}
            late = [g for g in verdict.late if (g.sensor, g.ts) in stored]
            if late:
                await self._conn.execute(
                    REFRESH_ENERGY, ([g.sensor for g in late], [g.ts for g in late])
                )

    async def _judge_registers(self, energy: list[Good]) -> RegisterVerdict:
        """Lock the batch's registers (fixed order), then check each reading against them."""
        sensors = sorted({g.sensor for g in energy})
        await self._conn.execute(LOCK_REGISTERS, (_ENERGY_LOCK_CLASS, sensors))
        cursor = await self._conn.execute(REGISTER_LATEST, (sensors,))
        latest: dict[str, tuple[datetime, float]] = {
            str(r[0]): (r[1], float(r[2]))  # type: ignore[misc, arg-type]
            for r in await cursor.fetchall()
        }
        in_order, late = split_late(energy, latest)
        neighbours: dict[tuple[str, datetime], Neighbours] = {}
        if late:
            cursor = await self._conn.execute(
                NEIGHBOURS, ([g.sensor for g in late], [g.ts for g in late])
            )
            for r in await cursor.fetchall():
                neighbours[(r[0], r[1])] = Neighbours(*r[2:])  # type: ignore[index, arg-type]
        return judge(in_order, late, latest, neighbours, self._energy_reset_kwh)

    async def _dead_letters(self, dead: list[DeadLetter]) -> None:
        await self._conn.execute(
            INSERT_DEAD,
            (
                [d.received_at for d in dead],
                [_clean(d.topic) for d in dead],
                [d.payload for d in dead],
                [d.reason.value for d in dead],
                [_clean(d.detail) for d in dead],
                [None if d.sensor_id is None else _clean(d.sensor_id) for d in dead],
            ),
        )


def _backwards(g: Good, threshold: float) -> DeadLetter:
    return DeadLetter(
        g.received_at,
        g.topic_name,
        reading_payload(g.raw),
        Reason.REGISTER_BACKWARDS,
        f"energy register {g.sensor!r} would go backwards at {g.ts.isoformat()}"
        f" (value {g.value!r}; only a drop to at most {threshold:g} kWh counts as a reset)",
        g.sensor,
    )
