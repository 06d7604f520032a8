"""The API benchmark works end to end at CI size: both phases, every endpoint, its schema gone;
and its distinct questions are all different."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import psycopg
import pytest

from api import bench
from api.bench_client import ENDPOINTS, Questions
from core.building_file import load_building


def test_every_distinct_question_is_a_different_one() -> None:
    tenants = ("a", "b", "c")
    q = Questions("ref-tower", datetime(2026, 11, 22, tzinfo=UTC), "2026-11", "a", tenants,
                  tuple(range(1, 11)))  # fmt: skip
    for name in ("tenant_power_30d_by_day", "floor_load_24h_by_minute"):
        asked = [q.ask(name, k) for k in range(1, 500)]
        assert len(set(asked)) == len(asked), name
    floors = {q.ask("floors_live", k)[0] for k in range(1, 9)}
    assert floors == {"operator", *tenants}  # the live floors: every principal in turn
    assert {q.ask("tenant_bill_month", k)[0] for k in range(1, 9)} == set(tenants)
    assert q.ask("floor_load_24h_by_minute", 0) == q.ask("floor_load_24h_by_minute", 0)


def test_the_bill_measured_is_of_the_month_with_most_history() -> None:
    shanghai = ZoneInfo("Asia/Shanghai")
    dec3 = datetime(2026, 12, 3, 6, tzinfo=UTC)
    assert bench.bill_month(shanghai, 30, dec3) == "2026-11"  # 27 days of it, not 3 of December
    assert bench.bill_month(shanghai, 35, dec3) == "2026-11"  # all of November
    assert bench.bill_month(shanghai, 1, dec3) == "2026-12"  # one day: today's month
    assert bench.bill_month(shanghai, 30, datetime(2026, 11, 22, 6, tzinfo=UTC)) == "2026-11"
    # the local date decides: 17:00 UTC on 30 November is 1 December in Shanghai
    assert bench.bill_month(shanghai, 1, datetime(2026, 11, 30, 17, tzinfo=UTC)) == "2026-12"
    assert bench.bill_month(shanghai, 2, datetime(2026, 11, 30, 17, tzinfo=UTC)) == "2026-12"


@pytest.mark.timeout(300)
def test_bench_runs_both_phases_and_drops_its_schema(
    pg_server_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("UPSTAIRS_DATABASE_URL", pg_server_url)
    argv = ["--days", "1", "--concurrency", "4", "--requests", "40", "--json"]
    assert bench.main(argv) == 0
    out = capsys.readouterr()
    result = json.loads(out.out.strip().splitlines()[-1])
    found = re.search(r"^schema (bench_[0-9a-f]+)$", out.err, re.MULTILINE)
    assert found is not None, out.err
    for name in ENDPOINTS:
        distinct, cached = result[name], result[name]["cached"]
        for figures in (distinct, cached):
            assert figures["n"] == 40 and 0 < figures["p50_ms"] <= figures["p99_ms"]
            assert figures["bytes"] > 0 and set(figures["cpu_ms_per_request"]) == {
                "client",
                "api",
                "db",
            }
    assert result["ceiling_healthz"]["n"] == 40 and result["ceiling_select1"]["n"] == 40
    with psycopg.connect(pg_server_url) as conn:
        left = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (found[1],))
        assert left.fetchone() is None


@pytest.mark.timeout(300)
def test_a_reused_schema_is_measured_as_what_it_holds(
    pg_server_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reuse reads the days seeded and the month billed from the schema, not from defaults:
    a 365-day schema reused without --days was once reported as 30 days, billing another
    month than its fresh run."""
    monkeypatch.setenv("UPSTAIRS_DATABASE_URL", pg_server_url)
    small = ["--concurrency", "2", "--requests", "10", "--json"]
    assert bench.main(["--days", "3", "--keep", "--phase", "cached", *small]) == 0
    out = capsys.readouterr()
    found = re.search(r"^schema (bench_[0-9a-f]+)$", out.err, re.MULTILINE)
    assert found is not None, out.err
    schema = found[1]
    try:
        fresh = json.loads(out.out.strip().splitlines()[-1])
        assert (fresh["days"], fresh["raw_days"]) == (3, 3)
        with psycopg.connect(pg_server_url, autocommit=True) as conn:  # seeded 40 days ago
            row = conn.execute(
                f"UPDATE {schema}.bench_seeded SET seeded_at = seeded_at - interval '40 days'"
                " RETURNING seeded_at"
            ).fetchone()
        assert row is not None
        month = bench.bill_month(load_building(bench.REF_TOWER).tz, 3, row[0])
        assert month != fresh["seeded"]["bill_month"]  # 40 days earlier: another month
        assert bench.main(["--reuse", schema, "--phase", "distinct", *small]) == 0
        out = capsys.readouterr()
        reused = json.loads(out.out.strip().splitlines()[-1])
        assert (reused["days"], reused["raw_days"]) == (3, 3), reused
        assert reused["seeded"]["bill_month"] == month  # counted back from the seed
        assert "past its last day of history" in out.err, out.err
        assert reused["floors_live"]["n"] == 10
        assert bench.main(["--reuse", schema, "--days", "30", *small]) == 2
        err = capsys.readouterr().err
        assert f"--reuse {schema} holds 3 days (3 with 1-minute history)" in err, err
        assert "--days 30 contradicts it" in err, err
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_reusing_a_schema_that_is_not_there_says_where_it_looked(
    pg_server_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("UPSTAIRS_DATABASE_URL", pg_server_url)
    assert bench.main(["--reuse", "bench_00000000"]) == 2
    err = capsys.readouterr().err
    dbname = psycopg.conninfo.conninfo_to_dict(pg_server_url).get("dbname")
    assert "--reuse bench_00000000: no such schema in" in err and f"/{dbname};" in err, err
    with psycopg.connect(pg_server_url) as conn:
        made = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'bench_00000000'")
        assert made.fetchone() is None  # nothing was created by the refused run


def test_the_bench_names_how_the_api_reaches_the_database() -> None:
    from api.bench import via

    assert via("postgresql://postgres@127.0.0.1:5432/test") == "tcp"
    assert via("host=db.example port=5432 dbname=x") == "tcp"
    assert via("postgresql://postgres@/test?host=/var/run/postgresql") == "unix socket"
    assert via("dbname=test") == "unix socket"
