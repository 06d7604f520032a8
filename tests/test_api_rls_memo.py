"""The tenant's sensor arrays of the row-level security policies are computed once per
transaction (migration 0019): the memo serves only the tenant it was computed for, and what
a tenant sees is the same with it as without it."""

from __future__ import annotations

import psycopg

from api.settings import api_role_conninfo
from tests.test_api_isolation import seed

TABLES = ("readings", "rollups_1m", "rollups_1h", "sensor_latest", "minute_packs")
_SCOPE = "SELECT set_config('app.role', %s, true), set_config('app.tenant_id', %s, true)"


def _seen(conn: psycopg.Connection[tuple[object, ...]]) -> dict[str, set[str]]:
    return {
        t: {str(r[0]) for r in conn.execute(f"SELECT DISTINCT sensor_id FROM {t}")} for t in TABLES
    }


def test_memo_serves_only_its_own_tenant(db_url: str) -> None:
    seed(db_url)
    with psycopg.connect(api_role_conninfo(db_url)) as conn:
        conn.execute(_SCOPE, ("tenant", "iso/a"))
        first = _seen(conn)  # computes the arrays and keeps them
        for name in ("meters", "zone_sensors", "zone_windows"):
            memo = conn.execute("SELECT current_setting(%s, true)", (f"app.memo_{name}",))
            assert str(memo.fetchone()[0]).startswith("iso/a\t{"), name  # type: ignore[index]
        second = _seen(conn)  # from the memo
        assert second == first
        for table, sensors in first.items():
            # own meters (a-p..) and leased zones' sensors (a-l..), nothing of b
            assert {s[:3] for s in sensors} == {"a-p", "a-l"}, table
        # another tenant in the same transaction: a's memo is not used
        conn.execute(_SCOPE, ("tenant", "iso/b"))
        for table, sensors in _seen(conn).items():
            assert {s[:3] for s in sensors} == {"b-p", "b-l"}, table
        conn.rollback()

        # a memo under another tenant's name is not read
        conn.execute(_SCOPE, ("tenant", "iso/b"))
        for name, value in (("meters", "{a-p00}"), ("zone_sensors", "{a-l00}")):
            conn.execute("SELECT set_config(%s, %s, true)", (f"app.memo_{name}", "iso/a\t" + value))
        for table, sensors in _seen(conn).items():
            assert {s[:3] for s in sensors} == {"b-p", "b-l"}, table
        conn.rollback()

        # the memo is what the policies read: one of the tenant's own (forged here) is obeyed
        conn.execute(_SCOPE, ("tenant", "iso/a"))
        for name in ("meters", "zone_sensors", "zone_windows"):
            conn.execute("SELECT set_config(%s, %s, true)", (f"app.memo_{name}", "iso/a\t{}"))
        assert all(not sensors for sensors in _seen(conn).values())
        conn.rollback()

        # with no tenant set, no memo is read: nothing is seen
        conn.execute("SELECT set_config('app.memo_meters', %s, true)", ("\t{a-p00,b-p00}",))
        assert all(not sensors for sensors in _seen(conn).values())
        conn.rollback()

        # the memo ends with the transaction, even a committed one
        conn.execute(_SCOPE, ("tenant", "iso/a"))
        assert _seen(conn)["rollups_1m"]
        conn.commit()
        assert conn.execute("SELECT current_setting('app.memo_meters', true)").fetchone() in (
            (None,),
            ("",),
        )


def test_memo_of_lease_windows_reads_back_the_same_instants_in_any_date_style(
    db_url: str,
) -> None:
    """Under a DateStyle that prints zone abbreviations, a window in Asia/Kolkata would print
    as '... IST' and read back as Israel's IST, 3.5 hours off (PostgreSQL 15, the server of
    these machines and of CI; newer servers read a zone's own abbreviations first)."""
    seed(db_url)
    with psycopg.connect(api_role_conninfo(db_url)) as conn:
        conn.execute("SET DateStyle = 'SQL, DMY'")
        conn.execute("SET TimeZone = 'Asia/Kolkata'")
        conn.execute(_SCOPE, ("tenant", "iso/a"))
        computed = conn.execute("SELECT api_tenant_zone_windows()::text").fetchone()
        memo = conn.execute("SELECT current_setting('app.memo_zone_windows', true)").fetchone()
        remembered = conn.execute("SELECT api_tenant_zone_windows()::text").fetchone()
        assert memo is not None and str(memo[0]).startswith("iso/a\t{")
        assert computed is not None and "IST" in str(computed[0])  # the style in question
        assert remembered == computed
