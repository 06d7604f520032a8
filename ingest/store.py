"""One batch, one transaction: readings, latest values, rollup partials and dead letters.

The fast path COPYs the batch straight into ``readings`` (binary COPY, the fastest way into
PostgreSQL). A redelivered reading makes that COPY fail on the primary key; the transaction is
then redone on the deduplicating path: COPY into a session-local staging table, then
``INSERT ... ON CONFLICT DO NOTHING RETURNING`` tells exactly which rows are new. Only new
rows move ``sensor_latest`` (one statement per batch, only forward in time) and leave their
partial aggregates per (sensor, minute) in ``rollup_pending`` (one small COPY); the rollups
are maintained off the hot path (:mod:`ingest.rollups`). Energy registers are checked last,
under an advisory lock per register, so concurrent writers overlap on the bulk COPY. Nothing
here acknowledges anything: the caller acks after :meth:`Store.write` returns.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

import psycopg

from core.payload import Reason
from ingest.registers import Neighbours, RegisterVerdict, judge, split_late
from ingest.validate import Checked, DeadLetter, Good, Row, reading_payload

logger = logging.getLogger(__name__)

AsyncConn = psycopg.AsyncConnection[tuple[object, ...]]

_ROW_TYPES = ["text", "timestamptz", "float8"]

_ENERGY_LOCK_CLASS = 0x55504E52  # "UPNR": advisory-lock namespace of energy registers

# Session-local scratch table of the deduplicating path; created once per connection.
STAGING = (
    b"CREATE TEMP TABLE IF NOT EXISTS ingest_stage (sensor_id text NOT NULL,"
    b" ts timestamptz NOT NULL, value double precision NOT NULL) ON COMMIT DELETE ROWS",
)
COPY_READINGS = b"COPY readings (sensor_id, ts, value) FROM STDIN (FORMAT BINARY)"
COPY_STAGE = b"COPY ingest_stage (sensor_id, ts, value) FROM STDIN (FORMAT BINARY)"
COPY_PENDING = (
    b"COPY rollup_pending (sensor_id, bucket, count, sum, min, max, last_ts, last_value)"
    b" FROM STDIN (FORMAT BINARY)"
)
TOUCH_TYPES = ["text", "timestamptz", "int8", "float8", "float8", "float8", "timestamptz", "float8"]
INSERT_NEW = (
    b"INSERT INTO readings (sensor_id, ts, value) SELECT sensor_id, ts, value FROM ingest_stage"
    b" ON CONFLICT DO NOTHING RETURNING sensor_id, ts"
)
# The newest reading of each sensor of the batch moves sensor_latest, only forward in time (a
# late reading never replaces a newer one). Sorted by sensor, so concurrent writers lock its
# rows in the same order.
UPSERT_LATEST = b"""
    INSERT INTO sensor_latest AS l (sensor_id, ts, value, received_at)
    SELECT s, t, v, now() FROM unnest(%s::text[], %s::timestamptz[], %s::float8[]) AS u(s, t, v)
     ORDER BY s
    ON CONFLICT (sensor_id) DO UPDATE
       SET ts = excluded.ts, value = excluded.value, received_at = excluded.received_at
     WHERE excluded.ts > l.ts
"""
# Lock the batch's energy registers (sorted: a fixed order), then read their newest values.
LOCK_REGISTERS = b"""
    WITH locked AS MATERIALIZED (
        SELECT s, pg_advisory_xact_lock(%s, hashtext(s))
          FROM (SELECT unnest(%s::text[]) AS s ORDER BY 1) q
    )
    SELECT l.sensor_id, l.ts, l.value FROM locked JOIN sensor_latest l ON l.sensor_id = locked.s
