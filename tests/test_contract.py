"""Wire contract v1: topics and payloads."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from core.payload import (
    PayloadError,
    Reading,
    Reason,
    Telemetry,
    encode_telemetry,
    parse_envelope,
    parse_reading,
)
from core.topics import (
    Channel,
    Topic,
    TopicError,
    alerts_topic,
    parse_topic,
    state_topic,
    status_topic,
    subscription,
    telemetry_topic,
)


def test_topics_round_trip() -> None:
    assert telemetry_topic("b1", 3) == "upstairs/v1/b1/3/telemetry"
    assert status_topic("b1", 10) == "upstairs/v1/b1/10/status"
    assert state_topic("b1", 1, prefix="t-x/") == "t-x/upstairs/v1/b1/1/state"
    assert alerts_topic("b1") == "upstairs/v1/b1/alerts"
    assert parse_topic("upstairs/v1/b1/3/telemetry") == Topic("b1", Channel.TELEMETRY, 3)
    assert parse_topic("t-x/upstairs/v1/b1/alerts", prefix="t-x/") == Topic("b1", Channel.ALERTS)
    assert subscription(Channel.TELEMETRY) == "upstairs/v1/+/+/telemetry"
    assert subscription(Channel.ALERTS, "p/") == "p/upstairs/v1/+/alerts"


@pytest.mark.parametrize(
    "topic",
    [
        "upstairs/v2/b1/3/telemetry",
        "upstairs/v1/b1/x/telemetry",
        "upstairs/v1/b1/3/nonsense",
        "upstairs/v1/b1/3/alerts",
        "upstairs/v1/b1/telemetry",
        "other/v1/b1/3/telemetry",
        "upstairs/v1/b+1/3/telemetry",
        "upstairs/v1/b1/3/telemetry/extra",
    ],
)
def test_bad_topics_are_refused(topic: str) -> None:
    with pytest.raises(TopicError):
        parse_topic(topic)


@pytest.mark.parametrize("bad", ["a/b", "a+", "#", "", "-x"])
def test_builders_refuse_wildcards(bad: str) -> None:
    with pytest.raises(TopicError):
        telemetry_topic(bad, 1)


def test_encode_then_parse() -> None:
    ts = datetime(2026, 11, 21, 23, 59, 59, 120000, tzinfo=UTC)
    payload = encode_telemetry("b1-f03-gw", 1234, [Reading("b1-f03-load-z2", ts, 412.5)])
    body = json.loads(payload)
    assert body == {
        "v": 1,
        "source": "b1-f03-gw",
        "seq": 1234,
        "readings": [
            {"sensor": "b1-f03-load-z2", "ts": "2026-11-21T23:59:59.120Z", "value": 412.5}
        ],
    }
    envelope = parse_envelope(payload)
    assert (envelope.source, envelope.seq) == ("b1-f03-gw", 1234)
    assert parse_reading(envelope.readings[0]) == Reading("b1-f03-load-z2", ts, 412.5)
    Telemetry.model_validate_json(payload)  # publishers' model agrees with the parser


def test_nan_in_json_costs_only_its_reading() -> None:
    envelope = parse_envelope(
        b'{"v":1,"source":"s","seq":1,"readings":[{"sensor":"a","ts":"2026-11-22T00:00:00Z",'
        b'"value":NaN},{"sensor":"b","ts":"2026-11-22T00:00:00Z","value":1.5}]}'
    )
    with pytest.raises(PayloadError) as info:
        parse_reading(envelope.readings[0])
    assert info.value.reason is Reason.NON_FINITE
    assert parse_reading(envelope.readings[1]).value == 1.5


def test_offsets_become_utc() -> None:
    reading = parse_reading({"sensor": "s", "ts": "2026-11-22T08:00:00+08:00", "value": 1})
    assert reading.ts == datetime(2026, 11, 22, 0, 0, tzinfo=UTC)
    assert reading.ts.tzinfo is UTC or reading.ts.utcoffset() == timedelta(0)
    assert UTC.utcoffset(None) == timedelta(0)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", Reason.NOT_JSON),
        (b"\xff\xfe", Reason.NOT_JSON),
        (b"[1, 2]", Reason.BAD_SHAPE),
        (b'{"source": "s", "seq": 1, "readings": []}', Reason.BAD_SHAPE),
        (b'{"v": 2, "source": "s", "seq": 1, "readings": []}', Reason.BAD_VERSION),
        (b'{"v": true, "source": "s", "seq": 1, "readings": []}', Reason.BAD_VERSION),
        (b'{"v": 1, "source": "", "seq": 1, "readings": []}', Reason.BAD_SHAPE),
        (b'{"v": 1, "source": "s", "seq": -1, "readings": []}', Reason.BAD_SHAPE),
        (b'{"v": 1, "source": "s", "seq": 1, "readings": {}}', Reason.BAD_SHAPE),
        (b'{"v": 1, "source": "s", "seq": 1, "readings": [], "x": 1}', Reason.BAD_SHAPE),
    ],
)
def test_bad_envelopes(payload: bytes, reason: Reason) -> None:
    with pytest.raises(PayloadError) as info:
        parse_envelope(payload)
    assert info.value.reason is reason


@pytest.mark.parametrize(
    ("reading", "reason"),
    [
        ("x", Reason.BAD_SHAPE),
        ({"sensor": "s", "ts": "2026-11-22T00:00:00Z"}, Reason.BAD_SHAPE),
        ({"sensor": "s", "ts": "2026-11-22T00:00:00Z", "value": 1, "unit": "kW"}, Reason.BAD_SHAPE),
        ({"sensor": "", "ts": "2026-11-22T00:00:00Z", "value": 1}, Reason.BAD_SHAPE),
        ({"sensor": "s", "ts": "2026-11-22T00:00:00Z", "value": "1"}, Reason.BAD_SHAPE),
        ({"sensor": "s", "ts": "2026-11-22T00:00:00Z", "value": True}, Reason.BAD_SHAPE),
        ({"sensor": "s", "ts": "2026-11-22T00:00:00Z", "value": 10**400}, Reason.NON_FINITE),
        ({"sensor": "s", "ts": "2026-11-22T00:00:00Z", "value": float("nan")}, Reason.NON_FINITE),
        ({"sensor": "s", "ts": "2026-11-22T00:00:00Z", "value": float("inf")}, Reason.NON_FINITE),
        ({"sensor": "s", "ts": "2026-11-22T00:00:00", "value": 1}, Reason.NAIVE_TIMESTAMP),
        ({"sensor": "s", "ts": "yesterday", "value": 1}, Reason.BAD_TIMESTAMP),
        ({"sensor": "s", "ts": 1700000000, "value": 1}, Reason.BAD_TIMESTAMP),
    ],
)
def test_bad_readings(reading: object, reason: Reason) -> None:
    with pytest.raises(PayloadError) as info:
        parse_reading(reading)
    assert info.value.reason is reason
