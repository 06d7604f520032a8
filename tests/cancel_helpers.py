"""A broker session whose cancel comes out as ``aiomqtt.MqttError``: what a task group that
is cancelled while its children fail raises (aiomqtt's, when the cancel cut the link). The
reconnect loops of the services must stop on it all the same (``core.aio.run_apart``)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt


class GiveUp(BaseException):
    """Ends a second session at once: the loop reconnected after the cancel."""


class CancelAsMqttError:
    """A stand-in for a service's session method: counts its calls, sets ``in_session`` once
    the first is running, and turns the cancel of that one into ``MqttError``."""

    def __init__(self) -> None:
        self.sessions = 0
        self.in_session = asyncio.Event()

    async def __call__(self, *_args: Any) -> None:
        self.sessions += 1
        if self.sessions > 1:
            raise GiveUp  # it went on reconnecting after the cancel

        async def child() -> None:
            self.in_session.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                raise aiomqtt.MqttError("disconnected during message iteration") from None

        async with asyncio.TaskGroup() as tg:
            tg.create_task(child())
