"""Server-rendered pages without a browser: roles, redirects, content, tenant isolation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from core.building_file import load_building
from tests.api_helpers import apply, client, store_readings, token
from tests.conftest import REF_TOWER

TOWER = load_building(REF_TOWER)


def foreign_words(tenant: str) -> set[str]:
    """Names, ids and zone ids of every tenant but ``tenant`` (and zones it does not lease)."""
    own_zones = {lease.zone for lease in TOWER.leases if lease.tenant == tenant}
    words = {t.name for t in TOWER.tenants if t.id != tenant}
    words |= {t.id for t in TOWER.tenants if t.id != tenant}
    leased = {lease.zone for lease in TOWER.leases if lease.tenant != tenant}
    words |= {z for z in leased if z not in own_zones}
    words |= {z.name for z in TOWER.zones if z.id in leased - own_zones and z.name}
    return words


def seed(db_url: str, now: datetime) -> None:
    rows = []
    for sensor in TOWER.sensors:
        value = {"energy": 5000.0, "fire": 0.0, "load": 300.0, "power": 120.0}.get(
            sensor.kind.value, 23.5
        )
        for i in range(6):
            ts = now - timedelta(minutes=60 - 10 * i)
            rows.append((sensor.id, ts, value + (25.0 * i if sensor.kind == "energy" else 0)))
        if sensor.id != "ref-f03-temp-z2":  # one sensor left stale
            rows.append((sensor.id, now - timedelta(seconds=1), value + 150))
    store_readings(db_url, rows)


@pytest.fixture
def tower(db_url: str) -> str:
    apply(db_url, TOWER)
    seed(db_url, datetime.now(UTC))
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO alerts (building_id, rule, subject, floor, zone_id, sensor_id,"
            " tenant_ids, severity, state, latched, message, opened_at, evacuation_floors)"
            " VALUES ('ref-tower', 'fire', 'sensor:ref-f03-fire-z1', 3, 'f03-z1',"
            " 'ref-f03-fire-z1', '{cellforge,northbridge}', 'critical', 'open', true,"
            " 'FIRE: detector ref-f03-fire-z1 in alarm on floor 3 (zone f03-z1)', now(),"
            " '{2,3,4}')"
        )
    return db_url


def sign_in(c, secret: str) -> None:
    r = c.post("/sign-in", data={"token": secret}, follow_redirects=False)
    assert r.status_code == 303, r.text


def test_pages_need_sign_in(tower: str) -> None:
    with client(tower) as c:
        for path in ("/", "/floors/3", "/alerts", "/tenant"):
            r = c.get(path, follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"] == "/sign-in", path
        assert c.get("/tenant/live.json").status_code == 401
        assert "uPlot" in c.get("/static/vendor/uplot/uPlot.iife.min.js").text[:2000]


def test_operator_pages(tower: str) -> None:
    with client(tower) as c:
        sign_in(c, token(tower, "operator"))
        html = c.get("/").text
        assert html.count('class="band s-') == 10
        assert html.index('id="floor-10"') < html.index('id="floor-1"')
        assert "FIRE on floor 3" in html and "evacuate floors <strong>2, 3, 4" in html
        assert "Cellforge Battery Systems" in html  # the operator sees who to evacuate
        floor = c.get("/floors/3").text
        assert "⚠ stale" in floor and "ref-f03-temp-z2" in floor
        assert "Northbridge Server Manufacturing" in floor
        alerts = c.get("/alerts?floor=3").text
        assert "↺ Reset fire" in alerts and "⏸ Shelve" not in alerts  # fire is never shelved
        tenant = c.get("/tenant?tenant=voltcab").text
        assert "Voltcab Power Electronics" in tenant and "Cellforge Battery Systems" in tenant


def test_tenant_pages_show_only_the_tenant(tower: str) -> None:
    with client(tower) as c:
        sign_in(c, token(tower, "tenant", "cellforge", "ref-tower"))
        for path in ("/", "/floors/2"):
            r = c.get(path, follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"] == "/tenant"
        page = c.get("/tenant").text
        assert "Cellforge Battery Systems" in page and "FIRE on floor 3" in page
        live = c.get("/tenant/live.json").json()
        assert live["evacuations"] == [{"fire_floor": 3, "floors": [2, 3, 4], "yours": [2]}]
        alerts = c.get("/alerts").text
        assert "⏸ Shelve" not in alerts and "Reset" not in alerts
        for text in (page, alerts, str(live), c.get("/tenant?tenant=voltcab").text):
            leaked = [w for w in foreign_words("cellforge") if w in text]
            assert not leaked, leaked
