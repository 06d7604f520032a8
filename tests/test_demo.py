"""`upstairs demo` end to end: fresh floors within 15 s, Ctrl-C leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import ROOT, MqttTarget
from upstairs.embedded import free_port


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _processes_using(path: Path) -> list[psutil.Process]:
    """Processes whose command line names a path under ``path`` (embedded servers)."""
    out = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any(str(path) in part for part in cmdline):
            out.append(proc)
    return out


def _start_demo(
    env: dict[str, str], data_dir: Path, port: int, *extra: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "upstairs",
            "demo",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
            *extra,
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _assert_nothing_left(seen: set[int], data_dir: Path) -> None:
    """Within 10 s no process of the demo's tree, nor any using its data dir, is alive."""
    deadline = time.monotonic() + 10
    left: list[psutil.Process] = []
    while time.monotonic() < deadline:
        left = [
            p
            for p in (psutil.Process(pid) for pid in seen if psutil.pid_exists(pid))
            if p.status() != psutil.STATUS_ZOMBIE
        ]
        left += _processes_using(data_dir.resolve())
        if not left:
            break
        time.sleep(0.2)
    assert not left, f"left behind after Ctrl-C: {[p.cmdline() for p in left]}"


def _run_demo_and_stop(env: dict[str, str], data_dir: Path, *extra: str) -> None:
    port = free_port()
    # A second run rotates the demo tokens: never read the previous run's file.
    (data_dir / "demo-credentials.json").unlink(missing_ok=True)
    started = time.monotonic()
    demo = _start_demo(env, data_dir, port, *extra)
    seen: set[int] = set()
    try:
        url = f"http://127.0.0.1:{port}/api/v1/buildings/ref-tower/floors"
        headers: dict[str, str] = {}
        floors: list[dict[str, object]] = []
        last = ""
        while time.monotonic() - started < 45:  # about 4 s on a quiet machine
            seen.update(p.pid for p in _descendants(demo.pid))
            assert demo.poll() is None, demo.stdout.read().decode() if demo.stdout else ""
            if not headers and (data_dir / "demo-credentials.json").exists():
                token = json.loads((data_dir / "demo-credentials.json").read_text())["operator"]
                headers = {"Authorization": f"Bearer {token}"}
            try:
                response = httpx.get(url, timeout=2, headers=headers)
            except httpx.HTTPError:
                time.sleep(0.3)
                continue
            last = f"{response.status_code} {response.text[:300]}"
            if response.status_code == 200:
                floors = response.json()
                newest = [f["newest_reading_at"] for f in floors]
                if len(floors) == 10 and all(newest):
                    ages = [
                        (datetime.now(UTC) - datetime.fromisoformat(str(n))).total_seconds()
                        for n in newest
                    ]
                    if max(ages) < 30:
                        break
            time.sleep(0.3)
        else:
            demo.send_signal(signal.SIGINT)
            text = demo.communicate(timeout=30)[0].decode(errors="replace")
            raise AssertionError(f"no fresh floors in 45 s: {last}\n{text[-4000:]}")
        assert [f["number"] for f in floors] == list(range(1, 11))
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5, headers=headers)
        assert page.status_code in (200, 303), page.text
        credentials = json.loads((data_dir / "demo-credentials.json").read_text())
        assert set(credentials["tenants"]) and credentials["operator"]
        seen.update(p.pid for p in _descendants(demo.pid))
    finally:
        demo.send_signal(signal.SIGINT)
        out: bytes = b""
        try:
            out = demo.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            demo.kill()
            out = demo.communicate()[0]
            raise AssertionError("demo did not stop within 30 s of Ctrl-C") from None
    assert demo.returncode == 0, out.decode()[-3000:]
    _assert_nothing_left(seen, data_dir)


def test_demo_on_configured_services(
    service_env: dict[str, str], tmp_session_dir: Path, mqtt: MqttTarget
) -> None:
    data_dir = tmp_session_dir / f"demo-configured-{os.getpid()}-{mqtt.prefix.strip('/')}"
    env = dict(service_env)
    env["UPSTAIRS_INGEST_METRICS_PORT"] = "0"
    _run_demo_and_stop(env, data_dir)


def test_demo_in_modbus_mode(
    service_env: dict[str, str], tmp_session_dir: Path, mqtt: MqttTarget
) -> None:
    """Devices on Modbus TCP, one gateway a floor, the same floors within 15 s."""
    data_dir = tmp_session_dir / f"demo-modbus-{mqtt.prefix.strip('/')}"
    env = dict(service_env)
    env["UPSTAIRS_INGEST_METRICS_PORT"] = "0"
    _run_demo_and_stop(env, data_dir, "--mode", "modbus")


@pytest.mark.timeout(180)
def test_demo_on_embedded_services(tmp_session_dir: Path) -> None:
    """No UPSTAIRS_DATABASE_URL / UPSTAIRS_MQTT_URL: the demo starts its own pair."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPSTAIRS_")}
    env["UPSTAIRS_EMBEDDED_BROKER"] = "iotcore"  # what a fresh machine without mosquitto gets
    env["UPSTAIRS_INGEST_METRICS_PORT"] = "0"
    data_dir = tmp_session_dir / "demo-embedded"
    _run_demo_and_stop(env, data_dir)
    # Data survives to the next run: the second start reuses the database.
    _run_demo_and_stop(env, data_dir)


def test_ctrl_c_while_starting_stops_everything(
    service_env: dict[str, str], tmp_session_dir: Path, mqtt: MqttTarget
) -> None:
    """Ctrl-C right after the children started (the API not answering yet) stops them all
    and exits 0, as Ctrl-C later does (it used to surface as KeyboardInterrupt, exit 130)."""
    data_dir = tmp_session_dir / f"demo-early-{mqtt.prefix.strip('/')}"
    env = dict(service_env)
    env["UPSTAIRS_INGEST_METRICS_PORT"] = "0"
    demo = _start_demo(env, data_dir, free_port())
    assert demo.stdout is not None
    lines: list[bytes] = []
    seen: set[int] = set()
    try:
        for line in demo.stdout:
            lines.append(line)
            if b"started simulator" in line:
                break
        seen.update(p.pid for p in _descendants(demo.pid))
        assert not any(b"Upstairs is running" in line for line in lines)
    finally:
        demo.send_signal(signal.SIGINT)
        out = demo.communicate(timeout=60)[0]
    text = b"".join(lines).decode(errors="replace") + out.decode(errors="replace")
    assert demo.returncode == 0, text[-3000:]
    assert "Upstairs stopped." in text
    assert seen, text[-3000:]
    _assert_nothing_left(seen, data_dir)
