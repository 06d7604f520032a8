"""Migrations run in UTC whatever the session's zone (``core.db.migrate``).

Migration 0001 makes the first partitions of ``readings`` with a function that, before 0022,
added a month in the session's zone. West of UTC the month's start is the evening of the last
day of the month before, and the addition clamps it (30 November + 1 month = 30 December), so
the month after every 30-day one was short, and in a zone with daylight saving months could
overlap and fail the install. ``PGTZ`` sets the zone of every libpq session, as a server's
``TimeZone`` does for one whose host is in such a zone.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import psycopg
import pytest

from core.db import migrate, with_search_path


@pytest.mark.parametrize("zone", ["Etc/GMT+5", "America/New_York"])
def test_a_new_install_west_of_utc_makes_whole_utc_months(
    pg_server_url: str, zone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGTZ", zone)
    schema = f"t_zone_{secrets.token_hex(4)}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        assert conn.execute("SHOW TimeZone").fetchone() == (zone,)
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        url = with_search_path(pg_server_url, schema)
        migrate(url)
        with psycopg.connect(url) as conn:
            conn.execute("SET TimeZone = 'UTC'")
            rows = conn.execute(
                "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
                " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'readings'::regclass"
                " ORDER BY 1"
            ).fetchall()
        assert len(rows) == 3, rows  # last month, this month, next month
        for name, bound in rows:
            year, month = int(name[9:13]), int(name[13:15])
            start = datetime(year, month, 1, tzinfo=UTC)
            end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
            whole = f"FROM ('{start:%Y-%m-%d} 00:00:00+00') TO ('{end:%Y-%m-%d} 00:00:00+00')"
            assert bound == f"FOR VALUES {whole}", (zone, name, bound)
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
