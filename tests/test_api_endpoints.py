"""Endpoints: alert actions through the engine's command table, sign-in, move-in check, CLI."""

from __future__ import annotations

import argparse
import math
import re
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from api.tokens import demo_credentials, list_tokens
from tests.api_helpers import apply, bearer, client, ref_tower, store_readings, token
from tests.conftest import REF_TOWER
from upstairs.tokens_cli import register


def _alert(db_url: str, rule: str, tenants: list[str], floor: int = 1) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "INSERT INTO alerts (building_id, rule, subject, floor, tenant_ids, severity, state,"
            " latched, condition_active, message, opened_at)"
            " VALUES ('ref-tower', %s, %s, %s, %s, 'critical', 'open', %s, %s, 'x', now())"
            " RETURNING id",
            (rule, f"s:{rule}", floor, tenants, rule == "fire", rule == "fire"),
        ).fetchone()
    assert row is not None
    return int(row[0])


class FakeEngine(threading.Thread):
    """Answers commands like the alert engine: ack is done, reset of an active fire refused."""

    def __init__(self, db_url: str) -> None:
        super().__init__(daemon=True)
        self.db_url = db_url
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            while not self.stop.wait(0.02):
                for cid, alert_id, action in conn.execute(
                    "SELECT id, alert_id, action FROM alert_commands WHERE processed_at IS NULL"
                ).fetchall():
                    active = conn.execute(
                        "SELECT condition_active FROM alerts WHERE id = %s", (alert_id,)
                    ).fetchone()
                    if action == "reset" and active and active[0]:
                        result, detail = "refused", "the fire condition is still active"
                    else:
                        result, detail = "done", None
                        if action == "ack":
                            conn.execute(
                                "UPDATE alerts SET state = 'acknowledged',"
                                " acknowledged_at = now() WHERE id = %s",
                                (alert_id,),
                            )
                    conn.execute(
                        "UPDATE alert_commands SET processed_at = now(), result = %s,"
                        " detail = %s WHERE id = %s",
                        (result, detail, cid),
                    )


@pytest.fixture
def tower(db_url: str) -> str:
    apply(db_url, ref_tower(REF_TOWER))
    return db_url


def test_alert_actions_go_through_the_engine(tower: str) -> None:
    fire = _alert(tower, "fire", ["voltcab"])
    demand = _alert(tower, "tenant_demand", ["voltcab"])
    op, tenant = token(tower, "operator"), token(tower, "tenant", "voltcab", "ref-tower")
    engine = FakeEngine(tower)
    with client(tower, api_command_timeout_s=0.5) as c:
        r = c.post(f"/api/v1/alerts/{demand}/ack", headers=bearer(op))
        assert r.status_code == 504  # no engine running yet: the command stays queued
        engine.start()
        try:
            r = c.post(f"/api/v1/alerts/{demand}/ack", headers=bearer(tenant), json={"note": "ok"})
            assert r.status_code == 200, r.text
            assert r.json()["state"] == "acknowledged"
            assert c.post(f"/api/v1/alerts/{fire}/ack", headers=bearer(tenant)).status_code == 403
            r = c.post(f"/api/v1/alerts/{fire}/reset", headers=bearer(tenant))
            assert r.status_code == 403
            r = c.post(f"/api/v1/alerts/{fire}/reset", headers=bearer(op))
            assert r.status_code == 409 and "still active" in r.json()["detail"]
            r = c.post(f"/api/v1/alerts/{fire}/shelve", headers=bearer(op), json={"duration_s": 60})
            assert r.status_code == 200
            assert c.post("/api/v1/alerts/999999/ack", headers=bearer(op)).status_code == 404
        finally:
            engine.stop.set()
            engine.join()
    with psycopg.connect(tower) as conn:
        actors = conn.execute("SELECT actor FROM alert_commands ORDER BY id").fetchall()
        audited = conn.execute("SELECT count(*) FROM audit_log WHERE action LIKE 'alert.%'")
        assert audited.fetchone() == (len(actors),)
    assert "tenant:voltcab/test-tenant-voltcab" in actors[1][0]


