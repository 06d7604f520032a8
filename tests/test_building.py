"""The building file, its checks, and the building store on a real PostgreSQL."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from datetime import date, time
from typing import Any

import psycopg
import pytest

from core.building import Building, Sensor, SensorKind, Zone
from core.building_file import BuildingFileError, load_building, parse_building
from core.building_store import (
    BuildingStoreError,
    apply_building,
    list_buildings,
    load_building_from_db,
)
from tests.conftest import REF_TOWER, ROOT

TABLES = (
    "buildings",
    "floors",
    "zones",
    "tariffs",
    "tariff_periods",
    "tariff_windows",
    "tenants",
    "leases",
    "sensors",
)

MINI = """\
id: mini
name: Mini Works
timezone: Asia/Shanghai
tariffs:
  - id: flat
    periods:
      - {name: all-day, price_per_kwh: 0.85, windows: ["00:00-24:00"]}
tenants:
  - {id: acme, name: Acme, contracted_kw: 100, tariff: flat}
floors:
  - {number: 1, area_m2: 1000, height_m: 4, load_limit_kg_m2: 500, power_capacity_kw: 500}
zones:
  - {id: z1, floor: 1, area_m2: 500}
  - {id: z2, floor: 1, area_m2: 500}
leases:
  - {tenant: acme, zone: z1, from: 2026-01-01}
sensors:
  - {id: mini-load-z1, kind: load, floor: 1, zone: z1, interval_s: 5}
"""


INTERVAL_S = {
    SensorKind.LOAD: 5,
    SensorKind.POWER: 5,
    SensorKind.FIRE: 5,
    SensorKind.TEMPERATURE: 10,
    SensorKind.ENERGY: 15,
}


@pytest.fixture(scope="module")
def ref() -> Building:
    return load_building(REF_TOWER)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


def canonical(building: Building) -> dict[str, Any]:
    """model_dump() with every list in key order (the database does not keep file order)."""
    data = building.model_dump()
    data["floors"].sort(key=lambda f: f["number"])
    for section in ("zones", "tenants", "sensors", "tariffs"):
        data[section].sort(key=lambda item: item["id"])
    data["leases"].sort(key=lambda le: (le["zone"], le["from_"]))
    for tariff in data["tariffs"]:
        tariff["periods"].sort(key=lambda p: p["name"])
        for period in tariff["periods"]:
            period["windows"].sort()
    return data


def counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    queries = {t: f"SELECT count(*) FROM {t}" for t in TABLES}
    queries["active sensors"] = "SELECT count(*) FROM sensors WHERE active"
    out = {}
    for name, query in queries.items():
        row = conn.execute(query).fetchone()
        assert row is not None
        out[name] = row[0]
    return out


def changed_copy(building: Building, **edit: Any) -> Building:
    """A validated copy of ``building`` with top-level sections replaced."""
    data = building.model_dump(by_alias=True)
    data.update(edit)
    return Building.model_validate(data)


# --- the reference building -------------------------------------------------------------------


def test_ref_tower_loads(ref: Building) -> None:
    assert ref.id == "ref-tower"
    assert ref.timezone == "Asia/Shanghai"
    assert ref.problems() == []
    assert [f.number for f in ref.floors] == list(range(1, 11))
    assert len(ref.zones) == 40
    assert len(ref.tenants) == 8
    assert {t.tariff for t in ref.tenants} == {"tou-standard"}
    for floor in ref.floors:
        assert floor.area_m2 == 2000
        assert floor.height_m == 3.9
        assert floor.load_limit_kg_m2 == (1000 if floor.number == 1 else 500)
        zones = [z for z in ref.zones if z.floor == floor.number]
        assert len(zones) == 4
        assert {z.area_m2 for z in zones} == {500}
        kinds = Counter(s.kind for s in ref.sensors_on(floor.number))
        assert kinds[SensorKind.LOAD] == 4
        assert kinds[SensorKind.TEMPERATURE] == 4
        assert kinds[SensorKind.FIRE] == 4
        assert kinds[SensorKind.POWER] == kinds[SensorKind.ENERGY] >= 1
        # one load sensor per zone, and a common power + energy pair
        assert {s.zone for s in ref.sensors_on(floor.number) if s.kind is SensorKind.LOAD} == {
            z.id for z in zones
        }
        meters = {(s.kind, s.tenant, s.zone) for s in ref.sensors_on(floor.number)}
        assert (SensorKind.POWER, None, None) in meters
        assert (SensorKind.ENERGY, None, None) in meters
    for sensor in ref.sensors:
        assert sensor.interval_s == INTERVAL_S[sensor.kind], sensor.id
    assert ref.zone_limit(ref.zone("f01-z1")) > 1000  # reinforced bay
    assert ref.zone_limit(ref.zone("f01-z4")) == 1000  # floor 1's own limit
    assert ref.zone_limit(ref.zone("f05-z1")) == 500


def test_ref_tower_tenant_spaces_are_metered(ref: Building) -> None:
    """Every tenant on a floor has a power meter there: its own, or its zone's (by lease)."""
    on = date(2026, 3, 1)
    for floor in ref.floors:
        leased = {ref.tenant_of_zone(z.id, on) for z in ref.zones if z.floor == floor.number}
        power = [s for s in ref.sensors_on(floor.number) if s.kind is SensorKind.POWER]
        metered = {s.tenant for s in power} | {
            ref.tenant_of_zone(s.zone, on) for s in power if s.zone and s.tenant is None
        }
        assert leased - {None} <= metered - {None}, floor.number
        pairs = Counter(
            (s.tenant, s.zone)
            for s in ref.sensors_on(floor.number)
            if s.kind in (SensorKind.POWER, SensorKind.ENERGY)
        )
        assert set(pairs.values()) == {2}  # each power meter has an energy meter beside it


