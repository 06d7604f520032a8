"""The MQTT side: a persistent QoS 1 session whose PUBACKs wait for the database commit.

gmqtt (asyncio-native, MQTT 5) with ``optimistic_acknowledgement=False`` sends a message's
PUBACK only when the ``on_message`` coroutine returns, and ours returns only after the batch
holding the message committed. The session is persistent (fixed client id, clean start off,
a session expiry), so messages published while the ingester is down or restarting wait in the
broker. The CONNECT's Receive Maximum bounds how many unacknowledged messages the broker
sends us at once. Reconnection is an explicit loop with jittered exponential backoff around a
fresh client per attempt; gmqtt's own reconnect is switched off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import gmqtt  # type: ignore[import-untyped]
from gmqtt.mqtt.constants import MQTTv50  # type: ignore[import-untyped]

from core.aio import wait_event
from core.settings import MqttAddress
from core.topics import Channel, subscription

logger = logging.getLogger(__name__)

OnMessage = Callable[[str, bytes], Awaitable[None]]


class BrokerRefused(ConnectionError):
    """The broker answered CONNECT with a refusal."""


def telemetry_filter(prefix: str, shared_group: str | None) -> str:
    topic = subscription(Channel.TELEMETRY, prefix)
    return f"$share/{shared_group}/{topic}" if shared_group else topic


class Subscriber:
    """Keeps one persistent session subscribed; calls ``on_message`` for every message."""

    def __init__(
        self,
        address: MqttAddress,
        *,
        client_id: str,
        topic_filter: str,
        session_expiry_s: int,
        receive_maximum: int,
        on_message: OnMessage,
        on_state: Callable[[bool], None],
        backoff_max_s: float = 10.0,
    ) -> None:
        self._address = address
        self._client_id = client_id
        self._filter = topic_filter
        self._session_expiry_s = session_expiry_s
        self._receive_maximum = receive_maximum
        self._on_message = on_message
        self._on_state = on_state
        self._backoff_max_s = backoff_max_s
        self.connected = asyncio.Event()

    def _client(self, lost: asyncio.Event) -> Any:
        client = gmqtt.Client(
            self._client_id,
            clean_session=False,
            optimistic_acknowledgement=False,
            session_expiry_interval=self._session_expiry_s,
            receive_maximum=self._receive_maximum,
            logger=logging.getLogger(f"{__name__}.gmqtt"),
        )
        if self._address.username:
            client.set_auth_credentials(self._address.username, self._address.password)
        handler = self._on_message

        async def on_message(
            _client: Any, topic: str, payload: bytes, _qos: int, _properties: Any
        ) -> int:
            await handler(topic, payload)
            return 0  # PUBACK "success": sent only now, after the commit

        def on_disconnect(_client: Any, _packet: Any, _exc: Any = None) -> None:
            # Stop gmqtt's built-in reconnect; the loop in run() owns reconnection.
            client._is_active = False
            lost.set()

        client.on_message = on_message
        client.on_disconnect = on_disconnect
        return client

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, subscribe and stay connected until ``stop`` is set."""
        failures = 0
        while not stop.is_set():
            lost = asyncio.Event()
            client = self._client(lost)
            try:
                await self._connect(client)
                failures = 0
                self.connected.set()
                self._on_state(True)
                logger.info("subscribed to %s as %s", self._filter, self._client_id)
                await _first(stop.wait(), lost.wait())
                if not stop.is_set():
                    logger.warning("lost the broker connection; reconnecting")
            except (OSError, TimeoutError, BrokerRefused) as exc:
                failures += 1
                logger.warning("broker %s:%d unreachable (%s)", *self._where(), exc)
            finally:
                self.connected.clear()
                self._on_state(False)
                await _close(client)
            if stop.is_set():
                return
            delay = min(self._backoff_max_s, 0.2 * 2 ** min(failures, 10))
            delay *= random.uniform(0.5, 1.0)
            await wait_event(stop, delay)

    def _where(self) -> tuple[str, int]:
        return self._address.host, self._address.port

    async def _connect(self, client: Any) -> None:
        tls = ssl.create_default_context() if self._address.tls else False
        try:
            await asyncio.wait_for(
                client.connect(
                    self._address.host, self._address.port, ssl=tls, keepalive=30, version=MQTTv50
                ),
                10,
            )
        except (OSError, TimeoutError):
            raise
        except Exception as exc:  # gmqtt raises its own error types for refused CONNACKs
            raise BrokerRefused(str(exc)) from exc
        client.subscribe(self._filter, qos=1)


async def _first(*aws: Awaitable[Any]) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _close(client: Any) -> None:
    client._is_active = False
    if client.is_connected:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), 5)
    else:
        connection = getattr(client, "_connection", None)
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)
