"""A tenant told of a neighbour's fire learns the floor and the advice, nothing else."""

from __future__ import annotations

from datetime import date
from typing import Any

import psycopg

from api.live import redact_actors, redact_for_tenant

FIRE = {
    "id": 7,
    "building": "ref-tower",
    "rule": "fire",
    "subject": "sensor:ref-f03-fire-z1",
    "floor": 3,
    "zone": "f03-z1",
    "sensor": "ref-f03-fire-z1",
    "tenants": ["rackline", "siliconlab"],
    "severity": "critical",
    "state": "open",
    "latched": True,
    "condition_active": True,
    "message": "FIRE: detector ref-f03-fire-z1 in alarm (zone f03-z1, Rackline Servers)",
    "value": 1.0,
    "acknowledged_by": "alice",
    "opened_at": "2026-11-22T00:00:00Z",
    "evacuation": {
        "floors": [2, 3, 4],
        "tenants": [{"id": "rackline", "name": "Rackline"}, {"id": "siliconlab", "name": "SL"}],
    },
}


def insert_fire(conn: psycopg.Connection[Any], zone: str, tenants: list[str], message: str) -> None:
    """An open, latched fire alert in ``zone`` of floor 3 of ref-tower (evacuating 2-4)."""
    conn.execute(
        "INSERT INTO alerts (building_id, rule, subject, floor, zone_id, sensor_id,"
        " tenant_ids, severity, state, latched, condition_active, message, opened_at,"
        " evacuation_floors) VALUES ('ref-tower', 'fire', 'sensor:x', 3, %s, 'ref-f03-fire-z1',"
        " %s, 'critical', 'open', true, true, %s, now(), '{2,3,4}')",
        (zone, tenants, message),
    )


def test_neighbour_fire_is_redacted_to_floor_and_advice() -> None:
    seen = redact_for_tenant(FIRE, "siliconlab", own_zones={"f04-z1"})
    text = repr(seen)
    for secret in ("rackline", "Rackline", "f03-z1", "ref-f03-fire-z1", "alice"):
        assert secret not in text, secret
    assert seen["floor"] == 3 and seen["rule"] == "fire"
    assert seen["evacuation"]["floors"] == [2, 3, 4]
    assert seen["evacuation"]["tenants"] == [{"id": "siliconlab", "name": "SL"}]
    assert "evacuate floors 2, 3, 4" in seen["message"]


def test_own_zone_alert_keeps_its_detail() -> None:
    seen = redact_for_tenant(FIRE, "rackline", own_zones={"f03-z1"})
    assert seen["zone"] == "f03-z1" and seen["sensor"] == "ref-f03-fire-z1"
    assert seen["tenants"] == ["rackline"]
    assert seen["evacuation"]["tenants"] == [{"id": "rackline", "name": "Rackline"}]


def test_alert_list_redacts_a_neighbours_fire_for_a_tenant(db_url: str) -> None:
    """GET /api/v1/alerts: the tenant in the evacuation zone learns floor and advice only;
    the tenant whose zone burns sees the detail."""

    from core.building_file import load_building
    from tests.api_helpers import apply, bearer, client, token
    from tests.conftest import REF_TOWER

    building = load_building(REF_TOWER)
    apply(db_url, building)
    today = date.today()
    zone = next(z for z in building.zones if z.floor == 3 and building.tenant_of_zone(z.id, today))
    owner = building.tenant_of_zone(zone.id, today)
    neighbour = next(
        t
        for z in building.zones
        if z.floor == 4 and (t := building.tenant_of_zone(z.id, today)) not in (None, owner)
    )
    assert owner and neighbour
    with psycopg.connect(db_url) as conn:
        insert_fire(conn, zone.id, [owner, neighbour], f"FIRE in {zone.id} of {owner}")
    with client(db_url) as c:
        mine = c.get("/api/v1/alerts", headers=bearer(token(db_url, "tenant", owner))).json()
        theirs = c.get("/api/v1/alerts", headers=bearer(token(db_url, "tenant", neighbour)))
    assert mine[0]["zone"] == zone.id and owner in mine[0]["message"]
    text = theirs.text
    assert theirs.status_code == 200 and len(theirs.json()) == 1
    for secret in (zone.id, owner, "ref-f03-fire-z1"):
        assert secret not in text, secret
    assert "evacuate floors 2, 3, 4" in theirs.json()[0]["message"]


def test_other_tenants_staff_and_tokens_are_not_shown() -> None:
    """A floor-wide alert (no zone) is shown whole to the floor's tenants, except who of
    another tenant acknowledged or resolved it."""
    floor_power = FIRE | {
        "rule": "floor_power",
        "zone": None,
        "sensor": None,
        "evacuation": None,
        "acknowledged_by": "tenant:rackline/night-shift (token 12)",
        "resolved_by": "operator:desk (token 1)",
    }
    seen = redact_for_tenant(floor_power, "siliconlab", own_zones=set())
    assert seen["acknowledged_by"] == "another tenant"
    assert seen["resolved_by"] == "operator:desk (token 1)"
    assert "night-shift" not in repr(seen) and "token 12" not in repr(seen)
    own = redact_for_tenant(floor_power, "rackline", own_zones=set())
    assert own["acknowledged_by"] == "tenant:rackline/night-shift (token 12)"
    refusal = "already acknowledged by tenant:rackline/night-shift (token 12)"
    assert redact_actors(refusal, "siliconlab") == "already acknowledged by another tenant"
    assert redact_actors(refusal, "rackline") == refusal
    # token names are free text: spaces, parentheses, slashes, the old form without tenant
    for name in ("night shift", "Jane (night)", "a/b\tc", "x (token 3) y"):
        actor = f"tenant:rack.line-2/{name} (token 12)"
        assert redact_actors(actor, "siliconlab") == "another tenant", name
        assert redact_actors(f"by {actor}", "rack.line-2") == f"by {actor}", name
    assert redact_actors("tenant:night-shift (token 12)", "siliconlab") == "another tenant"
    mixed = "tenant:siliconlab/me (token 1) and tenant:rackline/you (token 2)"
    assert redact_actors(mixed, "siliconlab") == "tenant:siliconlab/me (token 1) and another tenant"


