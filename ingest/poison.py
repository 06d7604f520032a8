"""A message the database refuses (not a connection problem) must not stall intake.

The writer retries connection failures forever, but a batch that fails for any other reason
(a constraint the data breaks, a value the server cannot take: :data:`REFUSED_DATA`) would
fail forever too. The
writer then halves the batch by messages (:meth:`ingest.service.Writer._isolate`), and within
a single refused message halves its readings here until each refused reading stands alone:
it becomes a ``rejected_by_database`` dead letter with the server's message, and everything
else is stored.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import psycopg

from core.payload import Reason
from ingest.store import Store, WriteOutcome
from ingest.validate import Checked, DeadLetter, Good, Parsed, Row, reading_payload

logger = logging.getLogger(__name__)

# Errors that blame the data (SQLSTATE classes 22 and 23: a value the server cannot take, a
# constraint the row breaks). Anything else is retried with the batch kept.
REFUSED_DATA = (psycopg.DataError, psycopg.IntegrityError)


async def bisect_readings(
    store: Store, checked: Checked, message: Parsed, error: psycopg.Error
) -> list[WriteOutcome]:
    """Write ``checked`` (one message) in halves; dead-letter each reading refused alone."""
    items: list[Row | Good] = [*checked.rows, *checked.energy]
    if len(items) <= 1:
        letters = [*checked.dead, *_rejected(checked, message, error)]
        return [await store.write(Checked([], [], letters))]
    mid = len(items) // 2
    parts = [_part(items[:mid], checked.dead), _part(items[mid:], [])]
    out: list[WriteOutcome] = []
    for part in parts:
        try:
            out.append(await store.write(part))
        except REFUSED_DATA as exc:
            out.extend(await bisect_readings(store, part, message, exc))
    return out


def _part(items: list[Row | Good], dead: list[DeadLetter]) -> Checked:
    rows: list[Row] = []
    energy: list[Good] = []
    for item in items:
        if isinstance(item, Good):
            energy.append(item)
        else:
            rows.append(item)
    return Checked(rows, energy, dead)


def _rejected(checked: Checked, message: Parsed, error: psycopg.Error) -> list[DeadLetter]:
    detail = f"the database refused the reading: {type(error).__name__}: {error}"[:2000]
    out: list[DeadLetter] = []
    for sensor, ts, value in checked.rows:
        raw = {"sensor": sensor, "ts": ts.isoformat(), "value": value}
        out.append(_letter(message, raw, detail, sensor))
    for g in checked.energy:
        out.append(_letter(message, g.raw, detail, g.sensor))
    if out:
        logger.warning("dead-lettered a reading the database refuses: %s", detail)
    return out


def _letter(message: Parsed, raw: object, detail: str, sensor: str) -> DeadLetter:
    letter = DeadLetter(
        message.received_at, message.topic_name, b"", Reason.REJECTED_BY_DATABASE, detail, sensor
    )
    return replace(letter, payload=reading_payload(raw))
