"""The gateway's store-and-forward queue: readings on disk (SQLite, WAL) until their PUBACK.

Every reading the gateway polls is committed here once per publish interval, whether or not the
broker is reachable; it is deleted only when the broker has acknowledged the message that
carried it. Row ids only grow (AUTOINCREMENT), so "oldest first" is "lowest id first".

Two caps bound the file: a count (``max_readings``) and an age (``max_age_s``, measured on the
readings' own poll timestamps). Past a cap the oldest readings are deleted, counted, and a gap
record is kept until a gap event about it has been acknowledged by the broker.

The file's schema is versioned with ``PRAGMA user_version``; a file of an unknown version is
refused, never rewritten.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE readings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sensor TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    value REAL NOT NULL
);
CREATE INDEX readings_ts ON readings (ts_ms);
CREATE TABLE gaps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    reason TEXT NOT NULL,
    dropped INTEGER NOT NULL,
    first_ts_ms INTEGER NOT NULL,
    last_ts_ms INTEGER NOT NULL
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta (key, value) VALUES ('next_seq', 0), ('dropped_total', 0);
"""

GapReason = Literal["count_cap", "age_cap"]

Row = tuple[int, str, int, float]
"""(id, sensor, ts in ms since 1970 UTC, value)"""


class QueueError(RuntimeError):
    """The queue file cannot be used (unknown schema version, not SQLite...)."""


@dataclass(frozen=True, slots=True)
class Gap:
    """Readings dropped by a cap: how many, and the poll times of the first and last."""

    id: int
    reason: GapReason
    dropped: int
    first_ts_ms: int
    last_ts_ms: int


class ReadingQueue:
    """The SQLite queue of one gateway. Not thread-safe: use it from one event loop."""

    def __init__(
        self,
        path: Path,
        *,
        max_readings: int,
        max_age_s: float,
        full_sync: bool = False,
    ) -> None:
        if max_readings < 1 or max_age_s <= 0:
            raise ValueError("queue caps must be positive")
        self.path = path
        self.max_readings = max_readings
        self.max_age_ms = round(max_age_s * 1000)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if full_sync else 'NORMAL'}")
            self._migrate()
            self.count: int = self._db.execute("SELECT count(*) FROM readings").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise QueueError(f"{path}: {exc}") from exc
        self._sent_gaps: set[int] = set()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version != 0:
            raise QueueError(
                f"{self.path} has queue schema version {version}; this gateway knows "
                f"{SCHEMA_VERSION}. Drain it with the gateway that wrote it."
            )
        with self._transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ReadingQueue:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------

    def append(self, rows: list[tuple[str, int, float]], now_ms: int) -> tuple[int, int] | None:
        """Commit readings (sensor, ts_ms, value); return their first and last id.

        The caps are applied in the same transaction: the oldest readings past them go, and
        the returned range may then hold fewer rows than given (if the new ones were old).
        """
        if not rows:
            self.enforce_caps(now_ms)
            return None
        with self._transaction():
            cursor = self._db.executemany(
                "INSERT INTO readings (sensor, ts_ms, value) VALUES (?, ?, ?)", rows
            )
            last = self._db.execute("SELECT last_insert_rowid()").fetchone()[0]
            self.count += cursor.rowcount if cursor.rowcount >= 0 else len(rows)
            self._apply_caps(now_ms)
        return last - len(rows) + 1, last

    def enforce_caps(self, now_ms: int) -> int:
        """Apply the caps; return how many readings they dropped."""
        with self._transaction():
            return self._apply_caps(now_ms)

    def _apply_caps(self, now_ms: int) -> int:
        dropped = 0
        cutoff = now_ms - self.max_age_ms
        oldest = self._db.execute("SELECT min(ts_ms) FROM readings").fetchone()[0]
        if oldest is not None and oldest < cutoff:
            dropped += self._drop("age_cap", "ts_ms < ?", cutoff)
        excess = self.count - self.max_readings
        if excess > 0:
            border = self._db.execute(
                "SELECT id FROM readings ORDER BY id LIMIT 1 OFFSET ?", (excess - 1,)
            ).fetchone()[0]
            dropped += self._drop("count_cap", "id <= ?", border)
        return dropped

    def _drop(self, reason: GapReason, where: str, arg: int) -> int:
        n, first, last = self._db.execute(
            f"SELECT count(*), min(ts_ms), max(ts_ms) FROM readings WHERE {where}", (arg,)
        ).fetchone()
        if not n:
            return 0
        self._db.execute(f"DELETE FROM readings WHERE {where}", (arg,))
        self.count -= n
        self._db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped_total'", (n,))
        open_gap = self._db.execute(
            "SELECT id FROM gaps WHERE reason = ? ORDER BY id DESC LIMIT 1", (reason,)
        ).fetchone()
        if open_gap is not None and open_gap[0] not in self._sent_gaps:
            self._db.execute(
                "UPDATE gaps SET dropped = dropped + ?, first_ts_ms = min(first_ts_ms, ?),"
                " last_ts_ms = max(last_ts_ms, ?) WHERE id = ?",
                (n, first, last, open_gap[0]),
            )
        else:
            self._db.execute(
                "INSERT INTO gaps (reason, dropped, first_ts_ms, last_ts_ms) VALUES (?, ?, ?, ?)",
                (reason, n, first, last),
            )
        return int(n)

    def ack(self, first_id: int, last_id: int) -> int:
        """The broker has the readings with ids first..last: delete them."""
        with self._transaction():
            cursor = self._db.execute(
                "DELETE FROM readings WHERE id BETWEEN ? AND ?", (first_id, last_id)
            )
            self.count -= cursor.rowcount
        return cursor.rowcount

    # -- reading ---------------------------------------------------------------------------

    def fetch(self, after_id: int, upto_id: int, limit: int) -> list[Row]:
        """Up to ``limit`` readings with after_id < id <= upto_id, oldest first."""
        return self._db.execute(
            "SELECT id, sensor, ts_ms, value FROM readings WHERE id > ? AND id <= ?"
            " ORDER BY id LIMIT ?",
            (after_id, upto_id, limit),
        ).fetchall()

    def last_id(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'")
        found = row.fetchone()
        return int(found[0]) if found else 0

    def oldest_ts_ms(self) -> int | None:
        found = self._db.execute("SELECT ts_ms FROM readings ORDER BY id LIMIT 1").fetchone()
        return int(found[0]) if found else None

    @property
    def dropped_total(self) -> int:
        return self._meta("dropped_total")

    def _meta(self, key: str) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    # -- message sequence numbers and gap records -----------------------------------------

    def reserve_seq(self, n: int = 1) -> int:
        """The first of ``n`` telemetry sequence numbers, committed before they are used."""
        with self._transaction():
            first = self._meta("next_seq")
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (first + n,))
        return first

    def take_gaps(self) -> list[Gap]:
        """Gap records not yet handed out; later drops no longer merge into them."""
        rows = self._db.execute(
            "SELECT id, reason, dropped, first_ts_ms, last_ts_ms FROM gaps ORDER BY id"
        ).fetchall()
        gaps = [Gap(*row) for row in rows if row[0] not in self._sent_gaps]
        self._sent_gaps.update(g.id for g in gaps)
        return gaps

    def release_gaps(self, gaps: list[Gap]) -> None:
        """Their gap events were not acknowledged: hand them out again later."""
        self._sent_gaps.difference_update(g.id for g in gaps)

    def ack_gap(self, gap: Gap) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM gaps WHERE id = ?", (gap.id,))
        self._sent_gaps.discard(gap.id)
