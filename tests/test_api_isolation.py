"""Tenant isolation: the API role, row-level security, 404 for foreign ids, pooled settings."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from api.auth import authenticate, token_hash
from api.db import make_pool
from api.settings import api_role_conninfo
from core.building import Building
from core.topics import alerts_topic, state_topic
from tests.api_helpers import apply, bearer, client, store_readings, token

N = 50  # objects per tenant
TENANT_TABLES = [
    "tenants", "leases", "sensors", "readings", "rollups_1m", "rollups_1h", "rollups_1d",
    "energy_15m", "tenant_energy_days", "sensor_latest", "minute_packs", "alerts", "alert_events",
    "alert_commands", "api_tokens", "api_sessions", "audit_log",
]  # fmt: skip


def two_tenant_building(building_id: str = "iso", sensor_prefix: str = "") -> Building:
    """Tenants a and b, each with N zones, N power meters and N load sensors."""
    zones, leases, sensors = [], [], []
    for t in ("a", "b"):
        for i in range(N):
            floor = 1 + i % 5
            zone = f"{t}-z{i:02d}"
            zones.append({"id": zone, "floor": floor, "area_m2": 10})
            leases.append({"tenant": t, "zone": zone, "from": "2020-01-01"})
            sensors.append({"id": f"{sensor_prefix}{t}-p{i:02d}", "kind": "power", "floor": floor,
                            "tenant": t, "interval_s": 60})  # fmt: skip
            sensors.append({"id": f"{sensor_prefix}{t}-l{i:02d}", "kind": "load", "floor": floor,
                            "zone": zone, "interval_s": 60})  # fmt: skip
    return Building.model_validate(
        {
            "id": building_id,
            "name": "Isolation",
            "timezone": "Europe/Berlin",
            "floors": [
                {
                    "number": n,
                    "area_m2": 2000,
                    "height_m": 4,
                    "load_limit_kg_m2": 500,
                    "power_capacity_kw": 2000,
                }
                for n in range(1, 6)
            ],
            "tariffs": [
                {
                    "id": "flat",
                    "currency": "EUR",
                    "periods": [{"name": "all", "price_per_kwh": 0.2, "windows": ["00:00-24:00"]}],
                }
            ],
            "tenants": [
                {"id": t, "name": f"Tenant {t}", "contracted_kw": 500, "tariff": "flat"}
                for t in ("a", "b")
            ],
            "zones": zones,
            "leases": leases,
            "sensors": sensors,
        }
    )


def seed(db_url: str) -> dict[str, list[int]]:
    apply(db_url, two_tenant_building())
    now = datetime.now(UTC).replace(microsecond=0)
    rows = [
        (f"{t}-{k}{i:02d}", now - timedelta(minutes=m), 100.0 + i)
        for t in ("a", "b")
        for k in ("p", "l")
        for i in range(N)
        for m in (1, 2, 120)  # two minutes ago, and one in a closed hour (packed: 0017)
    ]
    store_readings(db_url, rows)
    alerts: dict[str, list[int]] = {"a": [], "b": []}
    with psycopg.connect(db_url) as conn:
        for t in ("a", "b"):
            for i in range(N):
                row = conn.execute(
                    "INSERT INTO alerts (building_id, rule, subject, floor, zone_id, tenant_ids,"
                    " severity, state, message, opened_at)"
                    " VALUES ('iso', 'zone_load', %s, %s, %s, %s, 'warning', 'open', 'load', now())"
                    " RETURNING id",
                    (f"zone:{t}-z{i:02d}", 1 + i % 5, f"{t}-z{i:02d}", [t]),
                ).fetchone()
                assert row is not None
                alerts[t].append(row[0])
                conn.execute(
                    "INSERT INTO alert_events (alert_id, at, kind, actor) VALUES (%s, now(),"
                    " 'opened', 'engine')",
                    (row[0],),
                )
    return alerts


def test_api_role_cannot_bypass_rls(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        role = conn.execute(
            "SELECT rolsuper, rolbypassrls, oid FROM pg_roles WHERE rolname = 'upstairs_api'"
        ).fetchone()
        assert role is not None
        assert role[0] is False and role[1] is False
        owned = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relowner = %s", (role[2],)
        ).fetchone()
        assert owned == (0,)
        rows = conn.execute(
            "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class"
            " WHERE relnamespace = current_schema()::regnamespace AND relname = ANY(%s)",
            (TENANT_TABLES,),
        ).fetchall()
    assert {r[0] for r in rows} == set(TENANT_TABLES)
    assert all(r[1] and r[2] for r in rows), rows


def test_no_tenant_set_means_no_tenant_rows(db_url: str) -> None:
    seed(db_url)
    with psycopg.connect(api_role_conninfo(db_url)) as conn:
        for table in TENANT_TABLES[:14]:
            count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            assert count == (0,), table
        for table in ("api_tokens", "api_sessions", "audit_log"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT 1 FROM {table}")
            conn.rollback()
        conn.execute("SELECT set_config('app.tenant_id', 'iso/a', true)")
        seen = conn.execute("SELECT DISTINCT tenant_id FROM sensors WHERE tenant_id IS NOT NULL")
        assert seen.fetchall() == [("a",)]
        conn.rollback()
        # The setting is per transaction: the next one sees nothing again.
        assert conn.execute("SELECT count(*) FROM sensors").fetchone() == (0,)
        # A tenant id alone (without its building) matches nothing.
        conn.execute("SELECT set_config('app.tenant_id', 'a', true)")
        assert conn.execute("SELECT count(*) FROM sensors").fetchone() == (0,)
    with psycopg.connect(db_url) as conn:  # as the owner: there are rows to hide
        assert conn.execute("SELECT count(*) FROM minute_packs").fetchone() == (2 * 2 * N,)


def _foreign_requests(b_alerts: list[int]) -> list[tuple[str, str, dict[str, object] | None]]:
    out: list[tuple[str, str, dict[str, object] | None]] = []
    for i in range(N):
        out.append(("GET", f"/api/v1/sensors/b-p{i:02d}/readings", None))
        out.append(("GET", f"/api/v1/sensors/b-l{i:02d}/readings?step=1m", None))
        machine = {"zone": f"b-z{i:02d}", "mass_kg": 10, "footprint_m2": 1, "height_m": 1,
                   "power_kw": 1}  # fmt: skip
        out.append(("POST", f"/api/v1/buildings/iso/floors/{1 + i % 5}/load-check", machine))
    for alert in b_alerts:
        out.append(("POST", f"/api/v1/alerts/{alert}/ack", None))
        out.append(("POST", f"/api/v1/alerts/{alert}/shelve", {"duration_s": 60}))
        out.append(("POST", f"/api/v1/alerts/{alert}/reset", None))
    for path in ("power", "bill?month=2026-01", "power?building=iso", "power?building=other"):
        out.append(("GET", f"/api/v1/tenants/b/{path}", None))
    out.append(("GET", "/api/v1/buildings/other", None))
    out.append(("GET", "/api/v1/buildings/other/floors", None))
    return out


def test_foreign_ids_answer_404_and_leak_nothing(db_url: str) -> None:
    alerts = seed(db_url)
    apply(db_url, two_tenant_building("other", "o"))  # a second building, with its own a and b
    secret = token(db_url, "tenant", "a", "iso")
    with client(db_url) as c:
        for method, path, body in _foreign_requests(alerts["b"]):
            r = c.request(method, path, headers=bearer(secret), json=body)
            assert r.status_code == 404, (method, path, r.status_code, r.text)
            assert list(r.json()) == ["detail"], r.text
            echoed = r.text
            for part in [*path.split("/"), *(str(v) for v in (body or {}).values())]:
                echoed = echoed.replace(part, "") if len(part) > 2 else echoed
            assert "b-" not in echoed, r.text  # only the id the caller sent comes back
        for path in (
            "/api/v1/alerts",
            "/api/v1/alerts?state=open&limit=1000",
            "/api/v1/buildings",
            "/api/v1/buildings/iso",
            "/api/v1/buildings/iso/floors",
            *[f"/api/v1/buildings/iso/floors/{n}" for n in range(1, 6)],
            *[
                f"/api/v1/buildings/iso/floors/{n}/history?metric={m}"
                for n in range(1, 6)
                for m in ("load", "power")
            ],
            "/api/v1/tenants/a/power?step=1m&from=" + _ago(10),
        ):
            r = c.get(path, headers=bearer(secret))
            assert r.status_code == 200, (path, r.text)
            assert '"b-' not in r.text and '"b"' not in r.text, (path, r.text[:500])
            assert "other" not in r.text, path
        listed = c.get("/api/v1/alerts?limit=1000", headers=bearer(secret)).json()
        assert sorted(a["id"] for a in listed) == sorted(alerts["a"])


def _ago(minutes: int) -> str:
    return (datetime.now(UTC) - timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    "caches",
    [{"api_cache_s": 0, "api_auth_cache_s": 0}, {}],
    ids=["every-request-in-the-database", "with-the-caches"],
)
def test_interleaved_requests_over_two_connections(db_url: str, caches: dict[str, float]) -> None:
    seed(db_url)
    secrets = {t: token(db_url, "tenant", t, "iso") for t in ("a", "b")}
    paths = [
        "/api/v1/tenants/{t}/power?step=1m&from=" + _ago(10),
        "/api/v1/buildings/iso/floors/1",
        "/api/v1/sensors/{t}-p00/readings",
        "/api/v1/alerts?limit=1000",
    ]

    def call(i: int) -> tuple[str, str]:
        t = "ab"[i % 2]
        path = paths[(i // 2) % len(paths)].format(t=t)
        r = c.get(path, headers=bearer(secrets[t]))
        assert r.status_code == 200, r.text
        return t, r.text

    with (
        client(db_url, None, "", api_pool_min=1, api_pool_max=2, **caches) as c,
        ThreadPoolExecutor(8) as pool,
    ):
        results = list(pool.map(call, range(1000)))
    for t, text in results:
        other = "b" if t == "a" else "a"
        assert f'"{other}-' not in text and f'"{other}"' not in text


async def test_setting_is_empty_at_the_start_of_every_transaction(db_url: str) -> None:
    seed(db_url)
    with psycopg.connect(db_url) as conn:
        from api.tokens import create_token

        secrets = {t: create_token(conn, "tenant", "t", "iso", t)[1] for t in ("a", "b")}
    pool = make_pool(api_role_conninfo(db_url), 2, 2)
    leaks = 0

    async def one(i: int) -> None:
        nonlocal leaks
        t = "ab"[i % 2]
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT coalesce(current_setting('app.tenant_id', true), '') AS t,"
                " coalesce(current_setting('app.role', true), '') AS r"
            )
            row = await cur.fetchone()
            assert row == {"t": "", "r": ""}, row
            assert await authenticate(conn, "token", token_hash(secrets[t])) is not None
            cur = await conn.execute("SELECT DISTINCT tenant_id FROM sensors WHERE kind = 'power'")
            seen = {r["tenant_id"] for r in await cur.fetchall()}
            leaks += len(seen - {t})
            await asyncio.sleep(0)
            await conn.commit()

    async with pool:
        await asyncio.gather(*(one(i) for i in range(1000)))
    assert leaks == 0


def test_websocket_never_delivers_another_tenants_events(db_url: str, mqtt) -> None:
    alerts = seed(db_url)
    secret = token(db_url, "tenant", "a", "iso")
    operator = token(db_url, "operator")
    pub = paho.Client(CallbackAPIVersion.VERSION2)
    pub.connect(mqtt.address.host, mqtt.address.port)
    pub.loop_start()
    try:
        with client(db_url, mqtt.url, mqtt.prefix) as c:
            deadline = time.monotonic() + 10
            while not c.get("/readyz").json()["broker"]:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            with (
                c.websocket_connect("/api/v1/live?building=iso", headers=bearer(secret)) as ws,
                c.websocket_connect("/api/v1/live?building=iso", headers=bearer(operator)) as op,
            ):
                assert ws.receive_json()["type"] == "hello"
                assert op.receive_json()["type"] == "hello"
                for t in ("b", "b", "a"):
                    for alert in alerts[t][:3]:
                        pub.publish(alerts_topic("iso", mqtt.prefix), _event(alert, t), qos=1)
                    pub.publish(state_topic("iso", 1, mqtt.prefix), _state(t), qos=1)
                got: list[dict[str, object]] = []
                while len(got) < 4:
                    got.append(ws.receive_json())
                seen_by_op = [op.receive_json() for _ in range(12)]
            text = json.dumps(got)
            assert '"b"' not in text and "b-z" not in text, text
            assert [g["type"] for g in got] == ["alert_event"] * 3 + ["floor_state"]
            assert len(seen_by_op) == 12
    finally:
        pub.loop_stop()
        pub.disconnect()


def _event(alert_id: int, tenant: str) -> str:
    return json.dumps(
        {
            "v": 1,
            "event_id": alert_id,
            "kind": "opened",
            "at": _ago(0),
            "actor": "engine",
            "alert": {
                "id": alert_id,
                "building": "iso",
                "rule": "zone_load",
                "subject": f"zone:{tenant}-z00",
                "floor": 1,
                "zone": f"{tenant}-z00",
                "tenants": [tenant],
                "severity": "warning",
                "state": "open",
                "message": "load",
                "opened_at": _ago(0),
            },
        }
    )


def _state(tenant: str) -> str:
    return json.dumps(
        {
            "v": 1,
            "building": "iso",
            "floor": 1,
            "at": _ago(0),
            "gateway": "online",
            "zones": [
                {
                    "zone": f"{tenant}-z00",
                    "tenant": tenant,
                    "load_kg_m2": 100,
                    "limit_kg_m2": 500,
                    "load_pct": 20,
                    "quality": "good",
                }
            ],
            "load_avg_kg_m2": 1,
            "load_limit_kg_m2": 500,
            "load_quality": "good",
            "power_capacity_kw": 2000,
            "power_quality": "good",
            "fire_state": "normal",
            "fire_latched": False,
            "evacuation": False,
        }
    )