def test_alert_list_hides_who_of_another_tenant_acknowledged(db_url: str) -> None:
    """GET /api/v1/alerts for two tenants of one floor: each sees its own staff, not the
    other's (the actor is recorded as the API's Principal.actor names it)."""

    from api.auth import Principal
    from core.building_file import load_building
    from tests.api_helpers import apply, bearer, client, token
    from tests.conftest import REF_TOWER

    building = load_building(REF_TOWER)
    apply(db_url, building)
    today = date.today()
    by_floor: dict[int, set[str]] = {}
    for z in building.zones:
        if (t := building.tenant_of_zone(z.id, today)) is not None:
            by_floor.setdefault(z.floor, set()).add(t)
    floor, tenants = next((f, sorted(ts)) for f, ts in sorted(by_floor.items()) if len(ts) > 1)
    actor_tenant, viewer = tenants[0], tenants[1]
    actor = Principal(99, "tenant", "night-shift", "ref-tower", actor_tenant).actor
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO alerts (building_id, rule, subject, floor, tenant_ids, severity, state,"
            " latched, condition_active, message, opened_at, acknowledged_at, acknowledged_by)"
            " VALUES ('ref-tower', 'floor_power', %s, %s, %s, 'warning', 'acknowledged', false,"
            " true, 'floor power over capacity', now(), now(), %s)",
            (f"floor:{floor}", floor, [actor_tenant, viewer], actor),
        )
    with client(db_url) as c:
        theirs = c.get("/api/v1/alerts", headers=bearer(token(db_url, "tenant", viewer)))
        mine = c.get("/api/v1/alerts", headers=bearer(token(db_url, "tenant", actor_tenant)))
    assert theirs.status_code == 200 and len(theirs.json()) == 1
    assert theirs.json()[0]["acknowledged_by"] == "another tenant"
    assert "night-shift" not in theirs.text and actor_tenant not in theirs.text
    assert mine.json()[0]["acknowledged_by"] == actor


def test_own_zone_is_decided_by_the_buildings_local_date(db_url: str) -> None:
    """A lease is by the building's local days: on the day a zone changes hands, a fire in it
    is the new lessee's own and only a neighbour's to the old one (or the coming one), even
    when the database's own date (UTC) is still, or already, another day."""
    from datetime import UTC, datetime, timedelta
    from zoneinfo import ZoneInfo

    from core.building_file import load_building
    from tests.api_helpers import apply, bearer, client, token
    from tests.conftest import REF_TOWER

    building = load_building(REF_TOWER)
    apply(db_url, building)
    now = datetime.now(UTC)
    # a zone whose local date is a day after UTC's (11:00-23:59 UTC), or a day before it
    ahead = now.hour >= 11
    tz = "Pacific/Kiritimati" if ahead else "Etc/GMT+12"
    local = now.astimezone(ZoneInfo(tz)).date()
    assert local != now.date()
    zone = next(z for z in building.zones if z.floor == 3)
    a, b = (t.id for t in building.tenants[:2])
    if ahead:  # a's lease ended at the local midnight just passed, UTC's day still has it
        leases = [(a, local - timedelta(days=10), local), (b, local, None)]
    else:  # a's lease starts at the next local midnight, UTC's day has already begun it
        leases = [
            (b, local - timedelta(days=10), local + timedelta(days=1)),
            (a, local + timedelta(days=1), None),
        ]
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE buildings SET timezone = %s WHERE id = 'ref-tower'", (tz,))
        conn.execute("DELETE FROM leases WHERE zone_id = %s", (zone.id,))
        for tenant, start, end in leases:
            conn.execute(
                "INSERT INTO leases (building_id, tenant_id, zone_id, valid_from, valid_to)"
                " VALUES ('ref-tower', %s, %s, %s, %s)",
                (tenant, zone.id, start, end),
            )
        insert_fire(conn, zone.id, [a, b], f"FIRE in {zone.id} of {b}")
    with client(db_url) as c:
        lessee = c.get("/api/v1/alerts", headers=bearer(token(db_url, "tenant", b))).json()
        other = c.get("/api/v1/alerts", headers=bearer(token(db_url, "tenant", a)))
    assert lessee[0]["zone"] == zone.id and b in lessee[0]["message"]
    assert other.status_code == 200 and len(other.json()) == 1
    for secret in (zone.id, b, "ref-f03-fire-z1"):
        assert secret not in other.text, secret
