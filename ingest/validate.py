"""From an MQTT message to checked readings and dead letters.

Two stages. :func:`parse_message` runs as each message arrives and needs nothing but the
bytes: topic, envelope, then each reading on its own, so one bad reading never costs its
neighbours. :func:`check_readings` runs when a batch is formed and needs the sensor registry
and the clock: unknown sensor, wrong building or floor, timestamp too far ahead or too old,
value outside the kind's physical range. The energy-register check needs the stored
neighbours and runs inside the batch transaction (:mod:`ingest.store`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from core.building import SensorKind
from core.payload import PayloadError, Reason, parse_envelope, parse_reading, parse_timestamp
from core.ranges import RANGES, range_problem
from core.registry import Registry, SensorInfo
from core.topics import Channel, Topic, TopicError, parse_topic

MAX_DEAD_PAYLOAD = 64 * 1024

# Kinds whose valid values are exactly an interval (fire states are a set: slow path).
_ENERGY = SensorKind.ENERGY
_PLAIN_RANGES = {kind: (r.low, r.high) for kind, r in RANGES.items() if kind is not SensorKind.FIRE}


@dataclass(frozen=True, slots=True)
class DeadLetter:
    received_at: datetime
    topic: str
    payload: bytes
    reason: Reason
    detail: str
    sensor_id: str | None = None


@dataclass(slots=True)
class Parsed:
    """One message after the registry-free checks."""

    topic_name: str
    received_at: datetime
    topic: Topic | None
    readings: list[tuple[str, datetime, float]] = field(default_factory=list)
    raws: list[Any] = field(default_factory=list)  # the wire form of each reading
    dead: list[DeadLetter] = field(default_factory=list)


Row = tuple[str, datetime, float]


class Good(NamedTuple):
    """An energy reading that passed every check that does not need the database."""

    sensor: str
    ts: datetime
    value: float
    kind: SensorKind
    raw: Any
    topic_name: str
    received_at: datetime


def _truncate(payload: bytes) -> bytes:
    return payload[:MAX_DEAD_PAYLOAD]


def reading_payload(raw: Any) -> bytes:
    """The wire form of one reading, for its dead-letter row."""
    try:
        text = json.dumps(raw, separators=(",", ":"), default=repr, allow_nan=True)
    except (TypeError, ValueError, RecursionError):
        text = repr(raw)
    return _truncate(text.encode("utf-8", "replace"))


def parse_message(topic_name: str, payload: bytes, prefix: str, received_at: datetime) -> Parsed:
    """Topic and envelope, then each reading; never raises on input."""
    try:
        topic = parse_topic(topic_name, prefix)
        if topic.channel is not Channel.TELEMETRY or topic.floor is None:
            raise TopicError(f"{topic_name!r} is not a telemetry topic")
    except TopicError as exc:
        dead = DeadLetter(received_at, topic_name, _truncate(payload), Reason.BAD_TOPIC, str(exc))
        return Parsed(topic_name, received_at, None, dead=[dead])
    parsed = Parsed(topic_name, received_at, topic)
    try:
        envelope = parse_envelope(payload)
    except PayloadError as exc:
        parsed.dead.append(
            DeadLetter(received_at, topic_name, _truncate(payload), exc.reason, exc.detail)
        )
        return parsed
    timestamps: dict[str, datetime] = {}
    for index, raw in enumerate(envelope.readings):
        fast = _fast_reading(raw, timestamps)
        if fast is not None:
            parsed.readings.append(fast)
            parsed.raws.append(raw)
            continue
        try:
            reading = parse_reading(raw)
        except PayloadError as exc:
            sensor = raw.get("sensor") if isinstance(raw, dict) else None
            parsed.dead.append(
                DeadLetter(
                    received_at,
                    topic_name,
                    reading_payload(raw),
                    exc.reason,
                    f"reading {index} of {envelope.source}#{envelope.seq}: {exc.detail}",
                    sensor[:128] if isinstance(sensor, str) else None,
                )
            )
            continue
        parsed.readings.append((reading.sensor, reading.ts, reading.value))
        parsed.raws.append(raw)
    return parsed


def _fast_reading(raw: Any, timestamps: dict[str, datetime]) -> tuple[str, datetime, float] | None:
    """The common, well-formed reading, accepted exactly as :func:`parse_reading` would.

    Anything unusual returns None and goes through ``parse_reading`` for its verdict. A
    message's readings usually share timestamps, so each distinct one is parsed once.
    """
    if type(raw) is not dict or len(raw) != 3:
        return None
    sensor, ts, value = raw.get("sensor"), raw.get("ts"), raw.get("value")
    if type(sensor) is not str or not 0 < len(sensor) <= 128 or type(ts) is not str:
        return None
    if type(value) is not float or not math.isfinite(value):
        return None
    when = timestamps.get(ts)
    if when is None:
        try:
            when = parse_timestamp(ts)
        except PayloadError:
            return None
        timestamps[ts] = when
    return sensor, when, value


@dataclass(frozen=True, slots=True)
class Limits:
    max_future: timedelta
    max_age: timedelta


@dataclass(slots=True)
class Checked:
    """A batch after the registry, clock and range checks."""

    rows: list[Row]  # ready to store
    energy: list[Good]  # energy registers: still to be checked against the stored ones
    dead: list[DeadLetter]


def check_readings(
    messages: list[Parsed], registry: Registry, now: datetime, limits: Limits
) -> Checked:
    """Registry, clock and range checks of every parsed reading of a batch."""
    rows: list[Row] = []
    energy: list[Good] = []
    dead: list[DeadLetter] = []
    newest = now + limits.max_future
    oldest = now - limits.max_age
    for message in messages:
        dead.extend(message.dead)
        topic = message.topic
        if topic is None:
            continue
        for reading, raw in zip(message.readings, message.raws, strict=True):
            sensor, ts, value = reading
            info = registry.get(sensor)
            if (
                info is not None
                and info.building == topic.building
                and info.floor == topic.floor
                and oldest <= ts <= newest
                and (kind := info.kind) in _PLAIN_RANGES
                and _PLAIN_RANGES[kind][0] <= value <= _PLAIN_RANGES[kind][1]
            ):
                if kind is _ENERGY:
                    energy.append(
                        Good(sensor, ts, value, kind, raw, message.topic_name, message.received_at)
                    )
                else:
                    rows.append(reading)
                continue
            problem = _problem(reading, info, topic, newest, oldest)
            if problem is None:
                assert info is not None
                if info.kind is _ENERGY:
                    energy.append(
                        Good(
                            sensor,
                            ts,
                            value,
                            info.kind,
                            raw,
                            message.topic_name,
                            message.received_at,
                        )
                    )
                else:
                    rows.append(reading)
            else:
                reason, detail = problem
                dead.append(
                    DeadLetter(
                        message.received_at,
                        message.topic_name,
                        reading_payload(raw),
                        reason,
                        detail,
                        sensor,
                    )
                )
    return Checked(rows, energy, dead)


def _problem(
    reading: tuple[str, datetime, float],
    info: SensorInfo | None,
    topic: Topic,
    newest: datetime,
    oldest: datetime,
) -> tuple[Reason, str] | None:
    sensor, ts, value = reading
    if info is None:
        return Reason.UNKNOWN_SENSOR, f"sensor {sensor!r} is not registered"
    if info.building != topic.building:
        return (
            Reason.WRONG_BUILDING,
            f"sensor {sensor!r} belongs to building {info.building!r},"
            f" the topic says {topic.building!r}",
        )
    if info.floor != topic.floor:
        return (
            Reason.WRONG_FLOOR,
            f"sensor {sensor!r} is registered on floor {info.floor}, the topic says {topic.floor}",
        )
    if ts > newest:
        return Reason.FUTURE_TIMESTAMP, f"timestamp {ts.isoformat()} is in the future"
    if ts < oldest:
        return Reason.BAD_TIMESTAMP, f"timestamp {ts.isoformat()} is too old to store"
    problem = range_problem(info.kind, value)
    if problem is not None:
        return Reason.OUT_OF_RANGE, problem
    return None
