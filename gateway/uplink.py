"""The gateway's MQTT side: one broker session at a time, replay of the backlog, live batches.

A session starts with a fresh client (clean session: everything not acknowledged is still in
the SQLite queue, so nothing needs the broker to remember us), a retained ``online`` birth and
a retained ``offline`` last will. Within a session:

- *live*: readings committed after the session began are published as soon as they are
  committed, once per publish interval;
- *replay*: readings that were in the queue when the session began are published oldest first,
  ``replay_window`` messages awaiting their PUBACK at a time, so live messages interleave and
  are never starved;
- a PUBACK deletes exactly the readings of its message from the queue;
- gap records of the queue become gap events, device-fault changes a new retained birth.

Any error (a PUBACK that does not come, a lost connection) ends the session; the next session
starts over from the queue, so a reading is published at least once, with the same
(sensor, ts) every time. Reconnection waits with jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

import aiomqtt

from core.aio import raise_if_cancelling, run_apart
from core.payload import Reading, encode_telemetry
from core.settings import MqttAddress
from gateway.events import birth, gap_event, ms_to_dt, offline
from gateway.poller import Faults
from gateway.queue import ReadingQueue, Row

logger = logging.getLogger(__name__)

#: How long a clean stop waits for the live publishes in flight (their PUBACKs).
STOP_WAIT_S = 2.0
#: How long the end of a session waits for our DISCONNECT to be written and the connection
#: closed (aiomqtt alone waits the client's timeout, 30 s at the default keepalive, when the
#: broker has stopped reading: it would hold up the gateway's stop that long).
DISCONNECT_WAIT_S = 3.0


@dataclass
class UplinkStats:
    sessions: int = 0
    messages: int = 0
    readings: int = 0
    replayed: int = 0
    last_drain_s: float | None = None


@dataclass(frozen=True, slots=True)
class Topics:
    telemetry: str
    status: str


class _Session:
    def __init__(self, client: aiomqtt.Client, backlog_end: int, tg: asyncio.TaskGroup) -> None:
        self.client = client
        self.backlog_end = backlog_end
        self.tg = tg
        self.replay_slots = asyncio.Semaphore(1)  # resized by the uplink
        self.live: set[asyncio.Task[None]] = set()  # publishes of just-committed readings


class Uplink:
    def __init__(
        self,
        address: MqttAddress,
        topics: Topics,
        queue: ReadingQueue,
        faults: Faults,
        *,
        source: str,
        client_id: str,
        batch_max: int = 1000,
        replay_window: int = 8,
        keepalive_s: int = 15,
        backoff_max_s: float = 10.0,
        status_interval_s: float = 1.0,
    ) -> None:
        self.address = address
        self.topics = topics
        self.queue = queue
        self.faults = faults
        self.source = source
        self.client_id = client_id
        self.batch_max = batch_max
        self.replay_window = replay_window
        self.keepalive_s = keepalive_s
        self.backoff_max_s = backoff_max_s
        self.status_interval_s = status_interval_s
        self.stats = UplinkStats()
        self.connected = asyncio.Event()
        self._session: _Session | None = None

    # -- called by the gateway loop ------------------------------------------------------

    def send_live(self, first_id: int, last_id: int) -> None:
        """Readings first..last were just committed: publish them if a session can take them."""
        session = self._session
        if session is None or first_id <= session.backlog_end:
            return  # the next session replays them
        rows = self.queue.fetch(first_id - 1, last_id, last_id - first_id + 1)
        for start in range(0, len(rows), self.batch_max):
            chunk = rows[start : start + self.batch_max]
            task = session.tg.create_task(self._publish_rows(session, chunk), name="mqtt-live")
            session.live.add(task)
            task.add_done_callback(session.live.discard)

    async def run(self) -> None:
        """Keep a session up until cancelled."""
        backoff = 0.5
        while True:
            sessions = self.stats.sessions
            try:
                await run_apart(self._connect_and_serve())  # a cancel stays a cancel
            except* aiomqtt.MqttError as group:
                logger.warning(
                    "broker %s:%d: %s", self.address.host, self.address.port, group.exceptions[0]
                )
            except* Exception:  # a bug or a disk fault: log it, keep the gateway alive
                logger.exception("MQTT session failed")
            finally:
                self._session = None
                self.connected.clear()
            if self.stats.sessions != sessions:
                backoff = 0.5
            delay = backoff * (0.5 + random.random())
            backoff = min(backoff * 2, self.backoff_max_s)
            logger.info("reconnecting in %.1f s (queue: %d readings)", delay, self.queue.count)
            await asyncio.sleep(delay)

    async def stop(self) -> None:
        """If a session is up (best effort): let the readings just handed to it be published
        and acknowledged (at most ``STOP_WAIT_S``; what is not stays queued for the next
        start), then publish the retained clean ``offline`` status."""
        session = self._session
        if session is None:
            return
        if session.live:
            await asyncio.wait(set(session.live), timeout=STOP_WAIT_S)
        try:
            await session.client.publish(
                self.topics.status, offline(self.source, "stopped"), qos=1, retain=True, timeout=2
            )
        except aiomqtt.MqttError as exc:
            logger.info("could not publish the offline status: %s", exc)

    # -- one session -----------------------------------------------------------------------

    def _client(self) -> aiomqtt.Client:
        will = aiomqtt.Will(
            self.topics.status, offline(self.source, "connection lost"), qos=1, retain=True
        )
        return aiomqtt.Client(
            self.address.host,
            self.address.port,
            username=self.address.username,
            password=self.address.password,
            identifier=self.client_id,
            will=will,
            clean_session=True,
            keepalive=self.keepalive_s,
            timeout=max(10.0, 2.0 * self.keepalive_s),
            tls_params=aiomqtt.TLSParameters() if self.address.tls else None,
        )

    async def _connect_and_serve(self) -> None:
        client = self._client()
        await client.__aenter__()
        try:
            raise_if_cancelling()  # aiomqtt's connect waits in wait_for (core.aio)
            await self._serve(client)
        finally:
            await _disconnect(client)

    async def _serve(self, client: aiomqtt.Client) -> None:
        client.pending_calls_threshold = 10 * (self.replay_window + 10)
        backlog_end = self.queue.last_id()
        async with asyncio.TaskGroup() as tg:
            session = _Session(client, backlog_end, tg)
            session.replay_slots = asyncio.Semaphore(self.replay_window)
            await client.publish(
                self.topics.status, birth(self.source, self.faults.current), qos=1, retain=True
            )
            raise_if_cancelling()  # before this group has children: its count is ours alone
            self._session = session
            self.stats.sessions += 1
            self.connected.set()
            logger.info(
                "connected to %s:%d as %s; backlog %d readings",
                self.address.host,
                self.address.port,
                self.client_id,
                self.queue.count,
            )
            tg.create_task(self._watch(client), name="mqtt-watch")
            tg.create_task(self._replay(session), name="mqtt-replay")
            tg.create_task(self._status(session), name="mqtt-status")

    @staticmethod
    async def _watch(client: aiomqtt.Client) -> None:
        async for _message in client.messages:  # raises MqttError once the link is gone
            pass
        raise aiomqtt.MqttError("message stream ended")

    async def _replay(self, session: _Session) -> None:
        """Publish what was queued before the session, oldest first, a window at a time."""
        started = time.monotonic()
        cursor = 0
        total = 0
        while True:
            await session.replay_slots.acquire()
            rows = self.queue.fetch(cursor, session.backlog_end, self.batch_max)
            if not rows:
                session.replay_slots.release()
                break
            cursor = rows[-1][0]
            total += len(rows)
            session.tg.create_task(self._publish_rows(session, rows, replay=True))
        for _ in range(self.replay_window):  # wait until the last PUBACK of the backlog
            await session.replay_slots.acquire()
        if total:
            self.stats.last_drain_s = time.monotonic() - started
            logger.info("backlog of %d readings replayed in %.1f s", total, self.stats.last_drain_s)

    async def _publish_rows(self, session: _Session, rows: list[Row], replay: bool = False) -> None:
        try:
            seq = self.queue.reserve_seq()
            readings = [Reading(sensor, ms_to_dt(ts_ms), value) for _, sensor, ts_ms, value in rows]
            payload = encode_telemetry(self.source, seq, readings)
            await session.client.publish(self.topics.telemetry, payload, qos=1)
            self.queue.ack(rows[0][0], rows[-1][0])
            self.stats.messages += 1
            self.stats.readings += len(rows)
            if replay:
                self.stats.replayed += len(rows)
        finally:
            if replay:
                session.replay_slots.release()

    async def _status(self, session: _Session) -> None:
        """Gap events, and a new retained birth when the device faults change."""
        published = self.faults.version
        while True:
            raise_if_cancelling()  # aiomqtt's publish may have swallowed it (core.aio)
            gaps = self.queue.take_gaps()
            try:
                for gap in gaps:
                    await session.client.publish(
                        self.topics.status, gap_event(self.source, gap), qos=1
                    )
                    self.queue.ack_gap(gap)
                    logger.warning(
                        "gap event published: %d readings dropped (%s)", gap.dropped, gap.reason
                    )
            finally:
                self.queue.release_gaps(gaps)
            if self.faults.version != published:
                published = self.faults.version
                await session.client.publish(
                    self.topics.status, birth(self.source, self.faults.current), qos=1, retain=True
                )
            await asyncio.sleep(self.status_interval_s)


async def _disconnect(client: aiomqtt.Client) -> None:
    """End a session's connection: DISCONNECT, then at most ``DISCONNECT_WAIT_S`` for it to
    be written and the connection closed. Whatever is unacknowledged is still in the queue.
    After a timeout the socket is left to paho's keepalive check and the garbage collector
    (the session's client is never used again)."""
    try:
        await asyncio.wait_for(client.__aexit__(None, None, None), DISCONNECT_WAIT_S)
    except TimeoutError:
        logger.warning("the connection did not close in %g s after DISCONNECT", DISCONNECT_WAIT_S)
    except aiomqtt.MqttError as exc:
        logger.info("disconnect: %s", exc)
