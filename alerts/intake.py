"""The fast path from a telemetry message to the engine: parse, check, hand over.

It applies the checks of :func:`core.payload.parse_envelope` / :func:`parse_reading` (a
reading is an object of exactly ``sensor``, ``ts`` with a UTC offset and a finite number
``value``; booleans are not numbers) and the registry checks of the engine (known sensor,
registered on the topic's floor), cheapest first: a reading of a sensor this building does
not know is dropped before its timestamp is parsed. Readings of one batch usually share a
timestamp, so each distinct timestamp text is parsed once per message. Refused readings are
the ingester's business (dead letters); the engine only skips them.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime

from alerts.engine import BuildingEngine
from core.payload import PayloadError, parse_envelope, parse_timestamp

logger = logging.getLogger(__name__)

_KEYS = frozenset({"sensor", "ts", "value"})


def feed_telemetry(engine: BuildingEngine, floor: int, payload: bytes, now: datetime) -> int:
    """Hand every acceptable reading of ``payload`` to ``engine``; return how many it took."""
    try:
        envelope = parse_envelope(payload)
    except PayloadError as exc:
        logger.debug("refused telemetry (%s): %.200r", exc, payload)
        return 0
    sensors = engine.live.sensors
    stamps: dict[str, datetime | None] = {}
    taken = 0
    for raw in envelope.readings:
        if type(raw) is not dict or len(raw) != 3 or raw.keys() != _KEYS:
            continue
        sensor = raw["sensor"]
        live = sensors.get(sensor) if type(sensor) is str else None
        if live is None or live.sensor.floor != floor:
            continue
        value = raw["value"]
        kind = type(value)
        if kind is float:
            if not math.isfinite(value):
                continue
        elif kind is int:
            try:
                value = float(value)
            except OverflowError:
                continue
        else:
            continue
        text = raw["ts"]
        if type(text) is not str:
            continue
        if text in stamps:
            ts = stamps[text]
        else:
            try:
                ts = parse_timestamp(text)
            except PayloadError:
                ts = None
            stamps[text] = ts
        if ts is None:
            continue
        if engine.on_reading(sensor, ts, value, now):
            taken += 1
    return taken
