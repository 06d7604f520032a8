"""One-round-trip reads (``api.auth.read_scoped``): the transaction is scoped to the principal
and to nothing after it, a failed read leaves the pool as it was, and the live floors and a
floor's history answer exactly what the statement-by-statement scope answers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import pytest
from psycopg.pq import TransactionStatus

from api.auth import Principal, Read, open_scope, read_scoped
from api.db import Pool, make_pool
from api.floors import _SUMMARIES, floor_summaries
from api.settings import api_role_conninfo
from tests.api_helpers import apply, bearer, client, ref_tower, store_readings, token
from tests.conftest import REF_TOWER

_SETTINGS = (
    "SELECT current_setting('app.role', true) AS role,"
    " current_setting('app.tenant_id', true) AS tenant"
)
TENANT = Principal(7, "tenant", "t", "ref-tower", "northbridge")
OPERATOR = Principal(8, "operator", "o")


async def _pool_is_clean(pool: Pool) -> None:
    # as read_scoped returned them, before the pool's check (api.db) could set anything right
    idle = list(pool._pool)
    assert idle and all(not c.autocommit for c in idle)
    assert all(c.info.transaction_status == TransactionStatus.IDLE for c in idle)
    async with pool.connection() as conn:
        assert not conn.autocommit
        assert conn.info.transaction_status == TransactionStatus.IDLE
        cur = await conn.execute(_SETTINGS)
        assert await cur.fetchone() in ({"role": "", "tenant": ""}, {"role": None, "tenant": None})
        await conn.rollback()


async def test_reads_run_in_one_transaction_scoped_to_the_principal(db_url: str) -> None:
    apply(db_url, ref_tower(REF_TOWER))
    pool = make_pool(api_role_conninfo(db_url), 1, 1)
    async with pool:
        settings, floors, first, _, last = await read_scoped(
            pool,
            TENANT,
            Read(_SETTINGS, ()),
            Read("SELECT count(*) AS n FROM floors WHERE building_id = %s", ("ref-tower",)),
            Read("SELECT now() AS t, statement_timestamp() AS s", ()),
            Read("SELECT pg_sleep(0.02)", ()),
            Read("SELECT now() AS t, statement_timestamp() AS s", (), binary=True),
        )
        assert settings == [{"role": "tenant", "tenant": "ref-tower/northbridge"}]
        assert floors[0]["n"] > 0  # RLS let the tenant see its building's floors
        (op,) = await read_scoped(pool, OPERATOR, Read(_SETTINGS, ()))
        assert op == [{"role": "operator", "tenant": ""}]
        # one transaction: now() is its start, the same in the statement after the sleep
        assert first[0]["t"] == last[0]["t"]
        assert last[0]["s"] - first[0]["s"] >= timedelta(seconds=0.02)
        # nothing carries over to the next user of the connection
        await _pool_is_clean(pool)


async def test_a_failed_read_leaves_the_pool_as_it_was(db_url: str) -> None:
    apply(db_url, ref_tower(REF_TOWER))
    pool = make_pool(api_role_conninfo(db_url), 1, 1)
    async with pool:
        with pytest.raises(psycopg.errors.DivisionByZero):
            await read_scoped(pool, TENANT, Read(_SETTINGS, ()), Read("SELECT 1 / 0", ()))
        await _pool_is_clean(pool)
        (settings,) = await read_scoped(pool, TENANT, Read(_SETTINGS, ()))
        assert settings == [{"role": "tenant", "tenant": "ref-tower/northbridge"}]
        # statement by statement, as before, on the same connection
        async with open_scope(pool, OPERATOR) as s:
            cur = await s.conn.execute(_SETTINGS)
            assert await cur.fetchone() == {"role": "operator", "tenant": ""}
        await _pool_is_clean(pool)


async def test_a_cancelled_read_leaves_nothing_behind(db_url: str) -> None:
    apply(db_url, ref_tower(REF_TOWER))
    pool = make_pool(api_role_conninfo(db_url), 1, 1)
    async with pool:
        task = asyncio.create_task(
            read_scoped(pool, TENANT, Read(_SETTINGS, ()), Read("SELECT pg_sleep(10)", ()))
        )
        await asyncio.sleep(0.3)  # the sleep is running in the tenant's transaction
        started = asyncio.get_running_loop().time()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert asyncio.get_running_loop().time() - started < 5  # the query was cancelled
        await pool.check()  # a connection closed on the way out is replaced
        (settings,) = await read_scoped(pool, OPERATOR, Read(_SETTINGS, ()))
        assert settings == [{"role": "operator", "tenant": ""}]
        await _pool_is_clean(pool)


async def test_interleaved_principals_never_see_each_other(db_url: str) -> None:
    apply(db_url, ref_tower(REF_TOWER))
    pool = make_pool(api_role_conninfo(db_url), 2, 2)
    tenants = ("northbridge", "voltcab", "cellforge")

    async def one(i: int) -> None:
        t = tenants[i % len(tenants)]
        who = Principal(i, "tenant", "t", "ref-tower", t)
        settings, seen = await read_scoped(
            pool,
            who,
            Read(_SETTINGS, ()),
            Read("SELECT DISTINCT tenant_id FROM sensors WHERE tenant_id IS NOT NULL", ()),
        )
        assert settings == [{"role": "tenant", "tenant": f"ref-tower/{t}"}]
        assert {r["tenant_id"] for r in seen} == {t}  # its own meters: the scope held

    async with pool:
        await asyncio.gather(*(one(i) for i in range(300)))


async def _summaries_statement_by_statement(db_url: str, who: Principal) -> bytes:
    pool = make_pool(api_role_conninfo(db_url), 1, 1)
    async with pool, open_scope(pool, who) as s:
        return _SUMMARIES.dump_json(await floor_summaries(s.conn, "ref-tower"))


def test_live_floors_answer_as_statement_by_statement(db_url: str) -> None:
    apply(db_url, ref_tower(REF_TOWER))
    now = datetime.now(UTC).replace(microsecond=0)
    store_readings(
        db_url,
        [
            ("ref-f03-load-z1", now - timedelta(seconds=20), 420.5),
            ("ref-f03-load-z2", now - timedelta(seconds=25), 380.25),
            ("ref-f03-load-z3", now - timedelta(hours=2), 999.0),  # stale
        ],
    )
    who = {
        "operator": (token(db_url, "operator"), OPERATOR),
        "northbridge": (
            token(db_url, "tenant", "northbridge", "ref-tower"),
            Principal(9, "tenant", "t", "ref-tower", "northbridge"),
        ),
    }
    with client(db_url, api_cache_s=0) as c:
        for secret, principal in who.values():
            r = c.get("/api/v1/buildings/ref-tower/floors", headers=bearer(secret))
            assert r.status_code == 200
            expected = asyncio.run(_summaries_statement_by_statement(db_url, principal))
            assert orjson.loads(r.content) == orjson.loads(expected)
        tenant = bearer(who["northbridge"][0])
        assert c.get("/api/v1/buildings/elsewhere/floors", headers=tenant).status_code == 404
        op = bearer(who["operator"][0])
        assert c.get("/api/v1/buildings/elsewhere/floors", headers=op).status_code == 404


def test_floor_history_404s_and_one_axis_for_aligned_sensors(db_url: str) -> None:
    apply(db_url, ref_tower(REF_TOWER))
    start = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
    rows = [
        (f"ref-f05-load-z{z}", start + timedelta(minutes=m, seconds=5), 10.0 * z + m / 3)
        for z in range(1, 5)
        for m in range(30)
    ]
    store_readings(db_url, rows)
    op = bearer(token(db_url, "operator"))
    tenant = bearer(token(db_url, "tenant", "northbridge", "ref-tower"))
    window = f"&from={start.isoformat()}&to={(start + timedelta(minutes=30)).isoformat()}"
    window = window.replace("+00:00", "Z")
    base = "/api/v1/buildings/{b}/floors/{n}/history?metric=load&step={s}" + window
    with client(db_url, api_cache_s=0) as c:
        for step in ("1m", "5m", "raw"):
            h = c.get(base.format(b="ref-tower", n=5, s=step), headers=op).json()
            assert len(h["series"]) == 4
            for s in h["series"]:
                z = int(s["sensor"][-1])
                if step == "1m":
                    assert s["avg"] == [round(10.0 * z + m / 3, 4) for m in range(30)]
                if step == "raw":
                    assert len(s["t"]) == 30
            if step == "1m":
                assert h["t"] == [
                    (start + timedelta(minutes=m)).isoformat().replace("+00:00", "Z")
                    for m in range(30)
                ]
        for who, b, n in ((op, "elsewhere", 5), (op, "ref-tower", 199), (tenant, "other", 1)):
            for step in ("1m", "15m"):
                r = c.get(base.format(b=b, n=n, s=step), headers=who)
                assert r.status_code == 404, (b, n, step, r.text)
