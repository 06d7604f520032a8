"""``core.aio``: waits that never swallow a cancel, on Python 3.11 too.

``asyncio.wait_for(event.wait(), t)`` on Python 3.11 returns instead of raising when the
caller is cancelled in the same loop step as the event is set; a service loop then goes on and
its stop waits forever. Each test sets the event and cancels in one step, and requires that
the cancelled task ends cancelled within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from core.aio import raise_if_cancelling, wait_event
from ingest.intake import Intake
from ingest.validate import Parsed


async def _wait_for(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


async def _cancelled_as_set(wait: Callable[[asyncio.Event, float], Awaitable[object]]) -> bool:
    """Whether a loop that waits with ``wait`` ends when cancelled as its event is set."""
    event = asyncio.Event()
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            await wait(event, 30)
            rounds += 1
            event.clear()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.01)  # the loop is waiting
    event.set()
    task.cancel()
    await asyncio.wait([task], timeout=1)
    ended = task.cancelled()
    if not task.done():
        task.cancel()  # a second cancel ends the control's loop
        await asyncio.wait([task], timeout=1)
    return ended and rounds == 0


async def test_wait_event_passes_a_cancel_that_arrives_as_the_event_is_set() -> None:
    assert await _cancelled_as_set(wait_event)
    if sys.version_info < (3, 12):  # the control: the race this guards against is real here
        assert not await _cancelled_as_set(_wait_for)


async def test_wait_event_says_whether_the_event_was_set() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True


async def test_raise_if_cancelling_raises_only_with_a_cancel_pending() -> None:
    raise_if_cancelling()  # nothing pending: returns
    swallowed = asyncio.Event()
    release = asyncio.Event()

    async def swallows_then_checks() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # what a library's wait_for can do
            await release.wait()
        swallowed.set()
        raise_if_cancelling()
        await asyncio.sleep(30)  # never reached

    task = asyncio.create_task(swallows_then_checks())
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.wait([task], timeout=1)
    assert swallowed.is_set() and task.cancelled()


async def test_an_ingest_writer_taking_a_batch_stops_when_cancelled_as_the_batch_fills() -> None:
    """The ingester cancels its writers while messages still arrive: one that fills the
    batch in the same step as the cancel must not send the writer back for another batch."""
    intake = Intake(max_pending_readings=1000, batch_rows=2)
    now = datetime.now(UTC)

    def message() -> Parsed:
        return Parsed("t", now, None, readings=[("s1", now, 1.0)])

    intake.put(message())
    batches: list[int] = []

    async def writer() -> None:
        while True:
            batches.append(len(await intake.take(max_age=30)))

    task = asyncio.create_task(writer())
    await asyncio.sleep(0.01)  # waiting for the batch to fill or age
    intake.put(message())  # the batch is full ...
    task.cancel()  # ... as the stop cancels the writer
    await asyncio.wait([task], timeout=1)
    assert task.cancelled(), f"the writer went on after the cancel: batches {batches}"
    assert batches == []
