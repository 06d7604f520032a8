"""The multi-building load run works end to end (at CI size: two buildings, a few seconds)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest

from core.building_file import load_building
from tests.conftest import REF_TOWER, MqttTarget
from upstairs.bench_scale import due_in, offered_per_s, run


@pytest.mark.timeout(120)
def test_two_buildings_are_stored_as_fast_as_offered(
    pg_server_url: str, mqtt: MqttTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPSTAIRS_DATABASE_URL", pg_server_url)
    monkeypatch.setenv("UPSTAIRS_MQTT_URL", mqtt.url)
    result = run(buildings=2, duration_s=6.0, warmup_s=8.0, ingesters=2)
    assert result["sensors"] == 2 * 168
    offered = float(result["offered_readings_per_s"])  # type: ignore[arg-type]
    assert offered > 50
    # every reading the simulators took in the window is stored (within the grace); the
    # scenario's sensor faults drop a few on purpose
    due = result["readings_due_in_window"]
    assert isinstance(due, int) and due > 6 * offered / 3, result
    assert 0.9 <= float(result["ratio"]) <= 1.0, result  # type: ignore[arg-type]
    cpu = result["cpu_pct"]
    assert isinstance(cpu, dict) and set(cpu) == {"alerts", "api", "ingest", "simulator"}
    assert os.environ["UPSTAIRS_DATABASE_URL"] == pg_server_url


def test_readings_due_in_a_window_follow_the_sampling_instants() -> None:
    building = load_building(REF_TOWER)
    per_interval: dict[float, int] = {}
    for s in building.sensors:
        per_interval[s.interval_s] = per_interval.get(s.interval_s, 0) + 1
    at = datetime(2026, 12, 3, 10, 0, 0, tzinfo=UTC)  # a whole minute: every sensor samples
    assert due_in([building], at, at + timedelta(milliseconds=1)) == len(building.sensors)
    assert due_in([building], at + timedelta(seconds=1), at + timedelta(seconds=2)) == sum(
        n for iv, n in per_interval.items() if 1 % iv == 0
    )
    hour = due_in([building], at, at + timedelta(hours=1))
    assert hour == round(3600 * offered_per_s(building))  # a whole hour: exactly the rate
