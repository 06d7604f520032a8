"""The floor gateway end to end: real Modbus TCP from the simulator, a real broker."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import defaultdict
from pathlib import Path

from core.aio import run_apart
from core.payload import parse_timestamp
from gateway.service import Gateway, run_gateway
from simulators.modbus_sim import FieldDevices, serve_modbus
from tests.cancel_helpers import CancelAsMqttError
from tests.conftest import MqttTarget
from tests.test_gateway_support import (
    Collector,
    gateway_env,
    make_building,
    settings_for,
    start_gateway,
    wait_until,
    write_building,
)
from upstairs.embedded import free_port


async def test_readings_flow_with_poll_times_and_sequence(mqtt: MqttTarget, tmp_path: Path) -> None:
    building = make_building(per_kind=2, interval_s=0.2)
    port_base = free_port() - 1
    devices = FieldDevices(building)
    collector = Collector(
        mqtt.address.host, mqtt.address.port, mqtt.prefix, f"c-{secrets.token_hex(4)}"
    )
    settings = settings_for(mqtt.url, mqtt.prefix, port_base, tmp_path / "q.sqlite")
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        collecting = tg.create_task(collector.run())
        await collector.ready.wait()
        tg.create_task(serve_modbus(devices, port_base=port_base, stop=stop))
        started = time.time()
        tg.create_task(run_gateway(building, 1, settings, stop=stop))
        await wait_until(lambda: len(collector.readings) >= 150, 20, "150 readings")
        stop.set()
        await wait_until(
            lambda: any(s.get("detail") == "stopped" for s, _ in collector.statuses), 10, "offline"
        )
        collecting.cancel()
    # every sensor of the floor reports, stamped with a poll time, values in range
    per_sensor: dict[str, list[float]] = defaultdict(list)
    for sensor, ts, value in collector.readings:
        stamp = parse_timestamp(ts).timestamp()
        assert started - 0.5 <= stamp <= time.time()
        per_sensor[sensor].append(stamp)
        if "fire" in sensor:
            assert value == 0.0
        elif "load" in sensor:
            assert 0 < value < 500
    assert set(per_sensor) == {s.id for s in building.sensors}
    for stamps in per_sensor.values():
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    # one sequence number per message, consecutive
    assert collector.seqs == list(range(collector.seqs[0], collector.seqs[0] + len(collector.seqs)))
    # retained birth, then the clean offline on stop
    births = [s for s, _ in collector.statuses if s["state"] == "online"]
    assert births[0]["source"] == "gwtest-f01-gw"
    assert collector.statuses[-1][0]["state"] == "offline"


async def test_device_fault_is_reported_and_neighbours_keep_flowing(
    mqtt: MqttTarget, tmp_path: Path
) -> None:
    building = make_building(per_kind=2, interval_s=0.2)
    port_base = free_port() - 1
    devices = FieldDevices(building)
    collector = Collector(
        mqtt.address.host, mqtt.address.port, mqtt.prefix, f"c-{secrets.token_hex(4)}"
    )
    gateway = Gateway(building, 1, settings_for(mqtt.url, mqtt.prefix, port_base, tmp_path / "q"))
    stop = asyncio.Event()
    dead = "gw-f1-load-1"
    async with asyncio.TaskGroup() as tg:
        collecting = tg.create_task(collector.run())
        await collector.ready.wait()
        tg.create_task(serve_modbus(devices, port_base=port_base, stop=stop))
        tg.create_task(gateway.run(stop))
        await wait_until(lambda: len(collector.readings) >= 30, 20, "first readings")
        devices.model.silence(dead)
        await wait_until(lambda: dead in gateway.faults.current, 5, "the fault")
        silenced_at = time.time()
        await wait_until(
            lambda: any(
                f"{dead}=exception_0x0B" in (s.get("detail") or "") for s, _ in collector.statuses
            ),
            5,
            "a status naming the fault",
        )
        mark = len(collector.readings)
        await asyncio.sleep(1.5)
        unsilenced_at = time.time()
        devices.model.silence(dead, False)
        await wait_until(lambda: not gateway.faults.current, 5, "the device back")
        await wait_until(
            lambda: collector.statuses[-1][0].get("detail") is None, 5, "a status without fault"
        )
        stop.set()
        await asyncio.sleep(0.5)
        collecting.cancel()
    during = collector.readings[mark:]
    invented = [
        r
        for r in collector.readings
        if r[0] == dead and silenced_at < parse_timestamp(r[1]).timestamp() < unsilenced_at - 0.3
    ]
    assert invented == []  # nothing made up while the device was silent
    others = {r[0] for r in during}
    assert others >= {s.id for s in building.sensors} - {dead}
    fault_status = next(s for s, _ in collector.statuses if dead in (s.get("detail") or ""))
    assert fault_status["state"] == "online"
    assert fault_status["detail"].startswith("faults n=1 ")


async def test_unreachable_field_bus_then_recovery(mqtt: MqttTarget, tmp_path: Path) -> None:
    building = make_building(per_kind=1, interval_s=0.2)
    port_base = free_port() - 1
    collector = Collector(
        mqtt.address.host, mqtt.address.port, mqtt.prefix, f"c-{secrets.token_hex(4)}"
    )
    gateway = Gateway(building, 1, settings_for(mqtt.url, mqtt.prefix, port_base, tmp_path / "q"))
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        collecting = tg.create_task(collector.run())
        await collector.ready.wait()
        tg.create_task(gateway.run(stop))
        await wait_until(
            lambda: len(gateway.faults.current) == len(building.sensors), 10, "all faulty"
        )
        await wait_until(
            lambda: any("unreachable" in (s.get("detail") or "") for s, _ in collector.statuses),
            5,
            "an unreachable status",
        )
        assert collector.readings == []
        tg.create_task(serve_modbus(FieldDevices(building), port_base=port_base, stop=stop))
        await wait_until(lambda: len(collector.readings) >= 20, 20, "readings after recovery")
        await wait_until(lambda: not gateway.faults.current, 5, "faults cleared")
        stop.set()
        await asyncio.sleep(0.5)
        collecting.cancel()


async def test_kill_9_leaves_the_last_will(mqtt: MqttTarget, tmp_path: Path) -> None:
    building_file = write_building(tmp_path / "b.yaml", per_kind=1, interval_s=0.5)
    building = make_building(per_kind=1, interval_s=0.5)
    port_base = free_port() - 1
    stop = asyncio.Event()
    collector = Collector(
        mqtt.address.host, mqtt.address.port, mqtt.prefix, f"c-{secrets.token_hex(4)}"
    )
    env = gateway_env(mqtt.url, mqtt.prefix, port_base, tmp_path / "q.sqlite")
    async with asyncio.TaskGroup() as tg:
        collecting = tg.create_task(collector.run())
        await collector.ready.wait()
        tg.create_task(serve_modbus(FieldDevices(building), port_base=port_base, stop=stop))
        proc = await start_gateway(building_file, env)
        try:
            await wait_until(lambda: len(collector.readings) >= 5, 30, "readings")
            proc.kill()
            await proc.wait()
            await wait_until(
                lambda: collector.statuses[-1][0]["state"] == "offline", 10, "the last will"
            )
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        stop.set()
        collecting.cancel()
    will = collector.statuses[-1][0]
    assert will == {
        "v": 1,
        "source": "gwtest-f01-gw",
        "state": "offline",
        "detail": "connection lost",
    }


async def test_a_cancelled_uplink_stops_when_its_session_fails_on_the_cancel(
    mqtt: MqttTarget, tmp_path: Path
) -> None:
    """A cancel can come out of an MQTT session as its children's MqttError (a TaskGroup
    cancelled while they fail raises their errors): the uplink must stop all the same, not
    reconnect forever while whoever cancelled it (a gateway stopping) waits."""
    building = make_building(per_kind=1, interval_s=1.0)
    gateway = Gateway(building, 1, settings_for(mqtt.url, mqtt.prefix, 1, tmp_path / "q"))
    session = CancelAsMqttError()
    gateway.uplink._connect_and_serve = session  # type: ignore[method-assign]
    try:
        task = asyncio.create_task(gateway.uplink.run())
        await asyncio.wait_for(session.in_session.wait(), 5)
        task.cancel()
        await asyncio.wait([task], timeout=10)
        assert task.done() and task.cancelled(), task
        assert session.sessions == 1
    finally:
        gateway.queue.close()


async def test_run_apart_waits_for_its_session_through_a_second_cancel() -> None:
    """A cancel during the session's own cleanup does not leave the session behind."""
    cleaned = asyncio.Event()

    async def session() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.2)  # disconnecting
            cleaned.set()

    task = asyncio.create_task(run_apart(session()))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.sleep(0.05)
    task.cancel()  # while the session cleans up
    await asyncio.wait([task], timeout=5)
    assert task.cancelled() and cleaned.is_set()
