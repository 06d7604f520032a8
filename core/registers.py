"""The Modbus register map of the floor devices: where each sensor kind keeps its value.

The Modbus simulator serves this map and the gateway decodes it, so it lives here, below both.
Every device is one Modbus unit (unit id) on its floor's Modbus TCP server, and holds one
sensor's value at a fixed point of the map (see docs/devices.md for the table):

- power meter: input registers 0-1, FLOAT32 (big-endian words), kW;
- energy meter: input registers 0-1, UINT32 (big-endian words) x 0.01 kWh; the register rolls
  over to 0 after 42,949,672.95 kWh, like a real meter's counter;
- load cell: input register 0, UINT16 x 0.1 kg/m2;
- temperature transmitter: input register 0, INT16 x 0.1 degC;
- fire detector: discrete inputs 0 (alarm) and 1 (fault) -> state 0 normal, 1 alarm, 2 fault
  (alarm wins when both are set).

Unit ids: the sensors of a floor, in building-file order, are units 1, 2, 3, ... A floor's
server listens on ``port_base + floor``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from enum import StrEnum

from core.building import Building, SensorKind

MAX_UNIT_ID = 247
"""Modbus unit ids 1..247 address devices; 0 is broadcast, 248..255 are reserved."""


class RegisterError(ValueError):
    """A value that the register cannot hold, or registers that do not decode."""


class Table(StrEnum):
    COILS = "coils"
    DISCRETE_INPUTS = "discrete_inputs"
    HOLDING_REGISTERS = "holding_registers"
    INPUT_REGISTERS = "input_registers"

    @property
    def is_bits(self) -> bool:
        return self in (Table.COILS, Table.DISCRETE_INPUTS)


class DataType(StrEnum):
    UINT16 = "uint16"
    INT16 = "int16"
    UINT32 = "uint32"
    INT32 = "int32"
    FLOAT32 = "float32"
    FIRE_BITS = "fire_bits"  # two bits: alarm, fault

    @property
    def width(self) -> int:
        """Registers (or bits) the type occupies."""
        return 1 if self in (DataType.UINT16, DataType.INT16) else 2


_STRUCT = {
    DataType.UINT16: ">H",
    DataType.INT16: ">h",
    DataType.UINT32: ">I",
    DataType.INT32: ">i",
    DataType.FLOAT32: ">f",
}
_RANGE = {
    DataType.UINT16: (0, 0xFFFF),
    DataType.INT16: (-0x8000, 0x7FFF),
    DataType.UINT32: (0, 0xFFFF_FFFF),
    DataType.INT32: (-0x8000_0000, 0x7FFF_FFFF),
}


@dataclass(frozen=True, slots=True)
class Point:
    """Where and how a device holds its value: table, first address, type and scale."""

    table: Table
    address: int
    dtype: DataType
    scale: float = 1.0
    wraps: bool = False  # a counter that rolls over instead of saturating

    def __post_init__(self) -> None:
        if not 0 <= self.address <= 0xFFFF - self.count:
            raise RegisterError(f"address {self.address} is outside 0..65535")
        if (self.dtype is DataType.FIRE_BITS) != self.table.is_bits:
            raise RegisterError(f"{self.dtype} does not fit the table {self.table}")
        if not math.isfinite(self.scale) or self.scale <= 0:
            raise RegisterError(f"scale must be finite and > 0, not {self.scale!r}")
        if self.wraps and self.dtype not in (DataType.UINT16, DataType.UINT32):
            raise RegisterError("only unsigned integer registers roll over")

    @property
    def count(self) -> int:
        return self.dtype.width

    @property
    def modulus(self) -> float | None:
        """Value at which a rolling counter starts again from 0 (None: it does not roll)."""
        if not self.wraps:
            return None
        return (_RANGE[self.dtype][1] + 1) * self.scale

    def encode(self, value: float) -> list[int] | list[bool]:
        """The registers (or bits) that hold ``value``; raise :class:`RegisterError`."""
        if not math.isfinite(value):
            raise RegisterError(f"{value!r} is not finite")
        if self.dtype is DataType.FIRE_BITS:
            state = round(value)
            if state not in (0, 1, 2):
                raise RegisterError(f"fire state must be 0, 1 or 2, not {value!r}")
            return [state == 1, state == 2]
        if self.dtype is DataType.FLOAT32:
            raw = struct.pack(">f", value / self.scale)
        else:
            number = round(value / self.scale)
            low, high = _RANGE[self.dtype]
            if self.wraps:
                number %= high + 1
            elif not low <= number <= high:
                raise RegisterError(f"{value!r} does not fit {self.dtype} x {self.scale:g}")
            raw = struct.pack(_STRUCT[self.dtype], number)
        return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]

    def decode(self, words: list[int] | list[bool]) -> float:
        """The value that registers (or bits) read from a device stand for."""
        if len(words) < self.count:
            raise RegisterError(f"{len(words)} values, {self.dtype} needs {self.count}")
        if self.dtype is DataType.FIRE_BITS:
            alarm, fault = bool(words[0]), bool(words[1])
            return 1.0 if alarm else 2.0 if fault else 0.0
        raw = b"".join(int(w).to_bytes(2, "big") for w in words[: self.count])
        number: float = struct.unpack(_STRUCT[self.dtype], raw)[0]
        if self.dtype is DataType.FLOAT32:
            if not math.isfinite(number):
                raise RegisterError(f"register holds {number!r}")
            return float(f"{number * self.scale:.7g}")  # float32 holds ~7 digits
        return round(number * self.scale, _decimals(self.scale))


def _decimals(scale: float) -> int:
    """Digits after the point that a scale can produce (0.01 -> 2), to drop float dust."""
    text = f"{scale:.10f}".rstrip("0")
    return len(text.split(".")[1]) if "." in text else 0


REGISTER_MAP: dict[SensorKind, Point] = {
    SensorKind.POWER: Point(Table.INPUT_REGISTERS, 0, DataType.FLOAT32),
    SensorKind.ENERGY: Point(Table.INPUT_REGISTERS, 0, DataType.UINT32, 0.01, wraps=True),
    SensorKind.LOAD: Point(Table.INPUT_REGISTERS, 0, DataType.UINT16, 0.1),
    SensorKind.TEMPERATURE: Point(Table.INPUT_REGISTERS, 0, DataType.INT16, 0.1),
    SensorKind.FIRE: Point(Table.DISCRETE_INPUTS, 0, DataType.FIRE_BITS),
}
"""The point of every sensor kind on its device."""

ENERGY_MODULUS_KWH: float = REGISTER_MAP[SensorKind.ENERGY].modulus or 0.0
"""An energy register rolls over to 0 at this many kWh (42,949,672.96)."""


def floor_port(port_base: int, floor: int) -> int:
    """TCP port of a floor's Modbus server: ``port_base + floor``."""
    port = port_base + floor
    if not 1 <= port <= 65535:
        raise RegisterError(f"port base {port_base} + floor {floor} is not a TCP port")
    return port


def unit_ids(building: Building, floor: int) -> dict[str, int]:
    """Unit id of every sensor on a floor: 1, 2, 3... in building-file order."""
    sensors = building.sensors_on(floor)
    if len(sensors) > MAX_UNIT_ID:
        raise RegisterError(
            f"floor {floor} has {len(sensors)} sensors; one Modbus server holds {MAX_UNIT_ID}"
        )
    return {sensor.id: unit for unit, sensor in enumerate(sensors, start=1)}
