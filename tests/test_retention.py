"""``upstairs db retention``: whole months of raw readings past the retention are dropped;
the rollups, the energy and everything newer stay; a dry run drops nothing; a retention shorter
than what the ingesters accept is refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from core.db import with_search_path
from upstairs import retention
from upstairs.cli import main
from upstairs.retention import drop_old_readings

NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)


def _months(db_url: str) -> list[str]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'readings'::regclass ORDER BY 1"
        ).fetchall()
    return [r[0] for r in rows]


def _fill(db_url: str) -> None:
    """One reading a day from 2025-09-01 to now, and a 1-minute rollup of each."""
    with psycopg.connect(db_url) as conn:
        day = datetime(2025, 9, 1, tzinfo=UTC)
        while day <= NOW:
            conn.execute("SELECT ensure_readings_partition(%s)", (day,))
            conn.execute("INSERT INTO readings VALUES ('p1', %s, 1.0)", (day,))
            conn.execute(
                "INSERT INTO rollups_1m (sensor_id, bucket, count, sum, min, max, last_ts,"
                " last_value) VALUES ('p1', %s, 1, 1, 1, 1, %s, 1)",
                (day, day),
            )
            day += timedelta(days=1)


def _in_zone(conninfo: str, zone: str) -> str:
    """``conninfo`` with its sessions in ``zone`` (its other options kept)."""
    options = conninfo_to_dict(conninfo).get("options") or ""
    return make_conninfo(conninfo, options=f"{options} -c TimeZone={zone}".strip())


def _count(db_url: str, sql: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def test_months_past_the_retention_are_dropped_and_nothing_else(db_url: str) -> None:
    _fill(db_url)
    rollups = _count(db_url, "SELECT count(*) FROM rollups_1m")
    before = _months(db_url)
    assert "readings_202509" in before and "readings_202512" in before
    # 400 days and the day's margin before 2026-12-04 12:00 is 2025-10-29 12:00: September
    # 2025 ends before it, October 2025 does not (its last days are still kept)
    cutoff, listed = drop_old_readings(db_url, 400, NOW, dry_run=True)
    assert cutoff == datetime(2025, 10, 29, 12, tzinfo=UTC)
    assert listed == [("readings_202509", datetime(2025, 10, 1, tzinfo=UTC))]
    assert _months(db_url) == before  # a dry run drops nothing
    _, dropped = drop_old_readings(db_url, 400, NOW)
    assert dropped == listed
    assert _months(db_url) == [m for m in before if m != "readings_202509"]
    oldest = "SELECT min(ts) FROM readings"
    with psycopg.connect(db_url) as conn:
        row = conn.execute(oldest).fetchone()
    assert row is not None and row[0] == datetime(2025, 10, 1, tzinfo=UTC)
    assert _count(db_url, "SELECT count(*) FROM rollups_1m") == rollups  # rollups stay
    assert drop_old_readings(db_url, 400, NOW)[1] == []  # nothing more to drop


def test_the_command_refuses_a_retention_shorter_than_the_ingesters_accept(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("UPSTAIRS_DATABASE_URL", db_url)
    _fill(db_url)
    before = _months(db_url)
    assert main(["db", "retention", "--raw-days", "30"]) == 2
    err = capsys.readouterr().err
    assert "--raw-days 30 is less than the ingesters' max_age_days 400" in err, err
    assert _months(db_url) == before
    monkeypatch.setenv("UPSTAIRS_INGEST_MAX_AGE_DAYS", "20")
    _, due = drop_old_readings(db_url, 30, datetime.now(UTC), dry_run=True)
    assert due and due[0][0] == "readings_202509", due  # at least September 2025
    assert main(["db", "retention", "--raw-days", "30", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[2] for line in out.splitlines() if line.startswith("would drop")] == [
        part for part, _ in due
    ], out
    assert _months(db_url) == before
    assert main(["db", "retention", "--raw-days", "30"]) == 0
    out = capsys.readouterr().out
    assert f"{len(due)} partition(s) of raw readings dropped" in out, out
    assert _months(db_url) == [m for m in before if m not in {part for part, _ in due}]


def test_a_month_that_stays_locked_stays_with_the_newer_ones(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A long read of an old month holds its lock: the retention tries ATTEMPTS times, then
    exits 1 saying so; the older months are dropped, that one and the newer ones stay."""
    monkeypatch.setenv("UPSTAIRS_DATABASE_URL", db_url)
    monkeypatch.setenv("UPSTAIRS_INGEST_MAX_AGE_DAYS", "20")
    monkeypatch.setattr(retention, "LOCK_TIMEOUT", "100ms")
    monkeypatch.setattr(retention, "PAUSE_S", 0.05)
    _fill(db_url)
    before = _months(db_url)
    with psycopg.connect(db_url) as reader:
        reader.execute("SELECT count(*) FROM readings_202510").fetchone()  # holds its lock
        assert main(["db", "retention", "--raw-days", "30"]) == 1
    assert "readings_202510 stayed locked" in capsys.readouterr().err
    assert _months(db_url) == [m for m in before if m != "readings_202509"]


