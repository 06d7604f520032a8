"""asyncio helpers shared by the services."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def run_apart(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` in a task of its own, so that a cancel of the caller always arrives here
    as ``CancelledError``.

    A reconnect loop that catches a client library's errors runs each session so. Awaited
    directly, a session can turn the caller's cancel into such an error: an
    ``asyncio.TaskGroup`` whose children fail while it is being cancelled raises their errors
    (aiomqtt's, when the cancel cut the connection) instead of ``CancelledError``, and the loop
    would then reconnect forever while whoever cancelled it waits. (``Task.cancelling()``
    cannot tell instead: a TaskGroup on Python 3.11 may leave the count raised after a child
    failed on its own.) On a cancel, the session is cancelled and waited for, its own outcome
    dropped, and the cancel goes on."""
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.wait([task])
    except asyncio.CancelledError:
        task.cancel()
        while not task.done():  # through further cancels too: its cleanup runs to its end
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved: the cancel is what counts
        raise
    return task.result()


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait for ``event`` at most ``seconds``; whether it is set.

    Not ``asyncio.wait_for(event.wait(), seconds)``: on Python 3.11 that swallows a cancel of
    the caller that arrives as the event is set (the inner wait's result wins), and a loop
    around it then goes on as if never cancelled, while whoever cancelled it waits forever.
    ``asyncio.timeout`` runs no inner task, so the cancel always arrives."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()


def raise_if_cancelling() -> None:
    """Raise ``CancelledError`` if this task has a cancel pending that a library call
    swallowed (aiomqtt and pymodbus await in ``asyncio.wait_for``, see :func:`wait_event`).

    For the top of a loop in a task that is stopped by a cancel and owns no TaskGroup (a
    TaskGroup on Python 3.11 may leave its owner's count raised, see :func:`run_apart`)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
