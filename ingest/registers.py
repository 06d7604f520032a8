"""Energy registers: refuse a reading that would make a register go backwards, and work out
the kWh each in-order reading adds.

A cumulative register only goes up, except when it is reset (meter replaced, rollover): then
it restarts near zero, and the reading itself is the consumption since the reset. A drop to
more than the reset threshold is refused (``register_backwards``).

Most readings arrive in time order: they come after the register's newest stored reading
(``sensor_latest``), so the check needs nothing but that value. A late reading (older than
the newest) is checked against its stored neighbours instead. The kWh per bucket is worked
out later, from the stored readings, by the rollup refresh (``refresh_rollups``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from core.ranges import register_step_ok
from ingest.validate import Good

Key = tuple[str, datetime]


@dataclass(frozen=True, slots=True)
class Neighbours:
    prev_ts: datetime | None
    prev_value: float | None
    next_ts: datetime | None
    next_value: float | None


@dataclass(slots=True)
class RegisterVerdict:
    refused: list[Good] = field(default_factory=list)
    late: list[Good] = field(default_factory=list)  # accepted, older than the newest stored


def split_late(
    energy: list[Good], latest: Mapping[str, tuple[datetime, float]]
) -> tuple[list[Good], list[Good]]:
    """(in order, late) relative to each register's newest stored reading."""
    in_order: list[Good] = []
    late: list[Good] = []
    for g in energy:
        newest = latest.get(g.sensor)
        (in_order if newest is None or g.ts > newest[0] else late).append(g)
    return in_order, late


def judge(
    in_order: list[Good],
    late: list[Good],
    latest: Mapping[str, tuple[datetime, float]],
    neighbours: Mapping[Key, Neighbours],
    threshold: float,
) -> RegisterVerdict:
    verdict = RegisterVerdict()
    for readings in _by_sensor(late).values():
        accepted: Good | None = None
        for i, g in enumerate(readings):
            near = neighbours[(g.sensor, g.ts)]
            prev = near.prev_value
            if accepted is not None and (near.prev_ts is None or accepted.ts > near.prev_ts):
                prev = accepted.value
            if prev is not None and not register_step_ok(prev, g.value, threshold):
                verdict.refused.append(g)
                continue
            later = readings[i + 1].ts if i + 1 < len(readings) else None
            if (
                near.next_value is not None
                and near.next_ts is not None
                and (later is None or near.next_ts < later)
                and not register_step_ok(g.value, near.next_value, threshold)
            ):
                verdict.refused.append(g)
                continue
            accepted = g
            verdict.late.append(g)
    for sensor, readings in _by_sensor(in_order).items():
        newest = latest.get(sensor)
        prev = newest[1] if newest is not None else None
        for g in readings:
            if prev is not None and not register_step_ok(prev, g.value, threshold):
                verdict.refused.append(g)
                continue
            prev = g.value
    return verdict


def _by_sensor(readings: list[Good]) -> dict[str, list[Good]]:
    out: dict[str, list[Good]] = defaultdict(list)
    for g in readings:
        out[g.sensor].append(g)
    for items in out.values():
        items.sort(key=lambda g: g.ts)
    return out
