"""Live floor states and alert events: an MQTT subscription fanned out to WebSockets.

One :class:`Hub` per process subscribes (in the lifespan's task group) to the retained
``.../{floor}/state`` topics and the ``.../alerts`` events, parses them with the alert
engine's own models (:mod:`core.alert_types`) and hands them to every connected socket. Each
socket filters for its principal: an operator gets everything of the building, a tenant only
the floors where it leases a zone (its own zones, the fire and evacuation state) and the
alert events that name it. A payload that does not parse is logged and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Iterator
from typing import Any

import aiomqtt
from fastapi import APIRouter, HTTPException, Query, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from api.auth import Principal, authenticate, credentials, principal_json
from api.common import ID_PATTERN
from api.db import Pool
from core.aio import run_apart
from core.alert_types import AlertEvent, FloorState
from core.settings import MqttAddress, parse_mqtt_url
from core.topics import Channel, TopicError, parse_topic, subscription

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["live"])

Message = FloorState | AlertEvent
_QUEUE = 1000
_REAUTH_S = 30.0


class Hub:
    """Latest floor states and a fan-out of new messages to subscriber queues."""

    def __init__(self, mqtt_url: str | None, prefix: str) -> None:
        self.mqtt_url = mqtt_url
        self.prefix = prefix
        self.connected = False
        self.states: dict[tuple[str, int], FloorState] = {}
        self._queues: set[asyncio.Queue[Message | None]] = set()

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[Message | None]]:
        queue: asyncio.Queue[Message | None] = asyncio.Queue(_QUEUE)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)

    def publish(self, message: Message) -> None:
        if isinstance(message, FloorState):
            self.states[(message.building, message.floor)] = message
        for queue in list(self._queues):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:  # a socket that cannot keep up is closed
                self._queues.discard(queue)
                with contextlib.suppress(asyncio.QueueFull):
                    queue.get_nowait()
                    queue.put_nowait(None)

    def handle(self, topic: str, payload: bytes) -> None:
        try:
            parsed = parse_topic(topic, self.prefix)
            if parsed.channel is Channel.STATE:
                self.publish(FloorState.model_validate_json(payload))
            elif parsed.channel is Channel.ALERTS:
                self.publish(AlertEvent.model_validate_json(payload))
        except (TopicError, ValidationError, ValueError) as exc:
            logger.warning("dropped %s: %s (%r)", topic, str(exc)[:200], payload[:200])

    async def run(self) -> None:
        """Subscribe and dispatch forever; reconnect with jittered exponential backoff."""
        if not self.mqtt_url:
            return
        address = parse_mqtt_url(self.mqtt_url)
        backoff = 0.5
        while True:
            try:  # a session apart: a cancel (the API stopping) is never taken for a lost link
                await run_apart(self._session(address))
            except aiomqtt.MqttError as exc:
                if self.connected:  # a link that was up: start the backoff again
                    backoff = 0.5
                logger.warning("MQTT: %s; reconnecting in %.1f s", exc, backoff)
            else:  # the stream ended without an error, after connecting
                backoff = 0.5
            finally:
                self.connected = False
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 30.0)

    async def _session(self, address: MqttAddress) -> None:
        """One broker connection: subscribe, then dispatch until the link fails."""
        async with aiomqtt.Client(
            address.host,
            address.port,
            username=address.username,
            password=address.password,
            tls_params=aiomqtt.TLSParameters() if address.tls else None,
            protocol=aiomqtt.ProtocolVersion.V5,  # the embedded broker speaks only v5
        ) as client:
            await client.subscribe(subscription(Channel.STATE, self.prefix), qos=1)
            await client.subscribe(subscription(Channel.ALERTS, self.prefix), qos=1)
            self.connected = True
            async for message in client.messages:
                payload = message.payload
                if isinstance(payload, bytes | bytearray):
                    self.handle(str(message.topic), bytes(payload))


def tenant_zones(states: dict[tuple[str, int], FloorState], building: str, tenant: str) -> set[str]:
    """The zones ``tenant`` leases now, as the latest floor states of ``building`` say."""
    return {
        zone.zone
        for (b, _), state in states.items()
        if b == building
        for zone in state.zones
        if zone.tenant == tenant
    }


#: What a tenant sees of an alert about someone else's space (it reaches the tenant only as a
#: fire evacuation or a floor-wide condition): the floor, the rule and the advice, never the
#: neighbour's zone, sensor, figures or the names of who acted.
_NEIGHBOUR_KEEP = ("id", "building", "rule", "floor", "tenants", "severity", "state", "latched",
                   "condition_active", "opened_at", "resolved_at", "evacuation")  # fmt: skip


def redact_actors(text: str, tenant: str) -> str:
    """``text`` with any other tenant's actor cut to "another tenant" (fails closed).

    Actors are ``tenant:<tenant>/<token name> (token N)``; a token name is free text, so an
    actor is not matched by pattern: from the first ``tenant:`` that is not ``tenant``'s own
    to the end of the text, everything is replaced (the engine puts an actor last, as in
    "already acknowledged by <actor>"). An actor in the old form (no tenant id) counts as
    another tenant's.
    """
    own = f"tenant:{tenant}/"
    start = 0
    while (found := text.find("tenant:", start)) >= 0:
        if not text.startswith(own, found):
            return text[:found] + "another tenant"
        start = found + len(own)
        if (end := text.find(")", start)) < 0:
            return text
        start = end
    return text


def redact_for_tenant(alert: dict[str, Any], tenant: str, own_zones: set[str]) -> dict[str, Any]:
    """Keep only what ``tenant`` may see of an alert (a dict of ``AlertView`` fields): no
    other tenant's id, staff or token (who acknowledged or resolved it), and of a zone it
    does not lease only the floor and the advice."""
    alert = dict(alert)
    alert["tenants"] = [tenant]
    for key in ("acknowledged_by", "resolved_by"):
        if isinstance(alert.get(key), str):
            alert[key] = redact_actors(alert[key], tenant)
    if alert.get("evacuation"):
        evacuation = dict(alert["evacuation"])
        evacuation["tenants"] = [t for t in evacuation.get("tenants", []) if t["id"] == tenant]
        alert["evacuation"] = evacuation
    if alert.get("zone") is not None and alert["zone"] in own_zones:
        return alert
    if alert.get("zone") is None and alert.get("rule") not in ("fire", "fire_fault"):
        return alert  # a floor-wide condition of a floor the tenant is on (no neighbour data)
    floor = alert.get("floor")
    kept = {k: alert.get(k) for k in _NEIGHBOUR_KEEP}
    kept["subject"] = f"floor {floor}"
    if alert.get("evacuation"):
        floors = ", ".join(str(f) for f in alert["evacuation"].get("floors", []))
        kept["message"] = f"FIRE on floor {floor}: evacuate floors {floors}"
    else:
        kept["message"] = f"{alert.get('rule')} on floor {floor}"
    return kept


def for_principal(
    message: Message, p: Principal, building: str, own_zones: set[str] | None = None
) -> dict[str, Any] | None:
    """What of ``message`` the principal may see, as JSON, or None.

    ``own_zones``: for a tenant, the zones it leases; an alert about any other zone is
    redacted to the floor and the evacuation advice (:func:`redact_for_tenant`).
    """
    if isinstance(message, FloorState):
        if message.building != building:
            return None
        data = message.model_dump(mode="json")
        if not p.is_operator:
            zones = [z for z in data["zones"] if z.get("tenant") == p.tenant_id]
            if not zones:
                return None
            keep = ("v", "building", "floor", "at", "gateway", "fire_state", "fire_latched")
            data = {k: data[k] for k in keep} | {
                "zones": zones,
                "evacuation": data["evacuation"],
                "evacuation_from": data["evacuation_from"],
            }
        return {"type": "floor_state", "data": data}
    alert = message.alert
    if alert.building != building:
        return None
    if not p.is_operator and p.tenant_id not in alert.tenants:
        return None
    data = message.model_dump(mode="json")
    if not p.is_operator and p.tenant_id is not None:
        data["alert"] = redact_for_tenant(data["alert"], p.tenant_id, own_zones or set())
        actor = data["actor"]
        if actor.startswith("tenant:"):
            data["actor"] = redact_actors(actor, p.tenant_id)
        elif actor != "engine":
            data["actor"] = "operator"
        data["detail"] = None
    return {"type": "alert_event", "data": data}


@router.websocket("/live")
async def live(
    websocket: WebSocket, building: str = Query(pattern=ID_PATTERN, description="building id")
) -> None:
    """Floor states and alert events of ``building`` as they happen, filtered for the role."""
    pool: Pool = websocket.state.pool
    hub: Hub = websocket.state.hub
    try:
        found = credentials(websocket)
    except HTTPException:  # a malformed Authorization header
        found = None
    principal = None
    if found is not None:
        async with pool.connection() as conn:
            principal = await authenticate(conn, *found)
            visible = False
            if principal is not None and principal.sees_building(building):
                cur = await conn.execute("SELECT 1 FROM buildings WHERE id = %s", (building,))
                visible = await cur.fetchone() is not None
            await conn.commit()
        if principal is not None and not visible:
            await websocket.close(code=4404, reason="no such building")
            return
    if principal is None or found is None:
        await websocket.close(code=4401, reason="authentication required")
        return
    await websocket.accept()
    with hub.subscribe() as queue:
        await websocket.send_json({"type": "hello", "data": principal_json(principal)})
        for key in sorted(hub.states):
            out = for_principal(hub.states[key], principal, building)
            if out is not None:
                await websocket.send_json(out)
        with contextlib.suppress(WebSocketDisconnect):
            await _pump(websocket, queue, (principal, found), building, pool, hub.states)


async def _pump(
    websocket: WebSocket,
    queue: asyncio.Queue[Message | None],
    who: tuple[Principal, tuple[str, bytes]],
    building: str,
    pool: Pool,
    hub_states: dict[tuple[str, int], FloorState],
) -> None:
    principal, found = who
    loop = asyncio.get_running_loop()
    recheck = loop.time() + _REAUTH_S
    while True:
        try:
            message = await asyncio.wait_for(queue.get(), timeout=max(0.0, recheck - loop.time()))
        except TimeoutError:
            async with pool.connection() as conn:
                still = await authenticate(conn, *found)
                await conn.commit()
            if still is None:
                await websocket.close(code=4401, reason="credentials revoked")
                return
            recheck = loop.time() + _REAUTH_S
            continue
        if message is None:
            await websocket.close(code=1013, reason="too slow: reconnect")
            return
        own = (
            tenant_zones(hub_states, building, principal.tenant_id)
            if principal.tenant_id is not None
            else None
        )
        out = for_principal(message, principal, building, own)
        if out is not None:
            await websocket.send_text(json.dumps(out))
