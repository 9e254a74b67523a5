"""Small asyncio helpers shared by the server, the bus and the device SDK (standard
library only)."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (a background task of the caller's) and wait until it has ended,
    whatever it ended with. Only the caller's own cancellation, while it waits, goes on
    up: the task's cancellation or failure is what stopping it means."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except BaseException:  # noqa: S110 - the task is over, which is all this waits for
        pass
