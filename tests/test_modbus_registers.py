"""The register map shared by the Modbus simulator and the gateway (core.registers)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.building import Building, SensorKind
from core.registers import (
    ENERGY_MODULUS_KWH,
    REGISTER_MAP,
    DataType,
    Point,
    RegisterError,
    Table,
    floor_port,
    unit_ids,
)
from tests.test_gateway_support import building_dict, make_building


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        (SensorKind.POWER, 174.05),
        (SensorKind.POWER, 0.0),
        (SensorKind.ENERGY, 14_752_103.1),
        (SensorKind.LOAD, 412.5),
        (SensorKind.TEMPERATURE, -12.3),
        (SensorKind.TEMPERATURE, 850.0),
        (SensorKind.FIRE, 0),
        (SensorKind.FIRE, 1),
        (SensorKind.FIRE, 2),
    ],
)
def test_round_trip(kind: SensorKind, value: float) -> None:
    point = REGISTER_MAP[kind]
    words = point.encode(value)
    assert len(words) == point.count
    assert point.decode(words) == pytest.approx(value, rel=1e-6, abs=1e-9)


@given(st.floats(min_value=0, max_value=6553.5, allow_nan=False))
def test_load_resolution_is_a_tenth(value: float) -> None:
    point = REGISTER_MAP[SensorKind.LOAD]
    assert abs(point.decode(point.encode(value)) - value) <= 0.05 + 1e-9


def test_energy_register_rolls_over() -> None:
    point = REGISTER_MAP[SensorKind.ENERGY]
    assert pytest.approx(42_949_672.96) == ENERGY_MODULUS_KWH
    assert point.decode(point.encode(ENERGY_MODULUS_KWH - 0.01)) == pytest.approx(42_949_672.95)
    assert point.decode(point.encode(ENERGY_MODULUS_KWH + 1.5)) == pytest.approx(1.5)
    assert point.encode(ENERGY_MODULUS_KWH) == [0, 0]


def test_words_are_big_endian() -> None:
    assert REGISTER_MAP[SensorKind.ENERGY].encode(655.37) == [0x0001, 0x0001]
    assert REGISTER_MAP[SensorKind.TEMPERATURE].encode(-0.1) == [0xFFFF]
    assert REGISTER_MAP[SensorKind.POWER].encode(1.0) == [0x3F80, 0x0000]


def test_fire_bits_alarm_wins() -> None:
    point = REGISTER_MAP[SensorKind.FIRE]
    assert point.encode(1) == [True, False]
    assert point.encode(2) == [False, True]
    assert point.decode([True, True]) == 1.0
    assert point.decode([False, False, True]) == 0.0


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        (SensorKind.LOAD, -1.0),
        (SensorKind.LOAD, 7000.0),
        (SensorKind.TEMPERATURE, 4000.0),
        (SensorKind.FIRE, 3),
        (SensorKind.POWER, math.nan),
    ],
)
def test_values_that_do_not_fit_are_refused(kind: SensorKind, value: float) -> None:
    with pytest.raises(RegisterError):
        REGISTER_MAP[kind].encode(value)


def test_decoding_needs_enough_words_and_finite_floats() -> None:
    with pytest.raises(RegisterError):
        REGISTER_MAP[SensorKind.POWER].decode([0x3F80])
    with pytest.raises(RegisterError):
        REGISTER_MAP[SensorKind.POWER].decode([0x7FC0, 0x0000])  # NaN


def test_points_check_themselves() -> None:
    with pytest.raises(RegisterError):
        Point(Table.INPUT_REGISTERS, 0, DataType.FIRE_BITS)
    with pytest.raises(RegisterError):
        Point(Table.DISCRETE_INPUTS, 0, DataType.UINT16)
    with pytest.raises(RegisterError):
        Point(Table.INPUT_REGISTERS, 0, DataType.INT16, wraps=True)
    with pytest.raises(RegisterError):
        Point(Table.INPUT_REGISTERS, 0, DataType.UINT16, scale=0)


def test_unit_ids_follow_the_building_file_per_floor() -> None:
    building = make_building(per_kind=2, floors=2)
    units = unit_ids(building, 2)
    floor_2 = [s.id for s in building.sensors if s.floor == 2]
    assert list(units) == floor_2
    assert list(units.values()) == list(range(1, len(floor_2) + 1))


def test_a_floor_holds_at_most_247_units() -> None:
    data = building_dict(per_kind=1)
    data["sensors"] = [
        {"id": f"p{i}", "kind": "power", "floor": 1, "interval_s": 1} for i in range(248)
    ]
    with pytest.raises(RegisterError, match="247"):
        unit_ids(Building.model_validate(data), 1)


def test_floor_port() -> None:
    assert floor_port(15000, 3) == 15003
    assert floor_port(15000, -2) == 14998
    with pytest.raises(RegisterError):
        floor_port(65535, 3)
