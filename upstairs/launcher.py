"""``upstairs demo``: the whole platform in one process tree on embedded defaults."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psycopg

from core.building_file import BuildingFileError, load_building
from core.db import migrate
from upstairs.services import Endpoints, endpoints
from upstairs.supervisor import Supervisor

logger = logging.getLogger(__name__)


def write_credentials(data_dir: Path, credentials: dict[str, object]) -> Path:
    """``<data-dir>/demo-credentials.json``, readable by its owner only."""
    path = data_dir / "demo-credentials.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(credentials, indent=2) + "\n", encoding="utf-8")
    tmp.chmod(0o600)
    tmp.replace(path)
    return path


def free_port_block(size: int) -> int:
    """A base port such that base .. base+size are free now (Modbus servers per floor)."""
    import socket

    for base in range(15000, 60000, 100):
        ok = True
        for port in range(base, base + size + 1):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free block of ports for the Modbus simulators")


def _wait_http(url: str, timeout_s: float, stop: Callable[[], bool] = lambda: False) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not stop():
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.2)
    return False


def run_demo(
    data_dir: Path,
    port: int,
    building_file: Path,
    scenario: str = "normal",
    speed: float = 1.0,
    mode: str = "mqtt",
    backfill_hours: float = 0.0,
) -> int:
    from core.building_store import apply_building

    try:
        building = load_building(building_file)
    except BuildingFileError as exc:
        print(exc, file=sys.stderr)
        return 2
    data_dir.mkdir(parents=True, exist_ok=True)
    with endpoints(data_dir) as ep:
        migrate(ep.database_url)
        with psycopg.connect(ep.database_url) as conn:
            apply_building(conn, building)
        from api.tokens import demo_credentials

        credentials = write_credentials(data_dir, demo_credentials(ep.database_url, building.id))
        env = {**os.environ, **ep.env()}
        supervisor = Supervisor(env)
        supervisor.add("ingest", ["ingest"])
        supervisor.add("alerts", ["alerts"])
        supervisor.add("api", ["api", "--port", str(port)])
        supervisor.add(
            "simulator",
            [
                "simulate",
                "--building",
                str(building_file),
                "--speed",
                str(speed),
                "--scenario",
                scenario,
            ],
        )
        with supervisor.catching_signals():
            supervisor.start()
            _announce(supervisor, port, building.id, credentials, ep)
            supervisor.run()
    print("Upstairs stopped.", flush=True)
    return 0


def _announce(
    supervisor: Supervisor, port: int, building: str, credentials: Path, ep: Endpoints
) -> None:
    """Wait for the API, then say where everything is (unless a stop came first)."""
    url = f"http://127.0.0.1:{port}"
    if _wait_http(f"{url}/healthz", 30, lambda: supervisor.stopping):
        print(f"\nUpstairs is running at {url}/  (building {building})", flush=True)
        print(f"  floors:      {url}/api/v1/buildings/{building}/floors", flush=True)
        print(f"  API docs:    {url}/docs", flush=True)
        print(f"  credentials: {credentials}", flush=True)
        print(
            f"  database:    {'embedded' if ep.embedded_database else 'configured'}; "
            f"broker: {ep.embedded_broker or 'configured'} ({ep.mqtt_url})",
            flush=True,
        )
        print("Press Ctrl-C to stop.", flush=True)
    elif not supervisor.stopping:
        logger.error("the API did not answer on %s within 30 s", url)
