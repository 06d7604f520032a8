"""``upstairs bench ingest`` end to end at CI size: the counts it reports come from the database.

The speed figures are the benchmark's business (run it on a quiet machine, see docs/ingest.md);
here it must deliver every reading exactly once, through both message shapes it measures.
"""

from __future__ import annotations

import pytest

from ingest.bench import run
from tests.conftest import MqttTarget


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("batch", "readings"), [(50, 6_000), (1, 1_500)])
def test_bench_stores_every_reading_once(
    pg_server_url: str, mqtt: MqttTarget, batch: int, readings: int
) -> None:
    report = run(pg_server_url, mqtt.url, readings, batch, 2, 100, window=200)
    assert report.lost == 0 and report.duplicated == 0, report
    assert report.rollups_consistent, report
    assert report.readings_per_s > 0 and report.copy_ceiling_rows_per_s > 0
    assert report.ratio == pytest.approx(
        report.readings_per_s / report.copy_ceiling_rows_per_s, abs=0.002
    )
    assert report.broker_msgs_per_s > 0
    assert 0 < report.rss_mb < 500