"""
NEIGHBOURS = (
    b"SELECT sensor_id, ts, prev_ts, prev_value, next_ts, next_value"
    b" FROM reading_neighbours(%s::text[], %s::timestamptz[])"
)
INSERT_DEAD = (
    b"INSERT INTO dead_letters (received_at, topic, payload, reason, detail, sensor_id)"
    b" SELECT * FROM unnest(%s::timestamptz[], %s::text[], %s::bytea[], %s::text[],"
    b" %s::text[], %s::text[])"
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


def minute_partials(rows: Iterable[Row]) -> dict[tuple[str, datetime], list[Any]]:
    """(sensor, UTC minute) -> [count, sum, min, max, last_ts, last_value] of the rows.

    The hottest loop of the write path: plain lists while accumulating.
    """
    acc: dict[tuple[str, datetime], list[Any]] = {}
    minute_of: dict[datetime, datetime] = {}
    for sensor, ts, value in rows:
        minute = minute_of.get(ts)
        if minute is None:
            minute = minute_of[ts] = ts.replace(second=0, microsecond=0)
        key = (sensor, minute)
        part = acc.get(key)
        if part is None:
            acc[key] = [1, value, value, value, ts, value]
            continue
        part[0] += 1
        part[1] += value
        if value < part[2]:
            part[2] = value
        elif value > part[3]:
            part[3] = value
        if ts > part[4]:
            part[4] = ts
            part[5] = value
    return acc


class Store:
    """Writes batches over one connection (autocommit; each batch is one transaction)."""

    def __init__(self, conn: AsyncConn, *, energy_reset_kwh: float) -> None:
        self._conn = conn
        self._energy_reset_kwh = energy_reset_kwh
        self._months: set[tuple[int, int]] = set()
        self._staged = False

    async def write(self, checked: Checked) -> WriteOutcome:
        """Store a checked batch in one transaction. Fast path first; on a primary-key
        conflict (a redelivery) the transaction is redone on the deduplicating path."""
        await self._prepare(checked.rows, checked.energy)
        try:
            return await self._write(checked, dedup=False)
        except psycopg.errors.UniqueViolation:
            return await self._write(checked, dedup=True)

    async def _write(self, checked: Checked, *, dedup: bool) -> WriteOutcome:
        dead = list(checked.dead)
        offered = len(checked.rows)
        async with self._conn.transaction():
            # The bulk first, outside any lock, so concurrent writers overlap here.
            inserted = await self._insert(checked.rows, dedup)
            registers: list[Row] = []
            if checked.energy:
                # From here to the commit, the batch's registers are locked.
                verdict = await self._judge_registers(checked.energy)
                refused = {(g.sensor, g.ts) for g in verdict.refused}
                accepted = [
                    (g.sensor, g.ts, g.value)
                    for g in checked.energy
                    if (g.sensor, g.ts) not in refused
                ]
                dead.extend(_backwards(g, self._energy_reset_kwh) for g in verdict.refused)
                offered += len(accepted)
                registers = await self._insert(accepted, dedup)
                inserted += registers
            if inserted:
                await self._touch(inserted, registers)
            if dead:
                await self._dead_letters(dead)
        return WriteOutcome(len(inserted), offered - len(inserted), dead, dedup)

    async def _insert(self, rows: list[Row], dedup: bool) -> list[Row]:
        """Store ``rows``; return those that were new (all of them on the fast path)."""
        if not rows:
            return []
        if not dedup:
            await self._copy(COPY_READINGS, _ROW_TYPES, rows)
            return list(rows)
        await self._copy(COPY_STAGE, _ROW_TYPES, rows)
        cursor = await self._conn.execute(INSERT_NEW)
        new = {(str(s), t) for s, t in await cursor.fetchall()}
        await self._conn.execute(b"TRUNCATE ingest_stage")
        out: list[Row] = []
        for row in rows:
            key = (row[0], row[1])
            if key in new:
                new.discard(key)  # a reading twice in one batch is new once
                out.append(row)
        return out

    async def _touch(self, rows: list[Row], registers: list[Row]) -> None:
        """Rollup partials of the new rows (one COPY, merged later by the refresher, which
        also moves ``sensor_latest``: :mod:`ingest.rollups`), and ``sensor_latest`` of the
        new energy-register readings now (one statement): the next batch's register check
        reads it, so it cannot wait for the refresher."""
        partials = minute_partials(rows)
        await self._copy(COPY_PENDING, TOUCH_TYPES, ((s, b, *p) for (s, b), p in partials.items()))
        if not registers:
            return
        newest: dict[str, Row] = {}
        for row in registers:
            seen = newest.get(row[0])
            if seen is None or row[1] > seen[1]:
                newest[row[0]] = row
        sensors = sorted(newest)
        await self._conn.execute(
            UPSERT_LATEST,
            (sensors, [newest[s][1] for s in sensors], [newest[s][2] for s in sensors]),
        )

    async def _prepare(self, rows: list[Row], energy: list[Good]) -> None:
        """Staging table of this session, and the monthly partitions the rows need."""
        if not self._staged:
            for statement in STAGING:
                await self._conn.execute(statement)
            self._staged = True
        stamps = set(map(itemgetter(1), rows))
        stamps.update(g.ts for g in energy)
        months = {(t.year, t.month) for t in stamps}
        for year, month in sorted(months - self._months):
            first = datetime(year, month, 1, tzinfo=UTC)
            await self._conn.execute("SELECT ensure_readings_partition(%s)", (first,))
            self._months.add((year, month))

    async def _copy(self, statement: bytes, types: list[str], rows: Iterable[object]) -> None:
        async with self._conn.cursor().copy(statement) as copy:
            copy.set_types(types)
            write = copy.write_row
            for row in rows:
                await write(row)  # type: ignore[arg-type]

    async def _judge_registers(self, energy: list[Good]) -> RegisterVerdict:
        """Lock the batch's registers (fixed order), then check each reading against them."""
        sensors = sorted({g.sensor for g in energy})
        cursor = await self._conn.execute(LOCK_REGISTERS, (_ENERGY_LOCK_CLASS, sensors))
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
                [str(d.reason) for d in dead],
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