def test_ref_tower_zone_changes_tenant_mid_2026(ref: Building) -> None:
    changed = [
        z.id
        for z in ref.zones
        if ref.tenant_of_zone(z.id, date(2026, 3, 1)) != ref.tenant_of_zone(z.id, date(2026, 9, 1))
        and ref.tenant_of_zone(z.id, date(2026, 3, 1)) is not None
    ]
    assert changed
    closed = [le for le in ref.leases if le.to is not None]
    assert closed and all(le.zone in changed for le in closed)
    assert any(ref.tenant_of_zone(z.id, date(2026, 3, 1)) is None for z in ref.zones)  # vacant


def test_ref_tower_tariff(ref: Building) -> None:
    (tariff,) = ref.tariffs
    assert tariff.id == "tou-standard"
    assert tariff.currency == "CNY"
    at = {h: tariff.period_at(time(h, 30)).name for h in range(24)}
    assert [h for h in range(24) if at[h] == "peak"] == [8, 9, 10, 18, 19, 20, 21, 22]
    assert [h for h in range(24) if at[h] == "valley"] == [0, 1, 2, 3, 4, 5, 6, 23]
    prices = {p.name: p.price_per_kwh for p in tariff.periods}
    assert prices["peak"] > prices["flat"] > prices["valley"]


