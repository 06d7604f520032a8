"""The API's MQTT hub (api.live.Hub) stops when it is cancelled (the API stopping), over a
real broker and when a cancel comes out of its session as an MQTT error."""

from __future__ import annotations

import asyncio

from api.live import Hub
from tests.cancel_helpers import CancelAsMqttError
from tests.conftest import MqttTarget
from tests.ingest_helpers import wait_until


async def test_the_hub_stops_on_a_cancel_while_connected(mqtt: MqttTarget) -> None:
    hub = Hub(mqtt.url, mqtt.prefix)
    task = asyncio.create_task(hub.run())
    try:
        await wait_until(lambda: hub.connected, within=10)
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=10)
    assert task.done() and task.cancelled(), task
    assert not hub.connected


async def test_the_hub_stops_when_its_session_fails_on_the_cancel() -> None:
    """A session whose cancel comes out as MqttError (aiomqtt's, when the cancel cut the
    link inside a task group) must not be taken for a lost link and reconnected forever."""
    hub = Hub("mqtt://127.0.0.1:1", "t")
    session = CancelAsMqttError()
    hub._session = session  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(hub.run())
    await asyncio.wait_for(session.in_session.wait(), 5)
    task.cancel()
    await asyncio.wait([task], timeout=10)
    assert task.done() and task.cancelled(), task
    assert session.sessions == 1
