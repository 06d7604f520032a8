"""``upstairs db retention``: drop the raw readings of months past the retention.

Raw readings are the only table that grows with the devices' rate (every reading); the rollups,
the quarter-hour energy and the tenants' days, which serve everything older than a day or so,
stay (migration 0021 and docs/operations.md, "Retention"). Whole monthly partitions are
dropped (on TimescaleDB, 1-day chunks), never deleted from row by row.

The retention must be at least the ingesters' ``max_age_days`` (readings older than that are
refused): a month is dropped only when it ends ``raw_days`` and a day (:data:`MARGIN`) before
now, so no reading an ingester still accepts can belong to a dropped month, not even one it
checked a moment before the drop on a clock a little ahead.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import psycopg

#: A drop of a month holds the lock of the whole ``readings`` table while it waits for the
#: month's own (a long read of it): ingest inserts queue behind it for at most this long per
#: attempt, and a month is tried ``ATTEMPTS`` times, ``PAUSE_S`` apart.
LOCK_TIMEOUT = "1s"
#: Kept beyond ``raw_days``: readings checked just before a drop, clocks that differ.
MARGIN = timedelta(days=1)
ATTEMPTS = 5
PAUSE_S = 2.0


class RetentionError(ValueError):
    """The retention asked for would drop readings that are still accepted."""


class StillLockedError(RuntimeError):
    """A month stayed locked through every attempt; the older ones were dropped."""

    def __init__(self, part: str, dropped: list[str]) -> None:
        super().__init__(
            f"{part} stayed locked through {ATTEMPTS} attempts of {LOCK_TIMEOUT}; it and the newer"
            f" months stay (dropped before it: {', '.join(dropped) or 'none'}); run it again later"
        )
        self.part, self.dropped = part, dropped


def check_raw_days(raw_days: int, max_age_days: float) -> None:
    if raw_days < max_age_days:
        raise RetentionError(
            f"--raw-days {raw_days} is less than the ingesters' max_age_days {max_age_days:g}"
            " (UPSTAIRS_INGEST_MAX_AGE_DAYS): a reading they accept could belong to a month this"
            " drops; raise --raw-days, or lower max_age_days on every ingester first"
        )


def drop_old_readings(
    database_url: str, raw_days: int, now: datetime, *, dry_run: bool = False
) -> tuple[datetime, list[tuple[str, datetime | None]]]:
    """Drop (or list, with ``dry_run``) the readings partitions that end at or before
    ``now - raw_days - MARGIN``; returns the cutoff and each partition with the end of its range.

    One month per transaction, oldest first: a month that stays locked keeps only itself and
    the newer ones (:class:`StillLockedError`)."""
    cutoff = now - timedelta(days=raw_days) - MARGIN
    with psycopg.connect(database_url, autocommit=True) as conn:
        due = _drop(conn, cutoff, dry_run=True)
        if dry_run:
            return cutoff, due
        for n, (part, end) in enumerate(due):
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    with conn.transaction():
                        conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                        _drop(conn, cutoff if end is None else end, dry_run=False)
                    break
                except psycopg.errors.LockNotAvailable as exc:
                    if attempt == ATTEMPTS:
                        raise StillLockedError(part, [p for p, _ in due[:n]]) from exc
                    time.sleep(PAUSE_S)
            if end is None:  # TimescaleDB: one call dropped every chunk before the cutoff
                break
    return cutoff, due


def _drop(
    conn: psycopg.Connection[Any], cutoff: datetime, *, dry_run: bool
) -> list[tuple[str, datetime | None]]:
    rows = conn.execute(
        "SELECT part, range_end FROM drop_readings_before(%s, %s)", (cutoff, dry_run)
    ).fetchall()
    return [(str(part), end) for part, end in rows]


#: Dead letters deleted per transaction: short transactions, no long lock on the table.
DEAD_LETTER_BATCH = 10_000


def delete_old_dead_letters(
    database_url: str, days: int, now: datetime, *, dry_run: bool = False
) -> int:
    """Delete (or count, with ``dry_run``) the dead letters received before ``now - days``,
    in batches of :data:`DEAD_LETTER_BATCH` (index ``dead_letters_received``)."""
    cutoff = now - timedelta(days=days)
    with psycopg.connect(database_url, autocommit=True) as conn:
        if dry_run:
            row = conn.execute(
                "SELECT count(*) FROM dead_letters WHERE received_at < %s", (cutoff,)
            ).fetchone()
            return int(row[0]) if row else 0
        deleted = 0
        while True:
            cur = conn.execute(
                "DELETE FROM dead_letters WHERE id = ANY(ARRAY(SELECT id FROM dead_letters"
                " WHERE received_at < %s ORDER BY received_at LIMIT %s))",
                (cutoff, DEAD_LETTER_BATCH),
            )
            deleted += cur.rowcount
            if cur.rowcount < DEAD_LETTER_BATCH:
                return deleted