def test_sign_in_cookie_sign_out_and_throttle(tower: str) -> None:
    secret = token(tower, "tenant", "cellforge", "ref-tower")
    with client(tower) as c:
        assert c.get("/api/v1/auth/me").status_code == 401
        r = c.post("/api/v1/auth/session", json={"token": secret})
        assert r.status_code == 200 and r.json()["tenant"] == "cellforge"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert c.get("/api/v1/auth/me").json()["tenant"] == "cellforge"
        assert c.get("/").status_code == 200
        assert c.delete("/api/v1/auth/session").status_code == 204
        assert c.get("/api/v1/auth/me").status_code == 401
        for _ in range(10):
            assert c.post("/api/v1/auth/session", json={"token": "ups_wrong"}).status_code == 401
        r = c.post("/api/v1/auth/session", json={"token": secret})
        assert r.status_code == 429 and r.headers["retry-after"] == "60"
        r = c.get("/api/v1/buildings", headers={"Authorization": "Basic eDp5"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


def test_bad_input_is_422_with_the_field(tower: str) -> None:
    op = bearer(token(tower, "operator"))
    with client(tower) as c:
        r = c.get("/api/v1/buildings?color=red", headers=op)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "color"]
        r = c.get(
            "/api/v1/sensors/ref-f01-power-voltcab/readings?from=2026-01-01T00:00", headers=op
        )
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "from"]
        r = c.get(
            "/api/v1/sensors/ref-f01-power-voltcab/readings?from=2026-01-02T00:00Z"
            "&to=2026-01-01T00:00:00%2B08:00",
            headers=op,
        )
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "from"]
        r = c.get("/api/v1/tenants/voltcab/power?step=1m&from=2020-01-01T00:00Z", headers=op)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "step"]
        r = c.post(
            "/api/v1/buildings/ref-tower/floors/1/load-check",
            headers=op,
            json={"zone": "f01-z1", "mass_kg": -1, "footprint_m2": 1, "height_m": 1, "power_kw": 1},
        )
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "mass_kg"]


def test_move_in_check(tower: str) -> None:
    now = datetime.now(UTC)
    rows = [(f"ref-f03-load-z{z}", now - timedelta(seconds=2), 400.0) for z in range(1, 5)]
    rows += [(s, now - timedelta(seconds=2), 300.0) for s in
             ("ref-f03-power-northbridge", "ref-f03-power-common")]  # fmt: skip
    store_readings(tower, rows)
    op = bearer(token(tower, "operator"))
    tenant = bearer(token(tower, "tenant", "northbridge", "ref-tower"))
    other = bearer(token(tower, "tenant", "voltcab", "ref-tower"))
    url = "/api/v1/buildings/ref-tower/floors/3/load-check"
    machine = {"zone": "f03-z2", "mass_kg": 10_000, "footprint_m2": 4, "height_m": 2.2,
               "power_kw": 100}  # fmt: skip
    with client(tower) as c:
        r = c.post(url, headers=tenant, json=machine)
        assert r.status_code == 200, r.text
        checks = {x["name"]: x for x in r.json()["checks"]}
        assert checks["zone_load"]["value"] == pytest.approx(420.0)
        assert checks["zone_load"]["verdict"] == "ok"
        assert checks["floor_power"]["value"] == pytest.approx(700.0)
        assert r.json()["verdict"] == "warn"  # 2,500 kg/m2 under the feet
        heavy = c.post(url, headers=op, json=machine | {"mass_kg": 60_000, "height_m": 4.2})
        assert heavy.json()["verdict"] == "refuse"
        refused = {x["name"] for x in heavy.json()["checks"] if x["verdict"] == "refuse"}
        assert refused == {"zone_load", "height"}
        assert c.post(url, headers=other, json=machine).status_code == 404


