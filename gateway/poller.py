"""Polling the floor's devices over Modbus TCP, each sensor at its own interval.

A scheduler puts every due sensor on a job queue at whole multiples of its interval; one worker
per TCP connection takes jobs and reads the sensor's point (:mod:`core.registers`). A reading
is stamped with the wall-clock time at which its request was sent, never later.

A device that times out, answers with a Modbus exception, or sits behind a server that cannot
be reached is a *device fault*: the fault is recorded (and logged once, when it starts and when
it ends), and no reading is made up for it. A sensor whose previous poll has not finished when
it is due again is skipped (an overrun), so a slow device never builds a backlog of requests.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from core.aio import raise_if_cancelling
from core.building import Building
from core.registers import REGISTER_MAP, Point, RegisterError, Table, unit_ids

logger = logging.getLogger(__name__)

OnReading = Callable[[str, int, float], None]
"""Called with (sensor id, poll time in ms since 1970 UTC, value)."""


@dataclass(frozen=True, slots=True)
class Device:
    """One sensor's device on the floor's Modbus server."""

    sensor: str
    unit: int
    point: Point
    interval_s: float


def floor_devices(building: Building, floor: int) -> list[Device]:
    """The devices of a floor, with the unit ids and points of the register map."""
    units = unit_ids(building, floor)
    return [
        Device(s.id, units[s.id], REGISTER_MAP[s.kind], s.interval_s)
        for s in building.sensors_on(floor)
    ]


@dataclass
class Faults:
    """Which devices are faulty now, and why; ``version`` grows on every change."""

    current: dict[str, str] = field(default_factory=dict)
    version: int = 0

    def ok(self, sensor: str) -> None:
        reason = self.current.pop(sensor, None)
        if reason is not None:
            self.version += 1
            logger.info("device %s answers again (was: %s)", sensor, reason)

    def fault(self, sensor: str, reason: str) -> None:
        if self.current.get(sensor) != reason:
            self.current[sensor] = reason
            self.version += 1
            logger.warning("device fault: %s: %s", sensor, reason)


@dataclass
class PollStats:
    reads: int = 0
    faults: int = 0
    overruns: int = 0


class Poller:
    """Polls a floor's devices until cancelled."""

    def __init__(
        self,
        host: str,
        port: int,
        devices: list[Device],
        on_reading: OnReading,
        *,
        connections: int = 2,
        timeout_s: float = 1.0,
        faults: Faults | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.devices = devices
        self.on_reading = on_reading
        self.connections = max(1, min(connections, len(devices) or 1))
        self.timeout_s = timeout_s
        self.faults = faults or Faults()
        self.stats = PollStats()
        self._jobs: asyncio.Queue[Device] = asyncio.Queue()
        self._busy: set[str] = set()

    async def run(self) -> None:
        if not self.devices:
            logger.warning("no devices on this floor: nothing to poll")
            await asyncio.Event().wait()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._schedule(), name="modbus-schedule")
            for i in range(self.connections):
                tg.create_task(self._work(i), name=f"modbus-conn-{i}")

    async def _schedule(self) -> None:
        now = time.time()
        heap = [
            (math.ceil(now / d.interval_s) * d.interval_s, i) for i, d in enumerate(self.devices)
        ]
        heapq.heapify(heap)
        while True:
            due, i = heap[0]
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.time()
            while heap[0][0] <= now:
                due, i = heap[0]
                device = self.devices[i]
                if device.sensor in self._busy:
                    self.stats.overruns += 1
                else:
                    self._busy.add(device.sensor)
                    self._jobs.put_nowait(device)
                following = due + device.interval_s
                if following <= now:  # fell behind: skip to the next slot on the grid
                    following = math.floor(now / device.interval_s + 1) * device.interval_s
                heapq.heapreplace(heap, (following, i))

    async def _work(self, n: int) -> None:
        client = AsyncModbusTcpClient(
            self.host, port=self.port, timeout=self.timeout_s, retries=0, reconnect_delay=0
        )
        retry_at = 0.0
        backoff = 0.5
        try:
            while True:
                # pymodbus awaits in asyncio.wait_for, which on Python 3.11 can swallow our
                # cancel (when the inner result won the race): then stop here, or this
                # connection waits for a job that the cancelled scheduler never sends
                raise_if_cancelling()
                device = await self._jobs.get()
                try:
                    if not client.connected and time.monotonic() >= retry_at:
                        if await client.connect():
                            backoff = 0.5
                            logger.debug(
                                "modbus connection %d to %s:%d up", n, self.host, self.port
                            )
                        else:
                            retry_at = time.monotonic() + backoff
                            backoff = min(backoff * 2, 10.0)
                    if not client.connected:
                        self._fault(device, f"unreachable {self.host}:{self.port}")
                        continue
                    await self._poll(client, device)
                finally:
                    self._busy.discard(device.sensor)
        finally:
            client.close()

    async def _poll(self, client: AsyncModbusTcpClient, device: Device) -> None:
        point = device.point
        ts_ms = time.time_ns() // 1_000_000
        try:
            response = await _read(client, point, device.unit)
        except ModbusException as exc:
            self._fault(device, "timeout" if "No response" in str(exc) else "no answer")
            logger.debug("device %s: %s", device.sensor, exc)
            return
        if response.isError():
            code = getattr(response, "exception_code", 0)
            self._fault(device, f"exception 0x{code:02X}")
            return
        values: list[int] | list[bool] = (
            list(response.bits) if point.table.is_bits else list(response.registers)
        )
        try:
            value = point.decode(values)
        except RegisterError as exc:
            self._fault(device, f"bad value ({exc})")
            return
        self.stats.reads += 1
        self.faults.ok(device.sensor)
        self.on_reading(device.sensor, ts_ms, value)

    def _fault(self, device: Device, reason: str) -> None:
        self.stats.faults += 1
        self.faults.fault(device.sensor, reason)


async def _read(client: AsyncModbusTcpClient, point: Point, unit: int) -> ModbusPDU:
    if point.table is Table.INPUT_REGISTERS:
        return await client.read_input_registers(point.address, count=point.count, device_id=unit)
    if point.table is Table.HOLDING_REGISTERS:
        return await client.read_holding_registers(point.address, count=point.count, device_id=unit)
    if point.table is Table.DISCRETE_INPUTS:
        return await client.read_discrete_inputs(point.address, count=point.count, device_id=unit)
    return await client.read_coils(point.address, count=point.count, device_id=unit)
