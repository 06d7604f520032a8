"""The multi-building load run works end to end (at CI size: two buildings, a few seconds)."""

from __future__ import annotations

import os

import pytest

from tests.conftest import MqttTarget
from upstairs.bench_scale import run


@pytest.mark.timeout(120)
def test_two_buildings_are_stored_as_fast_as_offered(
    pg_server_url: str, mqtt: MqttTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPSTAIRS_DATABASE_URL", pg_server_url)
    monkeypatch.setenv("UPSTAIRS_MQTT_URL", mqtt.url)
    result = run(buildings=2, duration_s=6.0, warmup_s=8.0, ingesters=2)
    assert result["sensors"] == 2 * 168
    offered = float(result["offered_readings_per_s"])  # type: ignore[arg-type]
    stored = float(result["readings_per_s"])  # type: ignore[arg-type]
    assert offered > 50
    # bursty per-second publishing: over a short window the stored rate wobbles around 1.0
    assert 0.6 < stored / offered < 1.6, result
    cpu = result["cpu_pct"]
    assert isinstance(cpu, dict) and set(cpu) == {"alerts", "api", "ingest", "simulator"}
    assert os.environ["UPSTAIRS_DATABASE_URL"] == pg_server_url
