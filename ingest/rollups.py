"""Partial aggregates of a batch's newly stored readings, per sensor and bucket.

The database merges them into ``rollups_1m`` / ``rollups_1h`` (``merge_rollups`` in migration
0002). Every column merges exactly, so a bucket's row equals an aggregate over all its raw
readings no matter in which order or in how many batches they arrived. Buckets are UTC.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(slots=True)
class Partial:
    count: int
    sum: float
    min: float
    max: float
    last_ts: datetime
    last_value: float
    energy: float | None = None

    def add(self, ts: datetime, value: float, kwh: float | None) -> None:
        self.count += 1
        self.sum += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        if ts > self.last_ts:
            self.last_ts = ts
            self.last_value = value
        if kwh is not None:
            self.energy = kwh if self.energy is None else self.energy + kwh

    def merge(self, other: Partial) -> None:
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        if other.last_ts > self.last_ts:
            self.last_ts = other.last_ts
            self.last_value = other.last_value
        if other.energy is not None:
            self.energy = other.energy if self.energy is None else self.energy + other.energy


Key = tuple[str, datetime]


def minute_partials(
    rows: Iterable[tuple[str, datetime, float]], kwh: Mapping[Key, float] | None = None
) -> dict[Key, Partial]:
    """Per (sensor, UTC minute) partial aggregates of ``rows`` (timestamps in UTC).

    ``kwh`` maps (sensor, ts) of energy readings taken in time order to the kWh they add.
    This is the hottest loop of the ingester: plain lists while accumulating.
    """
    acc: dict[Key, list[Any]] = {}
    minute_of: dict[datetime, datetime] = {}
    for sensor, ts, value in rows:
        bucket = minute_of.get(ts)
        if bucket is None:
            bucket = minute_of[ts] = ts.replace(second=0, microsecond=0)
        key = (sensor, bucket)
        energy = kwh.get((sensor, ts)) if kwh else None
        part = acc.get(key)
        if part is None:
            acc[key] = [1, value, value, value, ts, value, energy]
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
        if energy is not None:
            part[6] = energy if part[6] is None else part[6] + energy
    return {key: Partial(*part) for key, part in acc.items()}


def hour_partials(minutes: dict[Key, Partial]) -> dict[Key, Partial]:
    """Roll minute partials up to (sensor, UTC hour)."""
    out: dict[Key, Partial] = {}
    for (sensor, bucket), part in minutes.items():
        key = (sensor, bucket.replace(minute=0))
        have = out.get(key)
        if have is None:
            out[key] = Partial(
                part.count,
                part.sum,
                part.min,
                part.max,
                part.last_ts,
                part.last_value,
                part.energy,
            )
        else:
            have.merge(part)
    return out


def as_arrays(partials: dict[Key, Partial]) -> tuple[list[object], ...]:
    """Column arrays for ``merge_rollups``, sorted by key (a fixed lock order)."""
    keys = sorted(partials)
    parts = [partials[k] for k in keys]
    return (
        [k[0] for k in keys],
        [k[1] for k in keys],
        [p.count for p in parts],
        [p.sum for p in parts],
        [p.min for p in parts],
        [p.max for p in parts],
        [p.last_ts for p in parts],
        [p.last_value for p in parts],
        [p.energy for p in parts],
    )
