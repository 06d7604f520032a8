"""The rollup refresher's heartbeat as the API reports it (``/readyz``, ``/metrics``).

The refresher stamps ``rollup_refresher.refreshed_at`` on every refresh (migration 0020). Reading
it must never cost the API its readiness or hang a probe: it is read under a statement timeout
(a lock on the table waits at most that), a failure to read it is logged and leaves the last
good reading, and when no connection is free at once (``/metrics`` under load) the last good
reading stands in, aged by the time since it was read.
"""

from __future__ import annotations

import logging
import time

import psycopg
from psycopg.rows import DictRow

logger = logging.getLogger(__name__)

AGE_SQL = (
    "SELECT extract(epoch FROM clock_timestamp() - refreshed_at)::float8 AS age"
    "  FROM rollup_refresher"
)
STATEMENT_TIMEOUT = "1s"


class RefresherAge:
    """Seconds since the refresher last ran, as last read; None when unknown."""

    def __init__(self) -> None:
        self._age: float | None = None
        self._read_at = 0.0

    def estimate(self) -> float | None:
        """The last good reading, aged by the time since it was read."""
        if self._age is None:
            return None
        return round(self._age + time.monotonic() - self._read_at, 3)

    async def read(self, conn: psycopg.AsyncConnection[DictRow]) -> float | None:
        """Read the heartbeat on ``conn`` (in a transaction or savepoint of its own); on an
        error, the estimate from the last good reading."""
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT}'")
                cur = await conn.execute(AGE_SQL)
                row = await cur.fetchone()
        except psycopg.Error as exc:
            logger.warning("rollup refresher heartbeat not read: %s", exc)
            return self.estimate()
        self._age = None if row is None else max(0.0, float(row["age"]))
        self._read_at = time.monotonic()
        return self.estimate()
