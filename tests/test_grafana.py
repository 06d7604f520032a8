"""Grafana provisioning: files match the building model, every panel's SQL returns rows as
grafana_reader on the real database, and ``push`` talks to a real local HTTP receiver."""

from __future__ import annotations

import argparse
import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from api import seed
from core.building_file import load_building
from core.building_store import apply_building
from tests.conftest import REF_TOWER, ROOT
from upstairs import grafana


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    grafana.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_export_is_what_deploy_holds(tmp_path: Path) -> None:
    assert _run(["grafana", "export", "--out", str(tmp_path), "--building", str(REF_TOWER)]) == 0
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    deployed = ROOT / "deploy" / "grafana"
    assert written == sorted(p.relative_to(deployed) for p in deployed.rglob("*") if p.is_file())
    for rel in written:  # deploy/grafana/ is regenerated with the same command
        assert (tmp_path / rel).read_text() == (deployed / rel).read_text(), rel
    ds = yaml.safe_load((tmp_path / "provisioning/datasources/upstairs.yaml").read_text())
    assert ds["datasources"][0]["user"] == "${GRAFANA_DB_USER}"
    names = {p.name for p in (tmp_path / "dashboards" / "ref-tower").iterdir()}
    assert names == {"overview.json", "tenant-energy.json"} | {
        f"floor-{n:02d}.json" for n in range(1, 11)
    }


def _seed(db_url: str, now: datetime) -> None:
    building = load_building(REF_TOWER)
    start = (now - timedelta(hours=3)).replace(second=0, microsecond=0)
    rows = []
    for sensor in building.sensors:
        for i in range(0, 180, 2):
            ts = start + timedelta(minutes=i)
            value = {"energy": 1000.0 + i * 5, "fire": 0.0, "load": 320.0, "power": 150.0}.get(
                sensor.kind.value, 24.0
            )
            rows.append((sensor.id, ts, value))
        rows.append((sensor.id, now - timedelta(seconds=1), value))  # fresh "now" values
    with psycopg.connect(db_url) as conn:
        apply_building(conn, building)
        seed.store(conn, rows)
        conn.execute(
            "INSERT INTO alerts (building_id, rule, subject, floor, tenant_ids, severity, state,"
            " message, opened_at) VALUES ('ref-tower', 'zone_load', 'zone:f05-z1', 5,"
            " '{jinqiao-smt}', 'critical', 'open', 'zone f05-z1 at 104 %', now())"
        )


def test_every_panel_returns_rows_as_grafana_reader(db_url: str) -> None:
    now = datetime.now(UTC)
    _seed(db_url, now)
    reader = psycopg.conninfo.make_conninfo(db_url, user="grafana_reader")
    building = load_building(REF_TOWER)
    checked = 0
    with psycopg.connect(reader) as conn:
        assert conn.execute("SELECT rolbypassrls FROM pg_roles WHERE rolname = current_user")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM api_tokens")
        conn.rollback()
        for name, dash in grafana.dashboards(building).items():
            for variable in dash["templating"]["list"]:
                rows = conn.execute(variable["query"]).fetchall()
                assert len(rows) == len(building.tenants), name
            for panel in dash["panels"]:
                sql = panel["targets"][0]["rawSql"]
                # 6 hours reads rollups_1m, 3 days rollups_1h: both branches must answer
                for span in (timedelta(hours=6), timedelta(days=3)):
                    query = grafana.expand_macros(sql, now - span, now, {"tenant": "voltcab"})
                    assert "$" not in query, query
                    rows = conn.execute(query.encode()).fetchall()
                    assert rows, f"{name}: {panel['title']} ({span}) returned no rows"
                    checked += 1
    assert checked >= 2 * (5 + 3 + 10 * 4)


class Receiver(BaseHTTPRequestHandler):
    """A stand-in Grafana: checks every request, answers like Grafana's HTTP API."""

    log: list[tuple[str, str, Any]]
    existing: set[str]
    token = "glsa_test"

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body: Any = json.loads(self.rfile.read(length)) if length else None
        self.log.append((self.command, self.path, body))
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            self._answer(401, {"message": "Unauthorized"})
            return
        if body is not None:
            assert self.headers.get("Content-Type") == "application/json"
        if self.command == "GET":
            found = self.path in self.existing
            self._answer(200 if found else 404, {"uid": "x"} if found else {"message": "nf"})
            return
        if self.path == "/api/dashboards/db":
            dash = body["dashboard"]
            ok = (
                dash["id"] is None
                and body["folderUid"] == grafana.FOLDER_UID
                and body["overwrite"] is True
                and all(p["datasource"]["uid"] == grafana.DATASOURCE_UID for p in dash["panels"])
            )
            self._answer(200 if ok else 400, {"status": "success", "uid": dash["uid"]})
            return
        if self.path == "/api/folders":
            self.existing.add(f"/api/folders/{body['uid']}")
        if self.path == "/api/datasources":
            assert body["secureJsonData"]["password"] == "s3cret"
            self.existing.add(f"/api/datasources/uid/{body['uid']}")
        self._answer(200, {"message": "ok"})

    do_GET = do_POST = do_PUT = _handle


def test_push_through_the_http_api() -> None:
    log: list[tuple[str, str, Any]] = []
    handler = type("H", (Receiver,), {"log": log, "existing": set()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    db = "postgresql://grafana_reader:s3cret@db.example:5432/upstairs"
    try:
        base = ["grafana", "push", "--url", url, "--building", str(REF_TOWER), "--db-url", db]
        assert _run([*base, "--token", "wrong"]) == 1  # refused: exits 1, goes no further
        assert len(log) == 1
        log.clear()
        assert _run([*base, "--token", Receiver.token]) == 0
        calls = [(m, p) for m, p, _ in log]
        assert calls[:4] == [
            ("GET", "/api/datasources/uid/upstairs-pg"),
            ("POST", "/api/datasources"),
            ("GET", "/api/folders/upstairs"),
            ("POST", "/api/folders"),
        ]
        dashboards = [b["dashboard"]["uid"] for m, p, b in log if p == "/api/dashboards/db"]
        assert len(dashboards) == 12 and "upstairs-ref-tower-overview" in dashboards
        ds = log[1][2]
        assert ds["url"] == "db.example:5432" and ds["user"] == "grafana_reader"
        assert ds["jsonData"]["database"] == "upstairs"
        log.clear()
        assert _run([*base, "--token", Receiver.token]) == 0  # again: updates, no duplicates
        assert [(m, p) for m, p, _ in log][:3] == [
            ("GET", "/api/datasources/uid/upstairs-pg"),
            ("PUT", "/api/datasources/uid/upstairs-pg"),
            ("GET", "/api/folders/upstairs"),
        ]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
