"""The building's field devices as Modbus TCP servers: one server per floor, one unit per sensor.

Each floor's server listens on ``host:port_base + floor`` and answers for every sensor of the
floor at the unit id and register point of :mod:`core.registers`. Values are computed when a
request arrives, from the same :class:`~simulators.values.DeviceModel` and scenarios as the
MQTT simulator, at the simulated time of the request (``speed`` times wall-clock time).

A silenced sensor (the ``dropout`` scenario) answers with Modbus exception 0x0B, "gateway
target device failed to respond", as a Modbus TCP gateway in front of a dead RS-485 device
does. The ``rollover`` scenario (Modbus mode only) offsets one energy meter so that its 32-bit
register rolls over to 0 about a minute (simulated) after the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from datetime import datetime, timedelta

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from core.building import Building, SensorKind
from core.registers import REGISTER_MAP, Point, RegisterError, floor_port, unit_ids
from simulators.clock import SimClock
from simulators.profile import stable_key
from simulators.scenarios import SCENARIOS, Scenario, ScenarioError, make_scenario
from simulators.values import DeviceModel

logger = logging.getLogger(__name__)

ROLLOVER = "rollover"
ROLLOVER_DELAY_S = 60.0
MODBUS_SCENARIOS = (*sorted(SCENARIOS), ROLLOVER)
"""Scenario names the Modbus simulator accepts."""

_STEP = timedelta(seconds=1)


class FieldDevices:
    """What every device of a building answers at the current simulated time."""

    def __init__(
        self,
        building: Building,
        *,
        speed: float = 1.0,
        scenario: str = "normal",
        seed: int = 0,
        start: datetime | None = None,
    ) -> None:
        self.building = building
        self.model = DeviceModel(building, seed=seed)
        self.clock = SimClock(speed, start)
        self.offsets: dict[str, float] = {}
        self.rollover_sensor: str | None = None
        if scenario == ROLLOVER:
            self.scenario = Scenario(building, seed=seed)
            self._plan_rollover(seed)
        else:
            self.scenario = make_scenario(scenario, building, seed=seed)
        self._stepped: datetime | None = None
        self.requests = 0

    def _plan_rollover(self, seed: int) -> None:
        meters = sorted(s.id for s in self.building.sensors if s.kind is SensorKind.ENERGY)
        if not meters:
            raise ScenarioError(f"scenario {ROLLOVER!r}: building has no energy meter")
        sensor = meters[stable_key(seed, ROLLOVER) % len(meters)]
        modulus = REGISTER_MAP[SensorKind.ENERGY].modulus
        assert modulus is not None
        at = self.clock.start + timedelta(seconds=ROLLOVER_DELAY_S)
        value = self.model.value(sensor, at) or 0.0
        self.offsets[sensor] = modulus - value
        self.rollover_sensor = sensor

    def now(self) -> datetime:
        at = self.clock.now()
        if self._stepped is None or at - self._stepped >= _STEP:
            self.scenario.step(self.model, at)
            self._stepped = at
        return at

    def value(self, sensor_id: str) -> float | None:
        """What the device reads now; None while it is silenced (it does not answer)."""
        value = self.model.value(sensor_id, self.now())
        if value is None:
            return None
        return value + self.offsets.get(sensor_id, 0.0)

    async def serve(
        self,
        sensor_id: str,
        point: Point,
        _function_code: int,
        start_address: int,
        _address: int,
        _count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus action: fill the device's registers just before they are read."""
        self.requests += 1
        if set_values is not None:
            return ExcCodes.ILLEGAL_FUNCTION  # read-only devices
        value = self.value(sensor_id)
        if value is None:
            return ExcCodes.GATEWAY_NO_RESPONSE
        try:
            words = point.encode(value)
        except RegisterError:
            logger.warning("sensor %s: value %r does not fit its register", sensor_id, value)
            return ExcCodes.DEVICE_FAILURE
        if point.table.is_bits:
            registers[0] = sum(1 << i for i, bit in enumerate(words) if bit)
        else:
            offset = point.address - start_address
            registers[offset : offset + point.count] = [int(w) for w in words]
        return None

    def devices(self, floor: int) -> list[SimDevice]:
        """The Modbus units of one floor."""
        out = []
        kinds = {s.id: s.kind for s in self.building.sensors_on(floor)}
        for sensor_id, unit in unit_ids(self.building, floor).items():
            point = REGISTER_MAP[kinds[sensor_id]]
            # Shared addressing: bit points sit in register 0's low bits.
            registers = 1 if point.table.is_bits else point.address + point.count
            out.append(
                SimDevice(
                    id=unit,
                    simdata=[
                        SimData(
                            0, count=registers, values=0, datatype=SimType.REGISTERS, readonly=True
                        )
                    ],
                    action=functools.partial(self.serve, sensor_id, point),
                )
            )
        return out


async def run_modbus_simulator(
    building: Building,
    *,
    host: str = "127.0.0.1",
    port_base: int,
    speed: float = 1.0,
    scenario: str = "normal",
    seed: int = 0,
    floors: list[int] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve the floors' devices over Modbus TCP until ``stop`` is set (or cancelled)."""
    devices = FieldDevices(building, speed=speed, scenario=scenario, seed=seed)
    await serve_modbus(devices, host=host, port_base=port_base, floors=floors, stop=stop)


async def serve_modbus(
    devices: FieldDevices,
    *,
    host: str = "127.0.0.1",
    port_base: int,
    floors: list[int] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve already built :class:`FieldDevices` (tests act on ``devices.model``)."""
    building = devices.building
    wanted = floors if floors is not None else sorted({s.floor for s in building.sensors})
    for floor in wanted:
        building.floor(floor)  # KeyError for a floor the building does not have
    servers: list[ModbusTcpServer] = []
    try:
        for floor in wanted:
            units = devices.devices(floor)
            if not units:
                logger.info("floor %d has no sensors: no Modbus server", floor)
                continue
            port = floor_port(port_base, floor)
            server = ModbusTcpServer(units, address=(host, port))
            await server.serve_forever(background=True)
            servers.append(server)
            logger.info("floor %d: %d Modbus units on %s:%d", floor, len(units), host, port)
        if devices.rollover_sensor is not None:
            logger.info(
                "scenario rollover: %s rolls over %.0f s (simulated) after the start",
                devices.rollover_sensor,
                ROLLOVER_DELAY_S,
            )
        await (stop or asyncio.Event()).wait()
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                await server.shutdown()  # type: ignore[no-untyped-call]