def test_tokens_cli_and_demo_credentials(
    tower: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    first = demo_credentials(tower, "ref-tower")
    second = demo_credentials(tower, "ref-tower")
    assert set(second["tenants"]) == {t.id for t in ref_tower(REF_TOWER).tenants}
    with client(tower) as c:
        assert c.get("/api/v1/auth/me", headers=bearer(first["operator"])).status_code == 401
        me = c.get("/api/v1/auth/me", headers=bearer(second["tenants"]["axisline"])).json()
        assert me["tenant"] == "axisline"
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir")
    register(parser.add_subparsers(dest="command"))
    monkeypatch.setenv("UPSTAIRS_DATABASE_URL", tower)
    args = parser.parse_args(["tokens", "create", "--role", "tenant", "--tenant", "voltcab",
                              "--name", "ops laptop"])  # fmt: skip
    assert args.func(args) == 0
    secret = capsys.readouterr().out.strip()
    assert secret.startswith("ups_")
    with psycopg.connect(tower) as conn:
        made = [t for t in list_tokens(conn) if t.name == "ops laptop"]
    assert len(made) == 1 and made[0].tenant_id == "voltcab"
    args = parser.parse_args(["tokens", "revoke", str(made[0].id)])
    assert args.func(args) == 0
    args = parser.parse_args(["tokens", "list", "--all"])
    assert args.func(args) == 0
    assert "ops laptop" in capsys.readouterr().out
    with client(tower) as c:
        assert c.get("/api/v1/auth/me", headers=bearer(secret)).status_code == 401


def _metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found is not None, text
    return float(found[1])


def test_health_ready_metrics(tower: str, mqtt) -> None:
    with client(tower, mqtt.url, mqtt.prefix) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz").json()
        assert ready["database"] is True and ready["rollups_age_s"] is None  # never refreshed
        text = c.get("/metrics").text
        assert "upstairs_api_requests" in text
        assert math.isnan(_metric(text, "upstairs_api_rollups_age_seconds"))
        assert c.get("/", follow_redirects=False).status_code == 303
        # a refresher that stopped 90 s ago (what the refresh stamps, migration 0020)
        with psycopg.connect(tower, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO rollup_refresher (refreshed_at) VALUES (now() - interval '90 s')"
            )
        ready = c.get("/readyz")
        assert ready.status_code == 200  # stale rollups do not take the API out of service
        assert 90 <= ready.json()["rollups_age_s"] < 120, ready.json()
        assert 90 <= _metric(c.get("/metrics").text, "upstairs_api_rollups_age_seconds") < 120


def test_the_refresher_heartbeat_never_costs_readiness(tower: str) -> None:
    """A locked heartbeat table answers within the statement timeout with the last reading,
    aged; a missing one (an API newer than the schema) leaves the database ready."""
    with psycopg.connect(tower, autocommit=True) as conn:
        conn.execute("INSERT INTO rollup_refresher (refreshed_at) VALUES (now() - interval '30 s')")
    with client(tower) as c:
        assert 30 <= c.get("/readyz").json()["rollups_age_s"] < 60
        with psycopg.connect(tower) as locker:
            locker.execute("LOCK TABLE rollup_refresher IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            ready = c.get("/readyz")
            took = time.monotonic() - started
            assert ready.status_code == 200 and ready.json()["database"] is True
            assert 30 <= ready.json()["rollups_age_s"] < 60  # the last reading, aged
            assert took < 1.9, took  # the 1 s statement timeout, not the lock's holder
            assert 30 <= _metric(c.get("/metrics").text, "upstairs_api_rollups_age_seconds") < 60
        with psycopg.connect(tower, autocommit=True) as conn:
            conn.execute("DROP TABLE rollup_refresher")
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["database"] is True, ready.json()
