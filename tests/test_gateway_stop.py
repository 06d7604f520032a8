"""A gateway's stop is bounded: a broker that stops reading (a half-dead link, a stuck
proxy) cannot hold the end of the session, and so the gateway's exit, for longer than
``DISCONNECT_WAIT_S``: our DISCONNECT cannot be written, and aiomqtt alone would wait for it
as long as the client's timeout (30 s for the gateway's default keepalive)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from pathlib import Path

import aiomqtt
import pytest
from pymodbus.client import AsyncModbusTcpClient

from gateway import uplink
from gateway.poller import Faults, Poller, floor_devices
from gateway.queue import ReadingQueue
from gateway.uplink import _disconnect
from tests.conftest import MqttTarget
from tests.test_gateway_support import make_building
from upstairs.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
CONNACK = bytes([0x20, 0x02, 0x00, 0x00])


async def test_disconnect_from_a_broker_that_stopped_reading_ends_in_time(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    hold = asyncio.Event()

    async def stuck_broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Accepts the CONNECT, then reads nothing more and never closes (until the end)."""
        await reader.read(1024)
        writer.write(CONNACK)
        await writer.drain()
        await hold.wait()
        writer.close()

    server = await asyncio.start_server(stuck_broker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setattr(uplink, "DISCONNECT_WAIT_S", 1.0)
    client = aiomqtt.Client("127.0.0.1", port, identifier="t-stop", keepalive=60, timeout=60)
    await client.__aenter__()
    written = 0
    for _ in range(1000):  # until the socket buffers are full (a QoS 0 publish then waits)
        try:
            await client.publish("t-stop/x", b"x" * 128 * 1024, qos=0, timeout=0.5)
        except aiomqtt.MqttError:
            break
        written += 1
    assert written < 1000
    started = time.monotonic()
    try:
        await asyncio.wait_for(_disconnect(client), 20)  # aiomqtt's own exit: 60 s
    finally:
        hold.set()
        server.close()
    took = time.monotonic() - started
    assert 0.9 <= took < 3
    assert "did not close in 1 s after DISCONNECT" in caplog.text


def test_a_stop_that_does_not_end_exits_with_the_stacks_of_its_tasks() -> None:
    script = """
import asyncio, logging
from gateway.service import _stop_deadline

async def stuck_somewhere() -> None:
    await asyncio.Event().wait()

async def main() -> None:
    _stop_deadline(asyncio.get_running_loop(), 0.5)
    await asyncio.create_task(stuck_somewhere())

logging.basicConfig()
asyncio.run(main())
"""
    started = time.monotonic()
    done = _python(script)
    assert done.returncode == 3
    assert time.monotonic() - started < 10
    assert "the gateway did not stop within 0.5 s" in done.stderr
    assert "stuck_somewhere" in done.stderr


def test_a_stop_that_ended_in_time_cancels_its_deadline() -> None:
    script = """
import asyncio, time
from gateway.service import _stop_deadline

async def main() -> None:
    cancel = _stop_deadline(asyncio.get_running_loop(), 0.3)
    await asyncio.sleep(0.1)  # the stop, ended in time
    cancel()
    await asyncio.sleep(0.5)  # past the loop's deadline

asyncio.run(main())
time.sleep(5.2)  # past the thread's (0.3 + 5 s)
"""
    done = _python(script)
    assert done.returncode == 0, done.stderr
    assert "did not stop" not in done.stderr


def _python(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


async def test_a_poll_that_swallows_its_cancel_does_not_hold_the_poller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Python 3.11's ``asyncio.wait_for`` (which pymodbus's connect and reads use) returns the
    inner result instead of raising when a cancel arrives as that result does. A Modbus
    connection task that swallowed its cancel so went back to wait for the next job, which
    the cancelled scheduler never sent: the poller, and the gateway's stop, waited forever
    (a CI run hung so, the simulator and the gateway stopping at once). Here the connect
    swallows every cancel; the poller must end all the same."""
    entered = asyncio.Event()

    async def swallowing_connect(self: AsyncModbusTcpClient) -> bool:
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return False  # as wait_for does when the inner connect has just failed
        return False

    monkeypatch.setattr(AsyncModbusTcpClient, "connect", swallowing_connect)
    building = make_building(per_kind=1, interval_s=0.2)
    poller = Poller("127.0.0.1", free_port(), floor_devices(building, 1), lambda *_: None)
    task = asyncio.create_task(poller.run())
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    if not done:  # the bug: end the test's task all the same, then fail
        task.cancel()
        await asyncio.wait([task], timeout=5)
    assert task in done, "the poller did not end after its cancel"
    assert task.cancelled()


async def test_an_uplink_whose_connect_swallows_the_cancel_still_stops(
    mqtt: MqttTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiomqtt connects in asyncio.wait_for, which on Python 3.11 can return instead of
    raising a cancel that arrives as the CONNACK does: the session then went on (birth,
    replay, status) and the gateway's stop waited for it until the 15 s deadline."""
    real_enter = aiomqtt.Client.__aenter__
    connecting = asyncio.Event()

    async def swallowing_enter(self: aiomqtt.Client) -> aiomqtt.Client:
        connecting.set()
        with contextlib.suppress(asyncio.CancelledError):  # what wait_for can do
            await asyncio.sleep(1)
        return await real_enter(self)

    monkeypatch.setattr(aiomqtt.Client, "__aenter__", swallowing_enter)
    with ReadingQueue(tmp_path / "q.sqlite", max_readings=100, max_age_s=3600) as queue:
        link = uplink.Uplink(
            mqtt.address,
            uplink.Topics(f"{mqtt.prefix}t", f"{mqtt.prefix}s"),
            queue,
            Faults(),
            source="t-swallow",
            client_id=f"t-swallow-{mqtt.prefix.strip('/')}"[:60],
        )
        task = asyncio.create_task(link.run())
        await asyncio.wait_for(connecting.wait(), 10)
        task.cancel()
        await asyncio.wait([task], timeout=5)
        assert task.done() and task.cancelled(), "the uplink went on after its cancel"
        assert link.stats.sessions == 0  # no birth was published for a cancelled session
