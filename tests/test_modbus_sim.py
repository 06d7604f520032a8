"""The Modbus simulator over real Modbus TCP: the register map, dropouts, rollover."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pymodbus.client import AsyncModbusTcpClient

from core.building import Building, SensorKind
from core.building_file import load_building
from core.registers import ENERGY_MODULUS_KWH, REGISTER_MAP, unit_ids
from simulators.modbus_sim import FieldDevices, run_modbus_simulator, serve_modbus
from tests.conftest import REF_TOWER
from tests.test_gateway_support import free_ports, make_building
from upstairs.embedded import free_port


async def _read(client: AsyncModbusTcpClient, building: Building, sensor_id: str) -> float | int:
    sensor = next(s for s in building.sensors if s.id == sensor_id)
    point = REGISTER_MAP[sensor.kind]
    unit = unit_ids(building, sensor.floor)[sensor_id]
    if point.table.is_bits:
        response = await client.read_discrete_inputs(point.address, count=2, device_id=unit)
        if response.isError():
            return -response.exception_code
        return point.decode(list(response.bits))
    response = await client.read_input_registers(point.address, count=point.count, device_id=unit)
    if response.isError():
        return -response.exception_code
    return point.decode(list(response.registers))


@pytest.fixture
async def served() -> AsyncIterator[tuple[FieldDevices, AsyncModbusTcpClient]]:
    building = make_building(per_kind=2)
    devices = FieldDevices(building, seed=7)
    port_base = free_port() - 1
    stop = asyncio.Event()
    task = asyncio.create_task(serve_modbus(devices, port_base=port_base, stop=stop))
    client = AsyncModbusTcpClient("127.0.0.1", port=port_base + 1, retries=0, timeout=2)
    for _ in range(100):
        if await client.connect():
            break
        await asyncio.sleep(0.05)
    yield devices, client
    client.close()
    stop.set()
    await task


async def test_every_unit_serves_its_sensor(served) -> None:
    devices, client = served
    building = devices.building
    for sensor in building.sensors:
        got = await _read(client, building, sensor.id)
        expected = devices.model.value(sensor.id, devices.clock.now())
        assert expected is not None
        if sensor.kind is SensorKind.FIRE:
            assert got == 0
        elif sensor.kind is SensorKind.ENERGY:
            assert got == pytest.approx(expected, abs=0.05)  # grows while we read
        else:  # values move slowly; one register step of tolerance plus drift
            assert got == pytest.approx(expected, rel=0.02, abs=0.2), sensor.id


async def test_fire_alarm_and_fault_bits(served) -> None:
    devices, client = served
    detector = "gw-f1-fire-1"
    devices.model.set_fire(detector, 1)
    assert await _read(client, devices.building, detector) == 1
    devices.model.set_fire(detector, 2)
    assert await _read(client, devices.building, detector) == 2


async def test_silenced_device_answers_gateway_exception(served) -> None:
    devices, client = served
    devices.model.silence("gw-f1-load-1")
    assert await _read(client, devices.building, "gw-f1-load-1") == -0x0B
    assert await _read(client, devices.building, "gw-f1-load-2") > 0  # its neighbours answer


async def test_devices_are_read_only(served) -> None:
    _, client = served
    response = await client.write_register(0, 1, device_id=1)
    assert response.isError()


async def test_rollover_scenario_wraps_an_energy_register() -> None:
    building = make_building(per_kind=2)
    devices = FieldDevices(building, scenario="rollover", speed=120.0)
    meter = devices.rollover_sensor
    assert meter is not None
    port_base = free_port() - 1
    stop = asyncio.Event()
    task = asyncio.create_task(serve_modbus(devices, port_base=port_base, stop=stop))
    client = AsyncModbusTcpClient("127.0.0.1", port=port_base + 1, retries=0, timeout=2)
    try:
        for _ in range(100):
            if await client.connect():
                break
            await asyncio.sleep(0.05)
        before = await _read(client, building, meter)
        assert ENERGY_MODULUS_KWH - 1_000 < before < ENERGY_MODULUS_KWH
        await asyncio.sleep(0.8)  # 96 s simulated: past the rollover at 60 s
        after = await _read(client, building, meter)
        assert 0 <= after < 1_000
    finally:
        client.close()
        stop.set()
        await task


async def test_reference_tower_one_server_per_floor() -> None:
    building = load_building(REF_TOWER)
    port_base = free_ports(2) - 1  # floors 1 and 2: port_base + 1, + 2
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_modbus_simulator(building, port_base=port_base, floors=[1, 2], stop=stop)
    )
    try:
        for floor in (1, 2):
            client = AsyncModbusTcpClient("127.0.0.1", port=port_base + floor, retries=0)
            for _ in range(100):
                if await client.connect():
                    break
                await asyncio.sleep(0.05)
            load = f"ref-f0{floor}-load-z1"
            value = await _read(client, building, load)
            assert 0 < value < building.zone_limit(building.zone(f"f0{floor}-z1"))
            client.close()
    finally:
        stop.set()
        await task