def test_docs_example_parses() -> None:
    text = (ROOT / "docs" / "building.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    example = parse_building(blocks[-1], "docs/building.md")
    assert example.id == "mini"


# --- broken files: the right file, line and key --------------------------------------------


BROKEN = {
    # case: (line of MINI to change, its replacement, expected key, message fragment)
    "unknown key": (
        "  - {id: z2, floor: 1, area_m2: 500}",
        "  - {id: z2, floor: 1, area_m2: 500,\n      colour: red}",
        "zones[1].colour",
        "unknown key",
    ),
    "zone on a missing floor": (
        "  - {id: z2, floor: 1, area_m2: 500}",
        "  - {id: z2, floor: 2, area_m2: 500}",
        "zones[1].floor",
        "floor 2, which the building does not have",
    ),
    "zones larger than the floor": (
        "  - {id: z2, floor: 1, area_m2: 500}",
        "  - {id: z2, floor: 1, area_m2: 501}",
        "zones[1].area_m2",
        "more than the floor's 1000 m2",
    ),
    "overlapping leases": (
        "  - {tenant: acme, zone: z1, from: 2026-01-01}",
        "  - {tenant: acme, zone: z1, from: 2026-01-01}\n"
        "  - {tenant: acme, zone: z1, from: 2026-06-01}",
        "leases[1].from",
        "overlaps",
    ),
    "sensor with an unknown zone": (
        "  - {id: mini-load-z1, kind: load, floor: 1, zone: z1, interval_s: 5}",
        "  - {id: mini-load-z1, kind: load, floor: 1, zone: z9, interval_s: 5}",
        "sensors[0].zone",
        "unknown zone 'z9'",
    ),
    "bad timezone": (
        "timezone: Asia/Shanghai",
        "timezone: Asia/Atlantis",
        "timezone",
        "unknown timezone 'Asia/Atlantis'",
    ),
    "tariff with a gap": (
        "  - id: flat",
        "  - id: flat",
        "tariffs[0]",
        "no period covers 23:00",
    ),
    "duplicate key": (
        "name: Mini Works",
        "name: Mini Works\nname: Maxi Works",
        "name",
        "key given twice",
    ),
}


@pytest.mark.parametrize("case", BROKEN)
def test_broken_file_points_at_file_line_and_key(case: str) -> None:
    old, new, key, fragment = BROKEN[case]
    assert old in MINI
    text = MINI.replace(old, new)
    if case == "tariff with a gap":
        text = text.replace('"00:00-24:00"', '"00:00-23:00"')
    # the expected line: the last line of the replacement
    line = text.splitlines().index(new.splitlines()[-1]) + 1
    with pytest.raises(BuildingFileError) as caught:
        parse_building(text, "site/mini.yaml")
    problems = caught.value.problems
    assert len(problems) == 1, problems
    (problem,) = problems
    assert (problem.file, problem.line, problem.key) == ("site/mini.yaml", line, key)
    assert fragment in problem.message
    assert str(problem) == f"site/mini.yaml:{line}: {key}: {problem.message}"
    assert str(caught.value) == str(problem)


def test_every_problem_is_reported() -> None:
    text = MINI.replace("floor: 1, area_m2: 500}", "floor: 3, area_m2: 500}").replace(
        "zone: z1, interval_s", "zone: z7, interval_s"
    )
    with pytest.raises(BuildingFileError) as caught:
        parse_building(text, "mini.yaml")
    assert [p.key for p in caught.value.problems] == [
        "zones[0].floor",
        "zones[1].floor",
        "sensors[0].zone",
    ]


def test_load_building_reports_the_path(tmp_path: Any) -> None:
    path = tmp_path / "b.yaml"
    path.write_text(MINI.replace("interval_s: 5", "interval_s: 5, colour: red"), encoding="utf-8")
    with pytest.raises(BuildingFileError) as caught:
        load_building(path)
    line = len(MINI.splitlines())  # the sensor is on the last line
    assert str(caught.value) == f"{path}:{line}: sensors[0].colour: unknown key"


# --- the building store ---------------------------------------------------------------------


def test_apply_twice_changes_nothing_the_second_time(conn: Any, ref: Building) -> None:
    first = apply_building(conn, ref)
    assert first.changed
    assert first.inserted == {
        "buildings": 1,
        "floors": 10,
        "zones": 40,
        "tariffs": 1,
        "tariff_periods": 3,
        "tariff_windows": 6,
        "tenants": 8,
        "leases": len(ref.leases),
        "sensors": len(ref.sensors),
    }
    assert (first.updated, first.deleted, first.deactivated) == ({}, {}, 0)
    before = counts(conn)
    stamp = conn.execute("SELECT updated_at FROM buildings").fetchone()[0]
    second = apply_building(conn, ref)
    assert not second.changed
    assert (second.inserted, second.updated, second.deleted, second.deactivated) == ({}, {}, {}, 0)
    assert str(second) == "building ref-tower: no change"
    assert counts(conn) == before
    assert conn.execute("SELECT updated_at FROM buildings").fetchone()[0] == stamp
    units = dict(conn.execute("SELECT DISTINCT kind, unit FROM sensors").fetchall())
    assert units == {
        "power": "kW",
        "energy": "kWh",
        "load": "kg/m2",
        "temperature": "degC",
        "fire": "state",
    }
    assert list_buildings(conn) == ["ref-tower"]


def test_changed_floor_limit_is_the_only_update(conn: Any, ref: Building) -> None:
    apply_building(conn, ref)
    floors = [f.model_dump() for f in ref.floors]
    floors[4]["load_limit_kg_m2"] = 450.0
    result = apply_building(conn, changed_copy(ref, floors=floors))
    assert result.changed
    assert (result.inserted, result.updated, result.deleted) == ({}, {"floors": 1}, {})
    assert result.deactivated == 0
    limits = dict(conn.execute("SELECT number, load_limit_kg_m2 FROM floors").fetchall())
    assert limits == {n: 1000.0 if n == 1 else 450.0 if n == 5 else 500.0 for n in range(1, 11)}


def test_removed_sensor_becomes_inactive(conn: Any, ref: Building) -> None:
    apply_building(conn, ref)
    before = counts(conn)
    gone = "ref-f03-temp-z2"
    fewer = changed_copy(ref, sensors=[s.model_dump() for s in ref.sensors if s.id != gone])
    result = apply_building(conn, fewer)
    assert (result.inserted, result.updated, result.deleted) == ({}, {}, {})
    assert result.deactivated == 1
    row = conn.execute("SELECT active, zone_id FROM sensors WHERE id = %s", (gone,)).fetchone()
    assert row == (False, "f03-z2")  # kept, with its zone, for the readings it has
    after = counts(conn)
    assert after["sensors"] == before["sensors"]
    assert after["active sensors"] == before["active sensors"] - 1
    assert gone not in {s.id for s in load_building_from_db(conn, "ref-tower").sensors}
    assert not apply_building(conn, fewer).changed
    back = apply_building(conn, ref)  # the sensor returns
    assert (back.updated, back.deactivated) == ({"sensors": 1}, 0)
    assert conn.execute("SELECT active FROM sensors WHERE id = %s", (gone,)).fetchone() == (True,)


def test_removed_lease_and_zone_are_deleted(conn: Any, ref: Building) -> None:
    apply_building(conn, ref)
    leases = [
        le.model_dump(by_alias=True)
        for le in ref.leases
        if le.tenant != "axisline" or le.zone != "f09-z3"
    ]
    result = apply_building(conn, changed_copy(ref, leases=leases))
    assert (result.inserted, result.updated, result.deleted) == ({}, {}, {"leases": 1})
    # Drop zone f10-z4 and its sensors: the zone goes, its sensors stay inactive without it.
    zones = [z.model_dump() for z in ref.zones if z.id != "f10-z4"]
    sensors = [s.model_dump() for s in ref.sensors if s.zone != "f10-z4"]
    result = apply_building(conn, changed_copy(ref, leases=leases, zones=zones, sensors=sensors))
    assert result.deleted == {"zones": 1}
    assert result.deactivated == 3
    rows = conn.execute("SELECT active, zone_id FROM sensors WHERE id LIKE 'ref-f10-%-z4'")
    assert rows.fetchall() == [(False, None)] * 3


def test_floor_with_sensor_history_cannot_go(conn: Any, ref: Building) -> None:
    apply_building(conn, ref)
    before = counts(conn)
    smaller = changed_copy(
        ref,
        floors=[f.model_dump() for f in ref.floors if f.number != 10],
        zones=[z.model_dump() for z in ref.zones if z.floor != 10],
        sensors=[s.model_dump() for s in ref.sensors if s.floor != 10],
    )
    with pytest.raises(BuildingStoreError, match="nothing written"):
        apply_building(conn, smaller)
    assert counts(conn) == before  # not even the sensors were deactivated


def test_round_trip(conn: Any, ref: Building) -> None:
    apply_building(conn, ref)
    back = load_building_from_db(conn, "ref-tower")
    assert canonical(back) == canonical(ref)
    periods = {p.name: p.windows for p in back.tariffs[0].periods}
    assert periods["valley"] == ["23:00-07:00"]  # split at midnight in the table, one again here
    mini = parse_building(MINI, "mini.yaml")
    apply_building(conn, mini)
    assert canonical(load_building_from_db(conn, "mini")) == canonical(mini)
    assert list_buildings(conn) == ["mini", "ref-tower"]
    with pytest.raises(BuildingStoreError, match="no building"):
        load_building_from_db(conn, "nowhere")


def test_sensor_of_another_building_is_refused(conn: Any, ref: Building) -> None:
    apply_building(conn, ref)
    mini = parse_building(MINI.replace("mini-load-z1", "ref-f01-load-z1"), "mini.yaml")
    with pytest.raises(BuildingStoreError, match=r"ref-f01-load-z1 \(ref-tower\)"):
        apply_building(conn, mini)
    assert list_buildings(conn) == ["ref-tower"]


def test_failed_apply_writes_nothing(conn: Any, ref: Building) -> None:
    # A zone with a negative area passes the cross-checks but not the table's CHECK: floors and
    # the building are written before the zones fail, and must be rolled back.
    bad_zone = Zone.model_construct(
        id="f01-z9", floor=1, area_m2=-1.0, load_limit_kg_m2=None, name=None
    )
    with pytest.raises(BuildingStoreError, match="nothing written"):
        apply_building(conn, ref.model_copy(update={"zones": [*ref.zones, bad_zone]}))
    assert counts(conn) == dict.fromkeys((*TABLES, "active sensors"), 0)
    # Over an applied building: a floor change and a bad sensor at the very end.
    apply_building(conn, ref)
    before = counts(conn)
    floors = [f.model_dump() for f in ref.floors]
    floors[2]["power_capacity_kw"] = 9999.0
    bad_sensor = Sensor.model_construct(
        id="ref-f01-bad", kind=SensorKind.LOAD, floor=1, zone="f01-z1", interval_s=0.0, tenant=None
    )
    changed = changed_copy(ref, floors=floors)
    with pytest.raises(BuildingStoreError) as caught:
        apply_building(conn, changed.model_copy(update={"sensors": [*ref.sensors, bad_sensor]}))
    assert isinstance(caught.value.__cause__, psycopg.errors.CheckViolation)
    assert counts(conn) == before
    assert conn.execute("SELECT power_capacity_kw FROM floors WHERE number = 3").fetchone() == (
        ref.floor(3).power_capacity_kw,
    )
    assert not apply_building(conn, ref).changed


def test_inconsistent_model_is_refused(conn: Any, ref: Building) -> None:
    orphan = Zone.model_construct(
        id="f99-z1", floor=99, area_m2=10.0, load_limit_kg_m2=None, name=None
    )
    with pytest.raises(BuildingStoreError, match=r"zones\[40\]\.floor"):
        apply_building(conn, ref.model_copy(update={"zones": [*ref.zones, orphan]}))
    assert list_buildings(conn) == []


def test_apply_inside_the_callers_transaction(db_url: str, ref: Building) -> None:
    with psycopg.connect(db_url) as conn:  # not autocommit: the caller owns the transaction
        conn.execute("SELECT 1")
        assert apply_building(conn, ref).changed
        conn.rollback()
        assert list_buildings(conn) == []
