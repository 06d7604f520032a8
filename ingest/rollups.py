"""Keeps ``rollups_1m`` / ``rollups_1h`` current, off the ingest hot path.

Each ingest transaction stores its readings and, in ``rollup_pending``, their partial
aggregates per (sensor, UTC minute). Every ``rollup_interval_s`` the refresher has the database
merge the pending partials into the rollups and delete them, in one transaction
(``refresh_rollups`` in migration 0002): counts and sums add, min/max and last merge, so every
reading counts once whatever the commit order; energy kWh is recomputed from raw readings for
the touched minutes (it needs the reading before each bucket). Like a TimescaleDB continuous
aggregate with a refresh policy: rollups trail the raw readings by about one interval, late
readings included. A crash loses nothing (the partials are deleted by the same transaction
that merges them); with several ingesters, one refresher at a time works (an advisory lock).

Runs as a task of the ingester, or on its own: ``python -m ingest.refresh``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

import psycopg

from core.aio import wait_event
from ingest.metrics import IngestMetrics
from ingest.settings import IngestSettings

logger = logging.getLogger(__name__)

# One refresh, and the heartbeat (migration 0020) stamped in the same transaction when it held
# the refresher's lock (-1: another refresher is busy, and stamps it).
REFRESH = (
    b"WITH r AS (SELECT refresh_rollups(%s) AS n),"
    b" beat AS (INSERT INTO rollup_refresher (refreshed_at) SELECT clock_timestamp() FROM r"
    b"  WHERE n >= 0 ON CONFLICT (id) DO UPDATE SET refreshed_at = excluded.refreshed_at)"
    b" SELECT n FROM r"
)


async def refresh_once(conn: psycopg.AsyncConnection[tuple[object, ...]], max_rows: int) -> int:
    """One refresh transaction; the partials merged (-1: another refresher was busy)."""
    cursor = await conn.execute(REFRESH, (max_rows,))
    row = await cursor.fetchone()
    return int(row[0]) if row is not None and row[0] is not None else 0  # type: ignore[call-overload]


class RollupRefresher:
    """The refresh loop over a connection of its own; reconnects with jittered backoff."""

    def __init__(self, settings: IngestSettings, metrics: IngestMetrics) -> None:
        assert settings.db.database_url is not None
        self._url = settings.db.database_url
        self._interval = settings.rollup_interval_s
        self._max_rows = settings.rollup_max_pending
        self._backoff_max = settings.db_backoff_max_s
        self._metrics = metrics
        self._application_name = settings.application_name("rollups")

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        failures = 0
        try:
            while not stop.is_set():
                consumed = 0
                try:
                    if conn is None or conn.closed:
                        conn = await psycopg.AsyncConnection.connect(
                            self._url,
                            autocommit=True,
                            connect_timeout=5,
                            application_name=self._application_name,
                        )
                    started = time.perf_counter()
                    consumed = await refresh_once(conn, self._max_rows)
                    if consumed > 0:
                        self._metrics.rollup_partials.inc(consumed)
                        self._metrics.rollup_seconds.observe(time.perf_counter() - started)
                    self._metrics.rollup_refreshed.set_to_current_time()
                    failures = 0
                except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                    failures += 1
                    logger.warning("rollup refresh: database unavailable (%s)", exc)
                    await _close(conn)
                    conn = None
                except psycopg.Error:
                    failures += 1
                    logger.exception("rollup refresh failed; retrying")
                if consumed >= self._max_rows:
                    continue  # a backlog: keep going
                delay = self._interval
                if failures:
                    delay = min(self._backoff_max, 0.2 * 2 ** min(failures, 10))
                    delay *= random.uniform(0.5, 1.0)
                await wait_event(stop, delay)
        finally:
            await _close(conn)


async def _close(
    conn: psycopg.AsyncConnection[tuple[object, ...]] | None,
) -> None:
    if conn is not None:
        with contextlib.suppress(Exception):
            await conn.close()
