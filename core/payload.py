"""Payload model of wire contract v1.

A telemetry message is a batch of readings from one floor gateway or device::

    {"v": 1, "source": "b1-f03-gw", "seq": 1234,
     "readings": [{"sensor": "b1-f03-load-z2", "ts": "2026-11-21T23:59:59.120Z", "value": 412.5}]}

Kind, unit, floor, zone and tenant come from the sensor registry, never from the payload.
Parsing is split in two steps so that one bad reading never costs its neighbours: the
envelope is checked first, then each reading on its own (:func:`parse_reading`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

CONTRACT_VERSION = 1
MAX_READINGS_PER_MESSAGE = 10_000


class Reason(StrEnum):
    """Why a message or a reading was refused; each becomes a dead-letter row."""

    NOT_JSON = "not_json"
    BAD_SHAPE = "bad_shape"
    BAD_VERSION = "bad_version"
    BAD_TOPIC = "bad_topic"
    UNKNOWN_SENSOR = "unknown_sensor"
    WRONG_FLOOR = "wrong_floor"
    WRONG_BUILDING = "wrong_building"
    NAIVE_TIMESTAMP = "naive_timestamp"
    BAD_TIMESTAMP = "bad_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    NON_FINITE = "non_finite_value"
    OUT_OF_RANGE = "out_of_range"
    REGISTER_BACKWARDS = "register_backwards"
    REJECTED_BY_DATABASE = "rejected_by_database"  # the database refused the reading itself


class PayloadError(ValueError):
    """A refused message or reading, with the reason that goes to the dead-letter table."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class ReadingIn(BaseModel):
    """One reading as it travels on the wire."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sensor: str = Field(min_length=1, max_length=128)
    ts: datetime
    value: float

    @field_validator("ts")
    @classmethod
    def _aware(cls, ts: datetime) -> datetime:
        if ts.tzinfo is None or ts.utcoffset() is None:
            raise ValueError("timestamp must carry a UTC offset")
        return ts.astimezone(UTC)


class Telemetry(BaseModel):
    """A whole telemetry message, for publishers (gateways, simulators)."""

    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    source: str = Field(min_length=1, max_length=128)
    seq: int = Field(ge=0)
    readings: list[ReadingIn] = Field(max_length=MAX_READINGS_PER_MESSAGE)


class GatewayStatus(BaseModel):
    """Retained birth / last-will of a floor gateway on ``.../{floor}/status``."""

    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    source: str
    state: Literal["online", "offline"]
    ts: datetime | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Reading:
    """A reading that passed the per-reading checks (not yet the registry checks)."""

    sensor: str
    ts: datetime
    value: float


@dataclass(frozen=True, slots=True)
class Envelope:
    source: str
    seq: int
    readings: list[Any]


def _loads(payload: bytes) -> Any:
    """orjson for speed; the standard library decides whatever orjson refuses.

    NaN / Infinity (not JSON, but sent by real devices), integers past 64 bits and lone
    surrogates fail in orjson and parse in ``json``: NaN and Infinity become floats that are
    refused per reading (non_finite_value), so one bad value does not cost the valid
    readings next to it. Anything ``json`` refuses too is ``not_json``.
    """
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return json.loads(payload)


def encode_ts(ts: datetime) -> str:
    """RFC 3339 UTC with millisecond precision and a ``Z``."""
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_telemetry(source: str, seq: int, readings: list[Reading]) -> bytes:
    """Serialise a batch the way every publisher should (compact JSON, UTF-8)."""
    body = {
        "v": CONTRACT_VERSION,
        "source": source,
        "seq": seq,
        "readings": [
            {"sensor": r.sensor, "ts": encode_ts(r.ts), "value": r.value} for r in readings
        ],
    }
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def parse_envelope(payload: bytes) -> Envelope:
    """Check the message envelope; raise :class:`PayloadError` for a message-wide fault."""
    try:
        body = _loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise PayloadError(Reason.NOT_JSON, str(exc)[:200]) from exc
    if not isinstance(body, dict):
        raise PayloadError(Reason.BAD_SHAPE, f"top level is {type(body).__name__}, not object")
    if "v" not in body:
        raise PayloadError(Reason.BAD_SHAPE, "missing key 'v'")
    if body["v"] != CONTRACT_VERSION or isinstance(body["v"], bool):
        raise PayloadError(Reason.BAD_VERSION, f"v={body['v']!r}, this ingester speaks v1")
    extra = set(body) - {"v", "source", "seq", "readings"}
    if extra:
        raise PayloadError(Reason.BAD_SHAPE, f"unknown keys {sorted(extra)}")
    source, seq, readings = body.get("source"), body.get("seq"), body.get("readings")
    if not isinstance(source, str) or not source or len(source) > 128:
        raise PayloadError(Reason.BAD_SHAPE, "'source' must be a non-empty string")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise PayloadError(Reason.BAD_SHAPE, "'seq' must be a non-negative integer")
    if not isinstance(readings, list):
        raise PayloadError(Reason.BAD_SHAPE, "'readings' must be a list")
    if len(readings) > MAX_READINGS_PER_MESSAGE:
        raise PayloadError(
            Reason.BAD_SHAPE, f"{len(readings)} readings, at most {MAX_READINGS_PER_MESSAGE}"
        )
    return Envelope(source, seq, readings)


def parse_timestamp(raw: object) -> datetime:
    """Parse an RFC 3339 timestamp that carries an offset, to UTC."""
    if not isinstance(raw, str):
        raise PayloadError(Reason.BAD_TIMESTAMP, f"'ts' must be a string, got {type(raw).__name__}")
    text = raw.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        ts = datetime.fromisoformat(text)
    except ValueError as exc:
        raise PayloadError(Reason.BAD_TIMESTAMP, f"unparsable timestamp {raw[:64]!r}") from exc
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise PayloadError(Reason.NAIVE_TIMESTAMP, f"timestamp {raw[:64]!r} has no UTC offset")
    return ts.astimezone(UTC)


def parse_reading(raw: object) -> Reading:
    """Check one reading of an envelope; raise :class:`PayloadError` if it is refused."""
    if not isinstance(raw, dict):
        raise PayloadError(Reason.BAD_SHAPE, f"reading is {type(raw).__name__}, not object")
    keys = set(raw)
    if keys != {"sensor", "ts", "value"}:
        missing, extra = {"sensor", "ts", "value"} - keys, keys - {"sensor", "ts", "value"}
        raise PayloadError(
            Reason.BAD_SHAPE, f"reading keys: missing {sorted(missing)}, unknown {sorted(extra)}"
        )
    sensor = raw["sensor"]
    if not isinstance(sensor, str) or not sensor or len(sensor) > 128:
        raise PayloadError(Reason.BAD_SHAPE, "'sensor' must be a non-empty string")
    value = raw["value"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError(
            Reason.BAD_SHAPE, f"'value' must be a number, got {type(value).__name__}"
        )
    try:
        fvalue = float(value)
    except OverflowError as exc:
        raise PayloadError(Reason.NON_FINITE, "value does not fit a double") from exc
    if not math.isfinite(fvalue):
        raise PayloadError(Reason.NON_FINITE, f"value {value!r} is not finite")
    return Reading(sensor, parse_timestamp(raw["ts"]), fvalue)
