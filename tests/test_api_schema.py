"""Schemathesis over every operation of the OpenAPI document: no 500, no schema violation."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import uvicorn

from api.app import create_app
from api.settings import ApiSettings
from tests.api_helpers import apply, ref_tower, store_readings, token
from tests.conftest import REF_TOWER

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
        "negative_data_rejection",
    ]
)


@pytest.fixture
def server(db_url: str, mqtt) -> Iterator[str]:
    apply(db_url, ref_tower(REF_TOWER))
    now = datetime.now(UTC)
    rows = [
        (sensor, now - timedelta(minutes=m), 100.0 + m)
        for sensor in ("ref-f03-load-z2", "ref-f03-power-northbridge", "ref-f03-energy-northbridge")
        for m in range(1, 180, 3)
    ]
    store_readings(db_url, rows)
    settings = ApiSettings(
        database_url=db_url,
        mqtt_url=mqtt.url,
        topic_prefix=mqtt.prefix,
        api_command_timeout_s=0.2,
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("role", ["operator"])
def test_schemathesis_every_operation(server: str, db_url: str, role: str, tmp_path: Path) -> None:
    secret = token(db_url, role, "northbridge" if role == "tenant" else None, "ref-tower")
    cli = Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [
            str(cli),
            "run",
            f"{server}/openapi.json",
            "--checks",
            CHECKS,
            "--max-examples",
            os.environ.get("UPSTAIRS_SCHEMATHESIS_EXAMPLES", "50"),
            "--header",
            f"Authorization: Bearer {secret}",
            "--seed",
            "1",
            "--phases",
            "examples,coverage,fuzzing",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=580,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
