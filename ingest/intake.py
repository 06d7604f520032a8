"""The bounded hand-over between MQTT (messages arrive) and the writer (batches commit).

Each message waits here with a future that the writer resolves after its batch committed;
only then does the MQTT side send the PUBACK. Two bounds keep memory flat when the database is
slow or gone: the broker never has more than ``receive_maximum`` unacknowledged messages out
to us (MQTT 5 flow control), and a message is parsed only while fewer than
``max_pending_readings`` parsed readings wait; past that, intake waits for the writer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from core.aio import wait_event
from ingest.validate import Parsed


@dataclass(slots=True)
class Pending:
    parsed: Parsed
    rows: int
    arrived: float  # loop time
    done: asyncio.Future[bool]  # True: committed, acknowledge; False: abandoned


class Intake:
    def __init__(self, max_pending_readings: int, batch_rows: int) -> None:
        self._max = max_pending_readings
        self._batch_rows = batch_rows
        self._items: deque[Pending] = deque()
        self._rows = 0
        self._nonempty = asyncio.Event()
        self._enough = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closed = False

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def messages(self) -> int:
        return len(self._items)

    async def wait_for_room(self) -> None:
        while self._rows >= self._max:
            await self._room.wait()

    def put(self, parsed: Parsed) -> asyncio.Future[bool]:
        loop = asyncio.get_running_loop()
        pending = Pending(parsed, max(1, len(parsed.readings)), loop.time(), loop.create_future())
        if self._closed:
            pending.done.set_result(False)
            return pending.done
        self._items.append(pending)
        self._rows += pending.rows
        self._nonempty.set()
        if self._rows >= self._batch_rows:
            self._enough.set()
        if self._rows >= self._max:
            self._room.clear()
        return pending.done

    async def take(self, max_age: float) -> list[Pending]:
        """Wait for a batch: ``batch_rows`` rows, or whatever is there when the oldest is old."""
        while not self._items:
            self._nonempty.clear()
            await self._nonempty.wait()
        if self._rows < self._batch_rows:
            self._enough.clear()
            remaining = self._items[0].arrived + max_age - asyncio.get_running_loop().time()
            if remaining > 0:
                await wait_event(self._enough, remaining)
        batch: list[Pending] = []
        rows = 0
        while self._items and (not batch or rows + self._items[0].rows <= self._batch_rows):
            item = self._items.popleft()
            batch.append(item)
            rows += item.rows
        self._rows -= rows
        if self._rows < self._max:
            self._room.set()
        if self._rows < self._batch_rows:
            self._enough.clear()
        return batch

    def close(self) -> int:
        """Release every waiting message without acknowledging it (the broker redelivers)."""
        self._closed = True
        count = 0
        while self._items:
            item = self._items.popleft()
            if not item.done.done():
                item.done.set_result(False)
                count += 1
        self._rows = 0
        self._room.set()
        return count