def test_dead_letters_past_their_retention_are_deleted_in_batches(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("UPSTAIRS_DATABASE_URL", db_url)
    monkeypatch.setattr(retention, "DEAD_LETTER_BATCH", 7)  # several batches, one partial
    now = datetime.now(UTC)
    with psycopg.connect(db_url) as conn:
        for age in range(0, 200, 4):  # 50 letters, 4 days apart: 27 over 90 days old
            conn.execute(
                "INSERT INTO dead_letters (received_at, topic, payload, reason, detail)"
                " VALUES (%s, 't', 'x', 'bad_json', 'd')",
                (now - timedelta(days=age, minutes=1),),
            )
    old = "SELECT count(*) FROM dead_letters WHERE received_at < now() - interval '90 days'"
    assert _count(db_url, old) == 27
    assert main(["db", "retention", "--dead-letter-days", "90", "--dry-run"]) == 0
    assert "27 dead letter(s) older than 90 days to delete" in capsys.readouterr().out
    assert _count(db_url, "SELECT count(*) FROM dead_letters") == 50
    assert main(["db", "retention", "--dead-letter-days", "90"]) == 0
    assert "27 dead letter(s) older than 90 days deleted" in capsys.readouterr().out
    assert _count(db_url, "SELECT count(*) FROM dead_letters") == 23
    assert _count(db_url, old) == 0
    with pytest.raises(SystemExit) as usage:
        main(["db", "retention", "--dead-letter-days", "0"])
    assert usage.value.code == 2
    assert "give a whole number of days, 1 to 36500" in capsys.readouterr().err


def test_partitions_are_dropped_by_their_real_bounds_in_any_session_time_zone(
    pg_server_url: str, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0001's ensure_readings_partition made months that are not whole UTC months in a
    session zone with daylight saving; the retention reads each partition's real upper bound,
    in any session zone, and never one without an upper bound."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        for part in _months(db_url):
            conn.execute(f"DROP TABLE {part}")
        conn.execute(  # ends 4 hours into October (UTC)
            "CREATE TABLE readings_202509 PARTITION OF readings"
            " FOR VALUES FROM ('2025-09-01 00:00+00') TO ('2025-10-01 04:00+00')"
        )
        conn.execute("CREATE TABLE readings_rest PARTITION OF readings DEFAULT")
    monkeypatch.delenv("PGTZ", raising=False)  # it would win over the conninfo's options
    new_york = _in_zone(db_url, "America/New_York")
    with psycopg.connect(new_york) as conn:
        assert conn.execute("SHOW TimeZone").fetchone() == ("America/New_York",)
    margin = timedelta(days=401)  # raw_days 400 and the day's margin
    at_2 = datetime(2025, 10, 1, 2, tzinfo=UTC) + margin  # the cutoff 2 hours before its end
    assert drop_old_readings(new_york, 400, at_2, dry_run=True)[1] == []
    at_4 = datetime(2025, 10, 1, 4, tzinfo=UTC) + margin
    _, due = drop_old_readings(new_york, 400, at_4)
    assert due == [("readings_202509", datetime(2025, 10, 1, 4, tzinfo=UTC))]
    assert _months(db_url) == ["readings_rest"]  # the default partition is never dropped


def test_a_database_it_cannot_use_gets_one_line_that_says_what_to_do(
    pg_server_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("UPSTAIRS_INGEST_MAX_AGE_DAYS", "20")
    monkeypatch.setenv("UPSTAIRS_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/test")
    assert main(["db", "retention", "--raw-days", "30"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot use the database (UPSTAIRS_DATABASE_URL): ") and (
        "Traceback" not in err
    ), err
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS t_unmigrated CASCADE")
        conn.execute("CREATE SCHEMA t_unmigrated")
    try:
        monkeypatch.setenv("UPSTAIRS_DATABASE_URL", with_search_path(pg_server_url, "t_unmigrated"))
        assert main(["db", "retention", "--raw-days", "30"]) == 1
        err = capsys.readouterr().err
        assert "the database schema is not current" in err and "upstairs db migrate" in err, err
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute("DROP SCHEMA t_unmigrated CASCADE")


def test_a_month_made_in_a_daylight_saving_session_is_a_whole_utc_month(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0022: ensure_readings_partition no longer adds the month in the session's zone."""
    monkeypatch.delenv("PGTZ", raising=False)  # it would win over the conninfo's options
    with psycopg.connect(_in_zone(db_url, "America/New_York"), autocommit=True) as conn:
        for month in ("2025-10-15", "2025-11-15", "2026-03-15"):
            conn.execute("SELECT ensure_readings_partition(%s::timestamptz)", (month,))
        conn.execute("SET TimeZone = 'UTC'")
        bounds: dict[str, str] = dict(
            conn.execute(
                "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
                " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'readings'::regclass"
            ).fetchall()
        )
    assert bounds["readings_202510"] == (
        "FOR VALUES FROM ('2025-10-01 00:00:00+00') TO ('2025-11-01 00:00:00+00')"
    )
    assert bounds["readings_202511"] == (
        "FOR VALUES FROM ('2025-11-01 00:00:00+00') TO ('2025-12-01 00:00:00+00')"
    )
    assert bounds["readings_202603"] == (
        "FOR VALUES FROM ('2026-03-01 00:00:00+00') TO ('2026-04-01 00:00:00+00')"
    )
