"""The API's MQTT hub (api.live.Hub) stops when it is cancelled (the API stopping), over a
real broker and when a cancel comes out of its session as an MQTT error."""

from __future__ import annotations

import asyncio

import aiomqtt

from api.live import Hub
from core.settings import MqttAddress
from tests.conftest import MqttTarget
from tests.ingest_helpers import wait_until


class _GiveUp(BaseException):
    """Ends the test's session at once if the hub reconnects after the cancel."""


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
    in_session = asyncio.Event()
    sessions = 0

    async def session(_address: MqttAddress) -> None:
        nonlocal sessions
        sessions += 1
        if sessions > 1:
            raise _GiveUp  # it went on reconnecting after the cancel

        async def child() -> None:
            in_session.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                raise aiomqtt.MqttError("disconnected during message iteration") from None

        async with asyncio.TaskGroup() as tg:
            tg.create_task(child())

    hub._session = session  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(hub.run())
    await asyncio.wait_for(in_session.wait(), 5)
    task.cancel()
    await asyncio.wait([task], timeout=10)
    assert task.done() and task.cancelled(), task
    assert sessions == 1
