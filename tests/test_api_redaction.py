"""A tenant told of a neighbour's fire learns the floor and the advice, nothing else."""

from __future__ import annotations

from api.live import redact_for_tenant

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
