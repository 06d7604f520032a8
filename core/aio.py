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
