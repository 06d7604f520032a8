"""``upstairs grafana export|push``: Grafana provisioning generated from the building model.

``export --out DIR`` writes ``DIR/provisioning/datasources/upstairs.yaml`` (the PostgreSQL
datasource, read as ``grafana_reader`` from the ``GRAFANA_DB_*`` environment of the Grafana
container), ``DIR/provisioning/dashboards/upstairs.yaml`` (the file provider) and
``DIR/dashboards/<building>/*.json``: a building overview, one dashboard per floor and a
tenant-energy dashboard, all querying the rollups (``rollups_1m`` for ranges up to 2 days,
``rollups_1h`` beyond). ``push --url URL --token T`` uploads the same through Grafana's HTTP
API with httpx. See docs/grafana.md (and what was and was not tested there).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import yaml

from core.building import Building
from core.building_file import BuildingFileError, load_building

DATASOURCE_UID = "upstairs-pg"
DATASOURCE_TYPE = "grafana-postgresql-datasource"
FOLDER_UID = "upstairs"
DS = {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID}
DEFAULT_BUILDING = Path(__file__).resolve().parent.parent / "deploy/buildings/ref-tower.yaml"

Json = dict[str, Any]


def _lit(text: str) -> str:
    """A SQL string literal (ids are validated by the building model; quote anyway)."""
    return "'" + text.replace("'", "''") + "'"


def _rollups(columns: str = "sensor_id, bucket, count, sum, max, energy_kwh") -> str:
    """The 1-minute rollups for ranges up to 2 days, the hourly ones beyond."""
    span = "$__timeTo()::timestamptz - $__timeFrom()::timestamptz"
    return (
        f"(SELECT {columns} FROM rollups_1m WHERE $__timeFilter(bucket)"
        f" AND {span} <= interval '2 days'"
        f" UNION ALL SELECT {columns} FROM rollups_1h WHERE $__timeFilter(bucket)"
        f" AND {span} > interval '2 days') r"
    )


def _fresh(alias: str = "l", sensor: str = "s") -> str:
    return f"{alias}.ts > now() - make_interval(secs => 3 * {sensor}.interval_s)"


def _panel(
    title: str,
    sql: str,
    *,
    kind: str = "timeseries",
    fmt: str = "time_series",
    unit: str | None = None,
    size: tuple[int, int, int, int] = (0, 0, 12, 8),
    thresholds: list[tuple[float, str]] | None = None,
    extra: Json | None = None,
) -> Json:
    x, y, w, h = size
    steps: list[Json] = [{"color": "green", "value": None}]
    steps += [{"color": color, "value": value} for value, color in thresholds or []]
    defaults: Json = {"thresholds": {"mode": "absolute", "steps": steps}}
    if unit:
        defaults["unit"] = unit
    if thresholds and kind == "timeseries":
        defaults["custom"] = {"thresholdsStyle": {"mode": "line"}}
    panel: Json = {
        "type": kind,
        "title": title,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {},
        "targets": [
            {
                "refId": "A",
                "datasource": DS,
                "rawQuery": True,
                "editorMode": "code",
                "format": fmt,
                "rawSql": " ".join(sql.split()),
            }
        ],
    }
    panel.update(extra or {})
    return panel


def _dashboard(uid: str, title: str, panels: list[Json], **extra: Any) -> Json:
    for i, panel in enumerate(panels, start=1):
        panel["id"] = i
    return {
        "uid": uid,
        "title": title,
        "tags": ["upstairs"],
        "timezone": extra.pop("timezone", "browser"),
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "30s",
        "time": {"from": extra.pop("time_from", "now-24h"), "to": "now"},
        "templating": {"list": extra.pop("variables", [])},
        "links": [{"title": "Upstairs", "type": "dashboards", "tags": ["upstairs"]}],
        "panels": panels,
        **extra,
    }


def overview(b: Building) -> Json:
    bid = _lit(b.id)
    per_floor = (
        f"FROM {_rollups()} JOIN sensors s ON s.id = r.sensor_id"
        f" JOIN floors f ON f.building_id = s.building_id AND f.number = s.floor"
        f" LEFT JOIN zones z ON z.building_id = s.building_id AND z.id = s.zone_id"
        f" WHERE s.building_id = {bid}"
    )
    panels = [
        _panel(
            "Floors now: highest zone load (% of limit), power (% of capacity), max temperature",
            f"SELECT 'floor ' || lpad(f.number::text, 2, '0') AS floor,"
            f" max(100 * l.value / coalesce(z.load_limit_kg_m2, f.load_limit_kg_m2))"
            f"  FILTER (WHERE s.kind = 'load') AS \"max zone load %\","
            f" 100 * sum(l.value) FILTER (WHERE s.kind = 'power') / f.power_capacity_kw"
            f'  AS "power % of capacity",'
            f" sum(l.value) FILTER (WHERE s.kind = 'power') AS \"power kW\","
            f" max(l.value) FILTER (WHERE s.kind = 'temperature') AS \"max temperature degC\","
            f" CASE WHEN bool_or(l.value = 1) FILTER (WHERE s.kind = 'fire') THEN 'FIRE'"
            f"  WHEN bool_or(l.value = 2) FILTER (WHERE s.kind = 'fire') THEN 'fault'"
            f"  WHEN count(*) FILTER (WHERE s.kind = 'fire') > 0 THEN 'normal'"
            f"  ELSE 'unknown' END AS fire"
            f" FROM floors f JOIN sensors s ON s.building_id = f.building_id"
            f"  AND s.floor = f.number AND s.active"
            f" LEFT JOIN zones z ON z.building_id = s.building_id AND z.id = s.zone_id"
            f" JOIN sensor_latest l ON l.sensor_id = s.id AND {_fresh()}"
            f" WHERE f.building_id = {bid} GROUP BY f.number, f.power_capacity_kw"
            f" ORDER BY f.number DESC",
            kind="table",
            fmt="table",
            size=(0, 0, 24, 10),
        ),
        _panel(
            "Power per floor (kW)",
            f"SELECT r.bucket AS time, 'floor ' || lpad(s.floor::text, 2, '0') AS metric,"
            f" sum(r.sum / r.count) AS value {per_floor} AND s.kind = 'power'"
            f" GROUP BY 1, 2 ORDER BY 1",
            unit="kwatt",
            size=(0, 10, 12, 9),
        ),
        _panel(
            "Highest zone load per floor (% of limit)",
            f"SELECT r.bucket AS time, 'floor ' || lpad(s.floor::text, 2, '0') AS metric,"
            f" max(100 * r.max / coalesce(z.load_limit_kg_m2, f.load_limit_kg_m2)) AS value"
            f" {per_floor} AND s.kind = 'load' GROUP BY 1, 2 ORDER BY 1",
            unit="percent",
            size=(12, 10, 12, 9),
            thresholds=[(90, "orange"), (100, "red")],
        ),
        _panel(
            "Highest temperature per floor (degC)",
            f"SELECT r.bucket AS time, 'floor ' || lpad(s.floor::text, 2, '0') AS metric,"
            f" max(r.max) AS value {per_floor} AND s.kind = 'temperature'"
            f" GROUP BY 1, 2 ORDER BY 1",
            unit="celsius",
            size=(0, 19, 12, 9),
            thresholds=[(40, "orange"), (55, "red")],
        ),
        _panel(
            "Open alerts",
            f"SELECT opened_at AS time, floor, severity, state, rule, message,"
            f" acknowledged_by, acknowledged_at FROM alerts"
            f" WHERE building_id = {bid} AND state <> 'resolved'"
            f" ORDER BY opened_at DESC LIMIT 200",
            kind="table",
            fmt="table",
            size=(12, 19, 12, 9),
        ),
    ]
    return _dashboard(
        f"upstairs-{b.id}-overview",
        f"{b.name}: building overview",
        panels,
        timezone=b.timezone,
    )


def floor_dashboard(b: Building, number: int) -> Json:
    floor = b.floor(number)
    bid = _lit(b.id)
    base = (
        f"FROM {_rollups()} JOIN sensors s ON s.id = r.sensor_id"
        f" WHERE s.building_id = {bid} AND s.floor = {int(number)}"
    )
    panels = [
        _panel(
            f"Zone load (kg/m2), floor limit {floor.load_limit_kg_m2:g}",
            f"SELECT r.bucket AS time, coalesce(s.zone_id, s.id) AS metric,"
            f" max(r.max) AS value {base} AND s.kind = 'load' GROUP BY 1, 2 ORDER BY 1",
            unit="kg/m²",
            thresholds=[(0.9 * floor.load_limit_kg_m2, "orange"), (floor.load_limit_kg_m2, "red")],
        ),
        _panel(
            f"Power (kW), floor capacity {floor.power_capacity_kw:g} kW",
            f"SELECT r.bucket AS time, 'floor total' AS metric, sum(r.sum / r.count) AS value"
            f" {base} AND s.kind = 'power' GROUP BY 1, 2 ORDER BY 1",
            unit="kwatt",
            size=(12, 0, 12, 8),
            thresholds=[
                (0.9 * floor.power_capacity_kw, "orange"),
                (floor.power_capacity_kw, "red"),
            ],
        ),
        _panel(
            "Temperature (degC)",
            f"SELECT r.bucket AS time, coalesce(s.zone_id, s.id) AS metric,"
            f" sum(r.sum) / sum(r.count) AS value {base} AND s.kind = 'temperature'"
            f" GROUP BY 1, 2 ORDER BY 1",
            unit="celsius",
            size=(0, 8, 12, 8),
            thresholds=[(40, "orange"), (55, "red")],
        ),
        _panel(
            "Sensors now: latest value and data quality",
            f"SELECT s.id AS sensor, s.kind, s.zone_id AS zone, l.value, s.unit, l.ts AS at,"
            f" CASE WHEN l.ts IS NULL THEN 'no data' WHEN {_fresh()} THEN 'ok'"
            f"  ELSE 'stale' END AS quality"
            f" FROM sensors s LEFT JOIN sensor_latest l ON l.sensor_id = s.id"
            f" WHERE s.building_id = {bid} AND s.floor = {int(number)} AND s.active"
            f" ORDER BY s.kind, s.id",
            kind="table",
            fmt="table",
            size=(12, 8, 12, 8),
        ),
    ]
    title = f"{b.name}: floor {number}" + (f" ({floor.name})" if floor.name else "")
    return _dashboard(f"upstairs-{b.id}-floor-{number:02d}", title, panels, timezone=b.timezone)


def tenant_energy(b: Building) -> Json:
    bid = _lit(b.id)
    tz = _lit(b.timezone)
    meters = (
        f"FROM {_rollups()} JOIN grafana_meter_tenancy m ON m.sensor_id = r.sensor_id"
        f" AND r.bucket >= m.from_ts AND r.bucket < m.to_ts"
        f" WHERE m.building_id = {bid} AND m.tenant_id = '$tenant'"
    )
    panels = [
        _panel(
            "Power (kW) against the contract",
            f"SELECT r.bucket AS time, 'kW' AS metric, sum(r.sum / r.count) AS value"
            f" {meters} AND m.kind = 'power' GROUP BY 1 ORDER BY 1",
            unit="kwatt",
            size=(0, 0, 24, 8),
        ),
        _panel(
            "Energy per local day (kWh)",
            f"SELECT local_day_start(h.bucket, {tz}) AS time,"
            f" 'kWh' AS metric, sum(h.energy_kwh) AS value FROM rollups_1h h"
            f" JOIN grafana_meter_tenancy m ON m.sensor_id = h.sensor_id AND m.kind = 'energy'"
            f" AND h.bucket >= m.from_ts AND h.bucket < m.to_ts"
            f" WHERE m.building_id = {bid} AND m.tenant_id = '$tenant'"
            f" AND $__timeFilter(h.bucket) GROUP BY 1 ORDER BY 1",
            kind="barchart",
            unit="kwatth",
            size=(0, 8, 12, 9),
            extra={"options": {"xTickLabelRotation": -45}},
        ),
        _panel(
            "Energy by time-of-use period in the range (kWh, cost)",
            f"SELECT w.period, sum(r.energy_kwh) AS kwh, p.price_per_kwh,"
            f" round(sum(r.energy_kwh)::numeric * p.price_per_kwh, 2) AS cost, t.currency"
            f" FROM rollups_1m r JOIN grafana_meter_tenancy m ON m.sensor_id = r.sensor_id"
            f" AND m.kind = 'energy' AND r.bucket >= m.from_ts AND r.bucket < m.to_ts"
            f" JOIN tenants tn ON tn.building_id = m.building_id AND tn.id = m.tenant_id"
            f" JOIN tariffs t ON t.building_id = tn.building_id AND t.id = tn.tariff_id"
            f" JOIN tariff_windows w ON w.building_id = t.building_id AND w.tariff_id = t.id"
            f" AND extract(hour FROM r.bucket AT TIME ZONE {tz}) * 60"
            f"   + extract(minute FROM r.bucket AT TIME ZONE {tz})"
            f"   >= w.start_minute"
            f" AND extract(hour FROM r.bucket AT TIME ZONE {tz}) * 60"
            f"   + extract(minute FROM r.bucket AT TIME ZONE {tz}) < w.end_minute"
            f" JOIN tariff_periods p ON p.building_id = w.building_id"
            f" AND p.tariff_id = w.tariff_id AND p.name = w.period"
            f" WHERE m.building_id = {bid} AND m.tenant_id = '$tenant'"
            f" AND $__timeFilter(r.bucket) AND r.energy_kwh IS NOT NULL"
            f" GROUP BY w.period, p.price_per_kwh, t.currency ORDER BY p.price_per_kwh DESC",
            kind="table",
            fmt="table",
            size=(12, 8, 12, 9),
        ),
    ]
    variable = {
        "name": "tenant",
        "label": "Tenant",
        "type": "query",
        "datasource": DS,
        "query": f"SELECT id AS __value, name AS __text FROM tenants"
        f" WHERE building_id = {bid} ORDER BY name",
        "refresh": 1,
        "current": {"text": b.tenants[0].name, "value": b.tenants[0].id} if b.tenants else {},
    }
    return _dashboard(
        f"upstairs-{b.id}-tenant-energy",
        f"{b.name}: tenant energy",
        panels,
        timezone=b.timezone,
        time_from="now-30d",
        variables=[variable],
    )


def dashboards(b: Building) -> dict[str, Json]:
    """File name -> dashboard JSON."""
    out = {"overview.json": overview(b), "tenant-energy.json": tenant_energy(b)}
    for floor in sorted(f.number for f in b.floors):
        out[f"floor-{floor:02d}.json"] = floor_dashboard(b, floor)
    return out


def datasource_provisioning() -> Json:
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Upstairs PostgreSQL",
                "uid": DATASOURCE_UID,
                "type": DATASOURCE_TYPE,
                "access": "proxy",
                "url": "${GRAFANA_DB_HOST}",
                "user": "${GRAFANA_DB_USER}",
                "isDefault": True,
                "editable": False,
                "jsonData": {
                    "database": "${GRAFANA_DB_NAME}",
                    "sslmode": "disable",
                    "postgresVersion": 1500,
                    "timescaledb": False,
                    "timeInterval": "1m",
                },
                "secureJsonData": {"password": "${GRAFANA_DB_PASSWORD}"},
            }
        ],
    }


def provider_provisioning() -> Json:
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": "upstairs",
                "folder": "Upstairs",
                "folderUid": FOLDER_UID,
                "type": "file",
                "disableDeletion": True,
                "allowUiUpdates": False,
                "updateIntervalSeconds": 60,
                "options": {
                    "path": "/var/lib/grafana/dashboards",
                    "foldersFromFilesStructure": False,
                },
            }
        ],
    }


_HEADER = "# Generated by `upstairs grafana export` from the building model: do not edit.\n"


def export(b: Building, out: Path) -> list[Path]:
    """Write the provisioning tree under ``out``; return the files written."""
    written: list[Path] = []
    prov = out / "provisioning"
    for sub, name, doc in (
        ("datasources", "upstairs.yaml", datasource_provisioning()),
        ("dashboards", "upstairs.yaml", provider_provisioning()),
    ):
        path = prov / sub / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_HEADER + yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        written.append(path)
    folder = out / "dashboards" / b.id
    folder.mkdir(parents=True, exist_ok=True)
    for name, dash in dashboards(b).items():
        path = folder / name
        path.write_text(json.dumps(dash, indent=2) + "\n", encoding="utf-8")
        written.append(path)
    return written


def expand_macros(sql: str, start: datetime, end: datetime, variables: dict[str, str]) -> str:
    """Grafana's PostgreSQL macros and ``$var``s as Grafana expands them (the tests' stand-in)."""
    frm, to = _lit(start.isoformat()), _lit(end.isoformat())
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)", rf"\1 BETWEEN {frm} AND {to}", sql)
    sql = sql.replace("$__timeFrom()", frm).replace("$__timeTo()", to)
    for name, value in variables.items():
        sql = sql.replace(f"${name}", value.replace("'", "''"))
    return sql


class PushError(RuntimeError):
    """Grafana refused a request."""


def _check(response: httpx.Response, what: str) -> Json:
    if response.status_code >= 400:
        raise PushError(f"{what}: HTTP {response.status_code}: {response.text[:300]}")
    body: Json = response.json() if response.content else {}
    return body


def _datasource_body(db_url: str) -> Json:
    parts = urlsplit(db_url)
    password = unquote(parts.password or "") or os.environ.get("GRAFANA_DB_PASSWORD", "")
    body = dict(datasource_provisioning()["datasources"][0])
    body.pop("editable")
    body["url"] = f"{parts.hostname}:{parts.port or 5432}"
    body["user"] = unquote(parts.username or "grafana_reader")
    body["jsonData"] = {**body["jsonData"], "database": parts.path.lstrip("/") or "upstairs"}
    body["secureJsonData"] = {"password": password}
    return body


def push(
    b: Building, client: httpx.Client, db_url: str | None = None, folder: str = "Upstairs"
) -> list[str]:
    """Upload the datasource (when ``db_url``), the folder and every dashboard; return uids."""
    if db_url:
        body = _datasource_body(db_url)
        found = client.get(f"/api/datasources/uid/{DATASOURCE_UID}")
        if found.status_code == 404:
            _check(client.post("/api/datasources", json=body), "create datasource")
        else:
            _check(found, "look up datasource")
            _check(client.put(f"/api/datasources/uid/{DATASOURCE_UID}", json=body), "datasource")
    found = client.get(f"/api/folders/{FOLDER_UID}")
    if found.status_code == 404:
        _check(client.post("/api/folders", json={"uid": FOLDER_UID, "title": folder}), "folder")
    else:
        _check(found, "look up folder")
    uids = []
    for dash in dashboards(b).values():
        payload = {
            "dashboard": {**dash, "id": None},
            "folderUid": FOLDER_UID,
            "overwrite": True,
            "message": "upstairs grafana push",
        }
        _check(client.post("/api/dashboards/db", json=payload), f"dashboard {dash['uid']}")
        uids.append(dash["uid"])
    return uids


def _load(path: Path) -> Building | None:
    try:
        return load_building(path)
    except BuildingFileError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def _cmd_export(args: argparse.Namespace) -> int:
    building = _load(args.building)
    if building is None:
        return 2
    for path in export(building, args.out):
        print(path)
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    building = _load(args.building)
    if building is None:
        return 2
    headers = {"Authorization": f"Bearer {args.token}", "Accept": "application/json"}
    with httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=30.0) as client:
        try:
            uids = push(building, client, args.db_url, args.folder)
        except (PushError, httpx.HTTPError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(f"pushed {len(uids)} dashboards to {args.url}: {', '.join(uids)}")
    return 0


def register(subparsers: Any) -> None:
    """Add ``grafana export`` and ``grafana push`` to the ``upstairs`` command line."""
    grafana = subparsers.add_parser("grafana", help="Grafana provisioning and upload")
    sub = grafana.add_subparsers(dest="grafana_command", required=True)
    exp = sub.add_parser("export", help="write datasource + dashboard provisioning files")
    exp.add_argument("--out", type=Path, required=True, help="e.g. deploy/grafana")
    exp.add_argument("--building", type=Path, default=DEFAULT_BUILDING)
    exp.set_defaults(func=_cmd_export)
    psh = sub.add_parser("push", help="upload the dashboards through Grafana's HTTP API")
    psh.add_argument("--url", required=True, help="Grafana's base URL, e.g. http://127.0.0.1:3000")
    psh.add_argument("--token", required=True, help="a Grafana service-account token")
    psh.add_argument("--building", type=Path, default=DEFAULT_BUILDING)
    psh.add_argument("--folder", default="Upstairs", help="folder title")
    psh.add_argument(
        "--db-url",
        help="also create/update the datasource: postgresql://grafana_reader@host:5432/db"
        " (password from the URL or GRAFANA_DB_PASSWORD)",
    )
    psh.set_defaults(func=_cmd_push)
