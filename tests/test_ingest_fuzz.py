"""Fuzz: 10,000 generated payloads through the broker never crash the ingester, and every
refusal lands in dead_letters with the reason the contract names; the rest is stored."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from core.registry import load_registry
from ingest.validate import Limits, check_readings, parse_message
from tests.ingest_helpers import (
    PrivateMosquitto,
    Publisher,
    SensorRow,
    add_sensors,
    running_ingester,
    scalar,
    settings_for,
    topic,
    wait_until,
)

PAYLOADS = 10_000
SENSORS = [
    SensorRow("p1", "power", 1),
    SensorRow("t1", "temperature", 1),
    SensorRow("f1", "fire", 1),
    SensorRow("l2", "load", 2),
    SensorRow("other-b", "power", 1, building="b2"),
]


def _weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, picked with the given weights (one_of picks evenly)."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(min_value=0, max_value=len(table) - 1).flatmap(lambda i: table[i])


def _strategies(t0: datetime) -> st.SearchStrategy[tuple[int, bytes]]:
    seconds = st.integers(min_value=0, max_value=3 * 24 * 3600)
    good_ts = seconds.map(lambda s: (t0 - timedelta(seconds=s)).isoformat())
    ts = st.one_of(
        good_ts,
        good_ts.map(lambda s: s.replace("+00:00", "Z")),
        seconds.map(lambda s: (t0 - timedelta(seconds=s)).replace(tzinfo=None).isoformat()),
        st.just((t0 + timedelta(hours=3)).isoformat()),
        st.just("2001-01-01T00:00:00Z"),
        st.text(max_size=12),
        st.integers(),
        st.none(),
    )
    value = st.one_of(
        st.floats(min_value=-10, max_value=1200),
        st.floats(),
        st.integers(min_value=-5, max_value=5),
        st.sampled_from([0.0, 1.0, 2.0, 3.0, 1e309]),
        st.text(max_size=3),
        st.booleans(),
        st.none(),
    )
    sensor = st.one_of(
        st.sampled_from([s.id for s in SENSORS] + ["nope", ""]), st.text(max_size=6), st.integers()
    )
    valid = st.fixed_dictionaries(
        {
            "sensor": st.sampled_from([s.id for s in SENSORS]),
            "ts": good_ts,
            "value": st.one_of(st.floats(min_value=0, max_value=900), st.sampled_from([0.0, 2.0])),
        }
    )
    reading = _weighted(
        (12, valid),
        (1, st.fixed_dictionaries({"sensor": sensor, "ts": ts, "value": value})),
        (
            1,
            st.fixed_dictionaries(
                {"sensor": sensor, "ts": ts}, optional={"value": value, "extra": st.integers()}
            ),
        ),
        (1, st.one_of(st.integers(), st.text(max_size=4))),
    )
    envelope = st.fixed_dictionaries(
        {
            "v": st.sampled_from([1] * 8 + [2, "1", None]),
            "source": _weighted((8, st.just("gw")), (1, st.text(max_size=4) | st.integers())),
            "seq": _weighted(
                (8, st.integers(min_value=0, max_value=10**6)), (1, st.text(max_size=2))
            ),
            "readings": _weighted(
                (10, st.lists(reading, min_size=1, max_size=6)),
                (1, st.one_of(st.integers(), st.none(), st.just([]))),
            ),
        },
    )
    envelope = _weighted((10, envelope), (1, envelope.map(lambda e: {**e, "junk": 1})))
    body = _weighted(
        (12, envelope.map(lambda e: json.dumps(e).encode())),
        (1, envelope.map(lambda e: json.dumps(e).encode()[:-3])),
        (1, st.binary(max_size=40)),
        (1, st.sampled_from([b"", b"null", b"[]", b"{}", b"\xff\xfe", b'"x"'])),
    )
    return st.tuples(st.sampled_from([0] * 6 + [1, 2, 3, 4]), body)


async def test_fuzz_10000_payloads(db_url, mqtt, tmp_session_dir):
    add_sensors(db_url, SENSORS)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    generated: list[tuple[int, bytes]] = []

    @settings(
        max_examples=PAYLOADS,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(_strategies(t0))
    def collect(item: tuple[int, bytes]) -> None:
        generated.append(item)

    collect()
    assert len(generated) >= PAYLOADS
    topics = [topic(1, mqtt.prefix), topic(2, mqtt.prefix), topic(1, mqtt.prefix, "b2")]
    topics += [
        f"{mqtt.prefix}upstairs/v1/b1/x/telemetry",
        f"{mqtt.prefix}upstairs/v1/b1/1/telemetry",
    ]
    sent = [(topics[k], payload) for k, payload in generated]

    # The oracle: the ingester's own pure checks, message by message.
    with psycopg.connect(db_url) as conn:
        registry = load_registry(conn)
    now = datetime.now(UTC)
    limits = Limits(timedelta(seconds=300), timedelta(days=400))
    expected_dead: Counter[str] = Counter()
    keys: set[tuple[str, datetime]] = set()
    for name, payload in sent:
        checked = check_readings(
            [parse_message(name, payload, mqtt.prefix, now)], registry, now, limits
        )
        expected_dead.update(str(d.reason) for d in checked.dead)
        keys.update((s, ts) for s, ts, _ in checked.rows)
        assert not checked.energy

    with PrivateMosquitto(tmp_session_dir / f"fuzz-{mqtt.prefix.strip('/')}") as broker:
        async with running_ingester(settings_for(db_url, broker.url, mqtt.prefix)) as task:
            with Publisher("127.0.0.1", broker.port, inflight=500) as pub:
                for name, payload in sent:
                    pub.publish(name, payload)
            total_dead = sum(expected_dead.values())
            await wait_until(
                lambda: scalar(db_url, "SELECT count(*) FROM dead_letters") >= total_dead, 60
            )
            await wait_until(lambda: scalar(db_url, "SELECT count(*) FROM readings") >= len(keys))
            assert not task.done()  # never crashed
    with_reason = scalar(db_url, "SELECT json_object_agg(reason, n) FROM (SELECT reason,"
                         " count(*) AS n FROM dead_letters GROUP BY 1) x")  # fmt: skip
    assert Counter(with_reason) == expected_dead
    assert scalar(db_url, "SELECT count(*) FROM readings") == len(keys)
    assert len(expected_dead) >= 10  # the generator reached most reasons
    assert len(keys) >= 100  # and produced valid readings too
